// videossm_timeline.js - ComfyUI frontend extension: a prompt timeline for VideoSSMPromptSchedule.
//
// The node's multiline STRING input `schedule` stays the single source of truth (it is what
// the API prompt and the saved workflow carry); this extension hides that widget and adds a
// non-serialized DOM widget that draws the schedule over the video's duration:
//   - an axis in seconds with a tick at every chunk boundary (chunks are what the sampler
//     generates one at a time; prompts can only change at chunk boundaries);
//   - one block per prompt; drag a block's left edge to retime it (snaps to chunks);
//   - Add / Remove buttons, an editor for the selected prompt, and a raw-text mode;
//   - parse errors inline; a playhead while the sampler reports `videossm.chunk` events.
// Every edit writes `schedule = serializeSchedule(entries)` back into the STRING widget.
// Prompt text is only ever assigned through textContent / value, never as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  DEFAULT_FPS, parseSchedule, serializeSchedule, formatTime, chunkBoundariesSeconds,
  chunkCount, chunkStartSeconds, moveBoundary, addPrompt, removePrompt,
  editPrompt, suggestAddTime, spans, xToTime, niceTickStep,
} from "./timeline_model.js";

const NODE_TYPE = "VideoSSMPromptSchedule";
const SCHEDULE = "schedule";
const DURATION = "duration_seconds";
const FPS = "fps"; // optional widget; 16 when the node has none
const MIN_HEIGHT = 190;
const TEXT_MODE_HEIGHT = 230;
const live = new Set(); // controllers of nodes currently in a graph

// ------------------------------------------------------------------ styles (once)
const CSS = `
.vssm-tl { box-sizing: border-box; width: 100%; height: 100%; display: flex; flex-direction: column;
  gap: 4px; padding: 4px 2px; font: 11px sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.vssm-tl * { box-sizing: border-box; }
.vssm-tl-bar { display: flex; gap: 4px; align-items: center; flex: 0 0 auto; }
.vssm-tl-bar button { font: inherit; padding: 1px 8px; cursor: pointer; border-radius: 4px;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #555); }
.vssm-tl-bar button:disabled { opacity: .4; cursor: default; }
.vssm-tl-info { margin-left: auto; opacity: .7; white-space: nowrap; }
.vssm-tl-lane { position: relative; flex: 0 0 auto; margin: 0 10px; }
.vssm-tl-axis { position: relative; height: 18px; border-bottom: 1px solid var(--border-color, #555); }
.vssm-tl-tick { position: absolute; bottom: 0; width: 1px; height: 5px; background: var(--border-color, #666); }
.vssm-tl-tick.major { height: 9px; background: var(--input-text, #aaa); }
.vssm-tl-ticklabel { position: absolute; top: 0; transform: translateX(-50%); font-size: 10px; opacity: .8;
  white-space: nowrap; pointer-events: none; }
.vssm-tl-track { position: relative; height: 44px; background: var(--comfy-input-bg, #1a1a1a); border-radius: 3px; }
.vssm-tl-block { position: absolute; top: 2px; bottom: 2px; border-radius: 3px; overflow: hidden;
  padding: 2px 4px 2px 8px; cursor: pointer; border: 1px solid rgba(255,255,255,.15);
  color: #fff; white-space: normal; line-height: 1.2; }
.vssm-tl-block.selected { border-color: #fff; box-shadow: 0 0 0 1px #fff inset; }
.vssm-tl-block .vssm-tl-label { display: block; overflow: hidden; max-height: 100%; pointer-events: none;
  word-break: break-word; }
.vssm-tl-handle { position: absolute; left: 0; top: 0; bottom: 0; width: 7px; cursor: ew-resize;
  background: rgba(255,255,255,.35); touch-action: none; }
.vssm-tl-playhead { position: absolute; top: 0; bottom: 0; width: 2px; background: #f44;
  pointer-events: none; display: none; }
.vssm-tl-edit { display: flex; gap: 4px; align-items: stretch; flex: 1 1 auto; min-height: 30px; }
.vssm-tl-edit label { white-space: nowrap; padding-top: 3px; opacity: .8; }
.vssm-tl textarea { flex: 1 1 auto; width: 100%; resize: none; font: 11px monospace;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #555); border-radius: 3px; padding: 3px; }
.vssm-tl-errors { flex: 0 0 auto; color: #ff7b7b; max-height: 42px; overflow: auto; white-space: pre-wrap; }
.vssm-tl-errors:empty { display: none; }
.vssm-tl.text-mode .vssm-tl-edit.prompt, .vssm-tl:not(.text-mode) .vssm-tl-edit.raw { display: none; }
`;

function injectStyles() {
  if (document.getElementById("vssm-tl-styles")) return;
  const style = document.createElement("style");
  style.id = "vssm-tl-styles";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, className, props = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  Object.assign(node, props);
  return node;
}

const blockColor = (i) => `hsl(${(i * 67 + 200) % 360} 45% 32%)`;
const pct = (t, duration) => `${duration > 0 ? Math.min(100, Math.max(0, (t / duration) * 100)) : 0}%`;
// keys typed into our inputs must not reach the canvas (Delete would remove the node)
const keepKeys = (input) => ["keydown", "keyup", "keypress"].forEach((k) =>
  input.addEventListener(k, (e) => e.stopPropagation()));

// ------------------------------------------------------------------ per-node controller
class TimelineController {
  constructor(node) {
    this.node = node;
    this.selected = 0;
    this.playhead = null; // seconds generated so far, or null
    this.rendered = null; // key of what is on screen
    this.drag = null;
    this.scheduleWidget = node.widgets?.find((w) => w.name === SCHEDULE);
    this.hideScheduleWidget();
    this.build();
    this.widget = node.addDOMWidget("timeline", "videossm_timeline", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => (this.textMode ? TEXT_MODE_HEIGHT : MIN_HEIGHT),
    });
    this.widget.serialize = false; // also keep it out of widgets_values
    const w = this.node.size?.[0] ?? 0;
    if (w < 520) this.node.setSize?.([520, Math.max(this.node.size?.[1] ?? 0, MIN_HEIGHT + 90)]);
    this.watchWidget(this.durationWidget);
    this.watchWidget(this.fpsWidget);
    live.add(this);
    this.refresh(true);
  }

  get durationWidget() { return this.node.widgets?.find((w) => w.name === DURATION); }
  get fpsWidget() { return this.node.widgets?.find((w) => w.name === FPS); }
  get fps() {
    const v = Number(this.fpsWidget?.value);
    return v > 0 ? v : DEFAULT_FPS;
  }
  get text() { return String(this.scheduleWidget?.value ?? ""); }
  get parsed() { return parseSchedule(this.text, { fps: this.fps }); }
  get duration() {
    const d = Number(this.durationWidget?.value);
    if (d > 0) return d;
    const entries = this.parsed.entries; // no duration widget: show a bit past the last prompt
    return entries.length ? entries[entries.length - 1].time + 5 : 10;
  }

  hideScheduleWidget() {
    const w = this.scheduleWidget;
    if (!w) return;
    w.hidden = true; // LiteGraph skips hidden widgets in layout and drawing
    w.computeSize = () => [0, -4]; // older frontends
    if (w.element) w.element.style.display = "none";
  }

  watchWidget(w) {
    if (!w || w.__vssmWatched) return;
    w.__vssmWatched = true;
    const cb = w.callback;
    w.callback = (...args) => {
      const r = cb?.apply(w, args);
      this.refresh();
      return r;
    };
  }

  // -------------------------------------------------------------- DOM
  build() {
    injectStyles();
    this.root = el("div", "vssm-tl");
    this.root.dataset.node = String(this.node.id);
    const bar = el("div", "vssm-tl-bar");
    this.addBtn = el("button", "vssm-tl-add", { textContent: "+ Prompt", title: "Add a prompt" });
    this.removeBtn = el("button", "vssm-tl-remove", { textContent: "− Remove", title: "Remove the selected prompt" });
    this.modeBtn = el("button", "vssm-tl-mode", { textContent: "Text", title: "Edit the schedule as text" });
    this.info = el("span", "vssm-tl-info");
    bar.append(this.addBtn, this.removeBtn, this.modeBtn, this.info);

    this.lane = el("div", "vssm-tl-lane");
    this.axis = el("div", "vssm-tl-axis");
    this.track = el("div", "vssm-tl-track");
    this.playheadEl = el("div", "vssm-tl-playhead");
    this.lane.append(this.axis, this.track, this.playheadEl);

    const promptRow = el("div", "vssm-tl-edit prompt");
    this.promptLabel = el("label");
    this.promptInput = el("textarea", "vssm-tl-prompt", { rows: 2, placeholder: "prompt text", spellcheck: false });
    promptRow.append(this.promptLabel, this.promptInput);
    const rawRow = el("div", "vssm-tl-edit raw");
    this.rawInput = el("textarea", "vssm-tl-raw", { spellcheck: false });
    rawRow.append(this.rawInput);
    this.errorsEl = el("div", "vssm-tl-errors");
    this.root.append(bar, this.lane, promptRow, rawRow, this.errorsEl);

    keepKeys(this.promptInput);
    keepKeys(this.rawInput);
    this.addBtn.addEventListener("click", () => this.onAdd());
    this.removeBtn.addEventListener("click", () => this.onRemove());
    this.modeBtn.addEventListener("click", () => this.setTextMode(!this.textMode));
    this.promptInput.addEventListener("input", () => this.onPromptInput());
    this.rawInput.addEventListener("input", () => this.setText(this.rawInput.value));
    this.track.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.track.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.track.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.track.addEventListener("pointercancel", () => { this.drag = null; this.refresh(true); });
  }

  get textMode() { return this.root.classList.contains("text-mode"); }

  setTextMode(on) {
    this.root.classList.toggle("text-mode", on);
    this.modeBtn.textContent = on ? "Timeline" : "Text";
    if (on) this.rawInput.value = this.text;
    this.node.setSize?.([this.node.size[0], Math.max(this.node.size[1], this.node.computeSize?.()[1] ?? 0)]);
    this.refresh(true);
  }

  // -------------------------------------------------------------- model <-> widget
  setText(text) {
    const w = this.scheduleWidget;
    if (!w || text === this.text) return this.refresh();
    w.value = text; // DOM-backed widgets update their element and fire callback
    this.refresh(true);
    this.node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  commit(entries) {
    this.setText(serializeSchedule(entries));
  }

  /** Re-render if the schedule, duration or fps changed (cheap to call every frame). */
  refresh(force = false) {
    const id = String(this.node.id); // the id is only assigned after onNodeCreated (add / configure)
    if (this.root.dataset.node !== id) this.root.dataset.node = id;
    const key = `${this.text}\u0000${this.duration}\u0000${this.fps}\u0000${this.playhead}`;
    if (!force && key === this.rendered) return;
    this.rendered = key;
    this.render();
  }

  render() {
    if (this.drag) return;
    const { entries, errors } = this.parsed;
    const duration = this.duration;
    const fps = this.fps;
    const ok = errors.length === 0;
    this.selected = Math.min(Math.max(0, this.selected), Math.max(0, entries.length - 1));

    // axis: a tick per chunk boundary, labelled ticks at a readable step
    this.axis.replaceChildren();
    const boundaries = chunkBoundariesSeconds(duration, { fps });
    const widthPx = this.track.getBoundingClientRect().width || 500;
    if (boundaries.length <= widthPx / 3) {
      for (const t of boundaries) this.axis.append(el("div", "vssm-tl-tick", { style: `left:${pct(t, duration)}` }));
    }
    const step = niceTickStep(duration, widthPx, 70);
    for (let t = 0; t <= duration + 1e-9; t += step) {
      this.axis.append(el("div", "vssm-tl-tick major", { style: `left:${pct(t, duration)}` }));
      const label = el("span", "vssm-tl-ticklabel", { textContent: formatTime(Math.round(t * 100) / 100) });
      label.style.left = pct(t, duration);
      this.axis.append(label);
    }

    // blocks
    this.track.replaceChildren();
    for (const s of spans(entries, duration, { fps })) {
      const block = el("div", "vssm-tl-block");
      block.dataset.index = String(s.index);
      block.style.left = pct(s.start, duration);
      block.style.width = `calc(${pct(s.end, duration)} - ${pct(s.start, duration)})`;
      block.style.background = blockColor(s.index);
      block.title = `${formatTime(entries[s.index].time)}: ${s.prompt}`; // attribute text, not HTML
      if (s.index === this.selected) block.classList.add("selected");
      const label = el("span", "vssm-tl-label");
      label.textContent = s.prompt;
      block.append(label);
      if (s.index > 0 && ok) {
        const handle = el("div", "vssm-tl-handle", { title: "Drag to retime (snaps to chunks)" });
        handle.dataset.index = String(s.index);
        block.append(handle);
      }
      this.track.append(block);
    }

    // playhead
    if (this.playhead != null) {
      this.playheadEl.style.display = "block";
      this.playheadEl.style.left = pct(this.playhead, duration);
    } else {
      this.playheadEl.style.display = "none";
    }

    // editor, info, errors
    const sel = entries[this.selected];
    this.promptLabel.textContent = sel ? `${formatTime(sel.time)}` : "";
    // (keep what the user is typing; anything else reflects the schedule)
    if (document.activeElement !== this.promptInput || !ok) this.promptInput.value = sel && ok ? sel.prompt : "";
    this.promptInput.disabled = !ok || !sel;
    if (document.activeElement !== this.rawInput) this.rawInput.value = this.text;
    this.addBtn.disabled = !ok;
    this.removeBtn.disabled = !ok || entries.length <= 1;
    const n = chunkCount(duration, { fps });
    this.info.textContent = `${entries.length} prompt${entries.length === 1 ? "" : "s"} · ${formatTime(duration)} · ${n} chunk${n === 1 ? "" : "s"}`;
    this.errorsEl.textContent = errors.map((e) => e.message).join("\n");
    if (!ok && !this.textMode) this.errorsEl.textContent += "\n(switch to Text to fix)";
  }

  // -------------------------------------------------------------- editing
  onAdd() {
    const { entries, errors } = this.parsed;
    if (errors.length) return;
    const opts = { fps: this.fps, duration: this.duration };
    const t = suggestAddTime(entries, this.duration, opts);
    const out = addPrompt(entries, t, "new prompt", opts);
    if (out.length === entries.length) return; // no free chunk
    this.selected = out.findIndex((e, i) => entries[i] === undefined || e.time !== entries[i].time);
    this.commit(out);
    this.promptInput.focus();
    this.promptInput.select();
  }

  onRemove() {
    const { entries, errors } = this.parsed;
    if (errors.length || entries.length <= 1) return;
    this.commit(removePrompt(entries, this.selected));
    this.selected = Math.max(0, this.selected - 1);
    this.refresh(true);
  }

  onPromptInput() {
    const { entries, errors } = this.parsed;
    if (errors.length || !entries[this.selected]) return;
    this.commit(editPrompt(entries, this.selected, this.promptInput.value));
  }

  onPointerDown(e) {
    const handle = e.target.closest?.(".vssm-tl-handle");
    const block = e.target.closest?.(".vssm-tl-block");
    if (!block) return;
    e.stopPropagation();
    this.selected = Number(block.dataset.index);
    if (!handle) return this.refresh(true);
    e.preventDefault();
    this.drag = { index: Number(handle.dataset.index), entries: this.parsed.entries, pointer: e.pointerId };
    this.track.setPointerCapture?.(e.pointerId);
  }

  dragTarget(e) {
    const rect = this.track.getBoundingClientRect(); // includes canvas zoom (CSS transform)
    const t = xToTime(e.clientX - rect.left, rect.width, this.duration);
    return moveBoundary(this.drag.entries, this.drag.index, t, { fps: this.fps, duration: this.duration });
  }

  onPointerMove(e) {
    if (!this.drag || e.pointerId !== this.drag.pointer) return;
    e.stopPropagation();
    const moved = this.dragTarget(e);
    this.drag.preview = moved;
    // live preview: move the two affected blocks without re-rendering (keeps pointer capture)
    const i = this.drag.index;
    const d = this.duration;
    const blocks = this.track.querySelectorAll(".vssm-tl-block");
    const start = moved[i].time;
    const next = i + 1 < moved.length ? moved[i + 1].time : Math.max(d, start);
    const prevStart = moved[i - 1].time;
    if (blocks[i]) {
      blocks[i].style.left = pct(start, d);
      blocks[i].style.width = `calc(${pct(next, d)} - ${pct(start, d)})`;
    }
    if (blocks[i - 1]) blocks[i - 1].style.width = `calc(${pct(start, d)} - ${pct(prevStart, d)})`;
    this.promptLabel.textContent = formatTime(start);
  }

  onPointerUp(e) {
    if (!this.drag || e.pointerId !== this.drag.pointer) return;
    e.stopPropagation();
    const moved = this.dragTarget(e);
    this.track.releasePointerCapture?.(e.pointerId);
    this.selected = this.drag.index;
    this.drag = null;
    this.commit(moved);
  }

  // -------------------------------------------------------------- progress
  setPlayhead(seconds) {
    this.playhead = seconds;
    this.refresh();
  }

  dispose() {
    live.delete(this);
  }
}

// ------------------------------------------------------------------ progress events
// Timelines a `videossm.chunk` event is about: the node itself when the event names a schedule
// node, else the schedule nodes upstream of the named node (the sampler), else all of them.
function timelinesFor(id) {
  const all = [...live];
  const same = (c) => String(c.node.id) === id || id.endsWith(`:${c.node.id}`);
  const direct = all.filter(same);
  if (direct.length) return direct;
  const graph = app.graph;
  const start = graph?.getNodeById?.(Number(id.split(":").pop()));
  const found = new Set();
  const seen = new Set();
  const stack = start ? [start] : [];
  while (stack.length) {
    const n = stack.pop();
    if (!n || seen.has(n.id)) continue;
    seen.add(n.id);
    if (n.videossmTimeline) found.add(n.videossmTimeline);
    (n.inputs ?? []).forEach((_, slot) => stack.push(n.getInputNode?.(slot)));
  }
  return found.size ? [...found] : all;
}

function onChunkEvent(event) {
  // {node, chunk, total, seconds}: sent by the sampler after each generated chunk
  const d = event.detail ?? {};
  for (const c of timelinesFor(String(d.node ?? ""))) {
    const seconds = Number.isFinite(d.seconds) ? d.seconds
      : chunkStartSeconds((d.chunk ?? 0) + 1, c.fps);
    c.setPlayhead(Math.min(seconds, c.duration));
  }
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

// The pack's web folder can be served twice (once per name it is registered under: the
// pyproject [tool.comfy] web entry uses the project name, WEB_DIRECTORY the folder name), so
// this file may run twice; register once.
const extension = {
  name: "videossm.timeline",

  setup() {
    api.addEventListener("videossm.chunk", onChunkEvent);
    // a new run starts with no playhead
    api.addEventListener("execution_start", () => live.forEach((c) => c.setPlayhead(null)));
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (!this.videossmTimeline) this.videossmTimeline = new TimelineController(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      this.videossmTimeline?.refresh(true); // workflow loaded / pasted: redraw from the STRING
    });
    chain(nodeType.prototype, "onDrawForeground", function () {
      this.videossmTimeline?.refresh(); // catches any outside change of the widgets
    });
    chain(nodeType.prototype, "onAdded", function () {
      if (this.videossmTimeline) live.add(this.videossmTimeline);
    });
    chain(nodeType.prototype, "onRemoved", function () {
      this.videossmTimeline?.dispose();
    });
  },

  loadedGraphNode(node) {
    node.videossmTimeline?.refresh(true);
  },
};

try {
  app.registerExtension(extension);
} catch (e) {
  if (!/already registered/.test(String(e?.message))) throw e;
}
