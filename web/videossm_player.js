// videossm_player.js - ComfyUI frontend extension: the sampler shows this run's video.
//
// The frontend's own preview for an output node prefers the last live preview image over the node's
// output, so after a run the sampler kept showing its last chunk, and during the next run the old
// video covered the live preview. The sampler gets one player instead (a DOM widget, not saved):
//   - during a run: the live preview of each chunk (a JPEG in the sampler's `videossm.chunk` event);
//   - after a run: a looping player of the mp4 the run wrote (its `executed` message);
//   - after Cancel (ComfyUI sends no `executed` then): the partial mp4 and how to continue it, from
//     the sampler's `videossm.stopped` event.
// The frontend draws none of its own: on the canvas (litegraph) the node's onDrawBackground draws
// nothing; with Nodes 2.0 (frontend 1.58) a node is a DOM element whose own media preview reads the
// frontend's store (the node's output, or before it the last image of ComfyUI's preview channel) and is
// skipped for a node with `hideOutputImages` (as the frontend's own image editors set it). The sampler
// sends no image on that channel, so its store entry never holds a preview (which Nodes 2.0 showed as
// a live image during the run, and loaded into a <video> after it: "Video failed to load").
// Older frontends (the pinned 1.32.9) do not know hideOutputImages: their Nodes 2.0 node shows an <img>
// of the output as soon as the `executed` message is in the store, but builds its URL from
// `app.nodeOutputs` (the store's getNodeImageUrls), which the frontend fills just before the node's
// onExecuted. There the sampler's onExecuted removes its own entry from `app.nodeOutputs` (the run's
// result stays in the server's history and the queue; the player has it from the message).
// VideoSSM Load State's list is fetched again from the server when a run ends and when the node is
// added or clicked, so new states are offered without reloading the page.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SAMPLER = "VideoSSMSampler";
const LOAD_STATE = "VideoSSMLoadState";
const STATE_WIDGET = "state_file";
const STATES_ROUTE = "/videossm/states";
const STATE_FOLDER = "videossm"; // states in output/videossm are listed with " [output]"
const PLAYER_HEIGHT = 240;
const players = new Set();

const CSS = `
.vssm-player { box-sizing: border-box; width: 100%; height: 100%; min-height: ${PLAYER_HEIGHT - 20}px;
  display: flex; flex-direction: column;
  gap: 2px; padding: 2px; font: 11px sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.vssm-player-media { position: relative; flex: 1 1 auto; min-height: 60px; background: #000; border-radius: 3px; }
.vssm-player-media > * { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; }
.vssm-player[data-mode="live"] .vssm-player-video, .vssm-player[data-mode="video"] .vssm-player-live,
.vssm-player[data-mode="empty"] .vssm-player-video, .vssm-player[data-mode="empty"] .vssm-player-live { display: none; }
.vssm-player-note { flex: 0 0 auto; white-space: pre-wrap; opacity: .85; max-height: 64px; overflow: auto; }
.vssm-player[data-stopped] .vssm-player-note { color: #f0c060; opacity: 1; }
`;

function injectStyles() {
  if (document.getElementById("vssm-player-styles")) return;
  const style = document.createElement("style");
  style.id = "vssm-player-styles";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, className, props = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  Object.assign(node, props);
  return node;
}

const viewUrl = (file) => {
  const q = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "",
    type: file.type ?? "output", t: String(Date.now()) }); // t: the same name may hold a new video
  return api.apiURL(`/view?${q}`);
};
const relative = (file) => (file.subfolder ? `${file.subfolder}/${file.filename}` : file.filename);
/** The state the sampler writes next to its mp4, as VideoSSM Load State lists it (or null). */
const stateChoice = (file) => (file.subfolder === STATE_FOLDER && file.filename.endsWith(".mp4")
  ? `${file.filename.slice(0, -4)}.state.safetensors [output]` : null);
const matches = (node, id) => id != null && (String(id) === String(node.id) || String(id).endsWith(`:${node.id}`));

class Player {
  constructor(node) {
    injectStyles();
    this.node = node;
    this.liveUrl = null;
    this.root = el("div", "vssm-player");
    this.root.dataset.node = String(node.id);
    const media = el("div", "vssm-player-media");
    this.live = el("img", "vssm-player-live", { alt: "" });
    this.video = el("video", "vssm-player-video", { loop: true, muted: true, autoplay: true, controls: true,
      playsInline: true });
    media.append(this.live, this.video);
    this.note = el("div", "vssm-player-note");
    this.root.append(media, this.note);
    this.widget = node.addDOMWidget("videossm_player", "videossm_player", this.root, {
      serialize: false, hideOnZoom: false, getMinHeight: () => PLAYER_HEIGHT });
    this.widget.serialize = false; // also keep it out of widgets_values
    this.setMode("empty", "");
    players.add(this);
  }

  syncId() {
    this.root.dataset.node = String(this.node.id); // ids are assigned after creation
  }

  setMode(mode, note, stopped = false) {
    this.syncId();
    this.root.dataset.mode = mode;
    if (stopped) this.root.dataset.stopped = "1";
    else delete this.root.dataset.stopped;
    this.note.textContent = note;
    this.node.setDirtyCanvas?.(true, true);
  }

  running() {
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load();
    this.setMode("live", "generating…");
  }

  showLive(blob) {
    const url = URL.createObjectURL(blob);
    this.live.src = url;
    if (this.liveUrl) URL.revokeObjectURL(this.liveUrl);
    this.liveUrl = url;
    if (this.root.dataset.mode !== "live") this.setMode("live", "generating…");
  }

  play(file, note, stopped = false) {
    this.video.src = viewUrl(file);
    this.video.play?.().catch(() => {}); // autoplay may be refused; the controls still work
    this.setMode("video", note, stopped);
  }

  dispose() {
    if (this.liveUrl) URL.revokeObjectURL(this.liveUrl);
    players.delete(this);
  }
}

// The first frontend seen to honour `hideOutputImages` (1.32.9 does not; the versions between are untested).
const HIDES_OUTPUT_IMAGES_FROM = [1, 58, 1];

function honoursHideOutputImages() {
  const v = String(window.__COMFYUI_FRONTEND_VERSION__ ?? "").split(".").map((x) => parseInt(x, 10));
  if (v.length < 3 || v.some((x) => !Number.isFinite(x))) return false;
  for (let i = 0; i < 3; i++) if (v[i] !== HIDES_OUTPUT_IMAGES_FROM[i]) return v[i] > HIDES_OUTPUT_IMAGES_FROM[i];
  return true;
}

/** Keep an older frontend's Nodes 2.0 node from drawing its own preview of the sampler's output. */
function dropOutputPreview(node) {
  if (honoursHideOutputImages() || !app.nodeOutputs) return; // newer: its store also feeds app mode
  const graph = node.graph;
  const locator = graph && graph.isRootGraph === false ? `${graph.id}:${node.id}` : String(node.id);
  delete app.nodeOutputs[locator];
}

function onExecuted(node, message) {
  if (node.videossmPlayer) dropOutputPreview(node);
  const file = message?.images?.[0];
  if (!file?.filename || !node.videossmPlayer) return;
  const state = stateChoice(file);
  node.videossmPlayer.play(file, relative(file) + (state ? `\nits state: ${state}` : ""));
}

function onStopped(event) {
  const d = event.detail ?? {};
  for (const p of players) {
    if (!matches(p.node, d.node) || !d.video?.filename) continue;
    const at = Number.isFinite(d.seconds) ? `${Math.round(d.seconds * 100) / 100}s` : "?";
    const how = d.state_file
      ? `To continue it, load "${d.state_file}" with VideoSSM Load State into this sampler's state and queue again.`
      : d.state_path ? `Its state is ${d.state_path}: copy it into input/${STATE_FOLDER} to load it.` : "";
    p.play(d.video, `Cancelled at ${at}: the video so far is saved as ${relative(d.video)}.\n${how}`, true);
  }
  refreshStateLists();
}

/** A base64 image of a `videossm.chunk` event as a Blob (or null). */
function previewBlob(preview) {
  if (typeof preview?.data !== "string" || !preview.data) return null;
  try {
    const bytes = Uint8Array.from(atob(preview.data), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: preview.type || "image/jpeg" });
  } catch (e) {
    console.warn("VideoSSM: a live preview could not be decoded", e);
    return null;
  }
}

function onChunk(event) {
  const d = event.detail ?? {};
  let blob; // decoded once, for the players this chunk is about
  for (const p of players) {
    if (!matches(p.node, d.node)) continue;
    blob ??= previewBlob(d.preview);
    if (blob) p.showLive(blob);
  }
}

// ------------------------------------------------------------------ Load State's list
// One fetch at a time; a refresh asked for while one is in flight runs again after it (a run may have
// written a state after that fetch began). The nodes are looked up when the list arrives, so a Load
// State added meanwhile (e.g. by opening a template) gets it too.
let refreshing = null;
let again = false;

async function applyStateList() {
  const loadStates = () => (app.graph?.nodes ?? []).filter((n) => n.type === LOAD_STATE);
  if (!loadStates().length) return;
  const res = await api.fetchApi(STATES_ROUTE, { cache: "no-store" });
  if (!res.ok) return;
  const list = await res.json();
  if (!Array.isArray(list)) return;
  for (const n of loadStates()) {
    const w = n.widgets?.find((x) => x.name === STATE_WIDGET);
    if (!w?.options) continue;
    w.options.values = list; // the chosen value stays, listed or not
    if ((w.value == null || w.value === "" || w.value === "undefined") && list.length) w.value = list[0];
  }
}

function refreshStateLists() {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  // (the promise's own finally: an async function that returns at once must not leave `refreshing` set)
  refreshing = applyStateList()
    .catch((e) => console.warn("VideoSSM: could not refresh the stream state list", e))
    .finally(() => {
      refreshing = null;
      if (again) {
        again = false;
        refreshStateLists();
      }
    });
  return refreshing;
}

// ------------------------------------------------------------------ registration
const chain = (proto, name, fn) => {
  const orig = proto[name];
  proto[name] = function (...args) {
    const r = orig?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
};

const extension = {
  name: "videossm.player",

  setup() {
    api.addEventListener("videossm.stopped", onStopped);
    api.addEventListener("videossm.chunk", onChunk);
    api.addEventListener("execution_start", () => players.forEach((p) => p.running()));
    for (const kind of ["execution_success", "execution_error", "execution_interrupted"]) {
      api.addEventListener(kind, () => refreshStateLists());
    }
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === LOAD_STATE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setTimeout(() => refreshStateLists(), 0); // the page's node definitions may be old
      });
      chain(nodeType.prototype, "onMouseDown", function () {
        refreshStateLists();
      });
      return;
    }
    if (nodeData?.name !== SAMPLER) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (this.videossmPlayer) return;
      this.videossmPlayer = new Player(this);
      // the player shows the previews and the result; the canvas' own preview would draw a stale one
      this.onDrawBackground = function () {};
      // and so would Nodes 2.0's (frontend 1.58; an unknown property to older frontends)
      this.hideOutputImages = true;
      const size = this.computeSize?.() ?? this.size;
      this.setSize?.([Math.max(this.size?.[0] ?? 0, 340), Math.max(this.size?.[1] ?? 0, size[1])]);
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      onExecuted(this, message);
    });
    chain(nodeType.prototype, "onAdded", function () {
      if (this.videossmPlayer) players.add(this.videossmPlayer);
      this.videossmPlayer?.syncId();
    });
    chain(nodeType.prototype, "onConfigure", function () {
      this.videossmPlayer?.syncId(); // a loaded workflow gives the node its id after creation
    });
    chain(nodeType.prototype, "onRemoved", function () {
      this.videossmPlayer?.dispose();
    });
  },
};

try {
  app.registerExtension(extension);
} catch (e) {
  if (!/already registered/.test(String(e?.message))) throw e;
}
