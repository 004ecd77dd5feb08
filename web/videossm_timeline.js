// videossm_timeline.js - ComfyUI frontend extension: a prompt timeline for VideoSSMPromptSchedule.
//
// The node's multiline STRING input `schedule` stays the single source of truth (it is what
// the API prompt and the saved workflow carry); this extension hides that widget and adds a
// non-serialized DOM widget that draws the schedule over the video's duration:
//   - an axis in seconds with a tick at every chunk boundary (chunks are what the sampler
//     generates one at a time; prompts can only change at chunk boundaries);
//   - one block per prompt; drag a block (its left edge or its body) to retime it (snaps to
//     chunks, written as clean times such as "12s");
//   - the length is the connected sampler's `seconds` (else the node's duration_seconds); prompts
//     past it are drawn in a shaded "after the end" stretch of the lane, never lost, and "Fit"
//     moves them all inside;
//   - warnings from the last run (words the text encoder dropped, prompts the sampler skipped);
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
  lateIndices, laneLength, fitToLength, assignColorSlots, paceFromChunkTimes, formatDuration,
} from "./timeline_model.js";

const NODE_TYPE = "VideoSSMPromptSchedule";
const SCHEDULE = "schedule";
const DURATION = "duration_seconds";
const SAMPLER_TYPE = "VideoSSMSampler";
const SAMPLER_SECONDS = "seconds"; // the sampler owns the video's length
const TEXT_NODES = new Set(["VideoSSMInspectState", "VideoSSMSaveState"]); // show their ui text
const DRAG_START_PX = 4; // a body press becomes a drag after this much movement
const FPS = "fps"; // optional widget; 16 when the node has none
const MIN_HEIGHT = 190;
const TEXT_MODE_HEIGHT = 230;
const live = new Set(); // controllers of nodes currently in a graph
// Outside changes (the sampler's seconds, a new link) are caught by refresh(), a cheap no-op when nothing
// changed. The canvas calls it from onDrawForeground every frame; Nodes 2.0 (frontend 1.58) draws nodes
// as DOM elements and never calls it, so a slow poll does it there (and is harmless elsewhere).
const POLL_MS = 250;

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
.vssm-tl-block.late { opacity: .55; border-style: dashed; }
.vssm-tl-past { position: absolute; top: 0; bottom: 0; right: 0; pointer-events: none;
  background: repeating-linear-gradient(135deg, rgba(255,255,255,.07) 0 6px, transparent 6px 12px);
  border-left: 2px solid #e0a040; }
.vssm-tl-warnings { flex: 0 0 auto; color: #f0c060; max-height: 54px; overflow: auto; white-space: pre-wrap; }
.vssm-tl-warnings:empty { display: none; }
.vssm-text { box-sizing: border-box; width: 100%; height: 100%; min-height: 90px; resize: none; font: 11px monospace;
  color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #555); border-radius: 3px; padding: 4px; }
.vssm-tl-handle { position: absolute; left: 0; top: 0; bottom: 0; width: 12px; cursor: ew-resize;
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

const blockColor = (slot) => `hsl(${(slot * 67 + 200) % 360} 45% 32%)`;
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
    this.colorSlots = []; // [{prompt, slot}] of the last render: colours follow prompts
    this.warnings = { schedule: "", sampler: "" }; // from the last run
    this.chunkTimes = []; // when each chunk of the current run arrived (ms)
    this.pace = null; // seconds per chunk measured in the last run: the only honest basis for an estimate
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
  /** The connected sampler's `seconds` widget: the video's length (the sampler owns it). */
  get samplerSecondsWidget() {
    for (const target of this.outputNodes()) {
      const w = target?.type === SAMPLER_TYPE && target.widgets?.find((x) => x.name === SAMPLER_SECONDS);
      if (w && Number(w.value) > 0) return w;
    }
    return null;
  }
  /** The nodes the schedule output feeds (getOutputNodes: frontend 1.58 deprecates reading output.links). */
  outputNodes() {
    if (typeof this.node.getOutputNodes === "function") return this.node.getOutputNodes(0) ?? [];
    const graph = this.node.graph ?? app.graph;
    return (this.node.outputs?.[0]?.links ?? []).map((linkId) => {
      const link = graph?.links?.get?.(linkId) ?? graph?.links?.[linkId];
      return link && graph.getNodeById?.(link.target_id);
    });
  }
  get duration() {
    const s = Number(this.samplerSecondsWidget?.value);
    if (s > 0) return s;
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
    this.fitBtn = el("button", "vssm-tl-fit", { textContent: "Fit to length",
      title: "Move every prompt inside the video's length, keeping their order and spacing" });
    this.info = el("span", "vssm-tl-info");
    bar.append(this.addBtn, this.removeBtn, this.fitBtn, this.modeBtn, this.info);

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
    this.warningsEl = el("div", "vssm-tl-warnings");
    this.root.append(bar, this.lane, promptRow, rawRow, this.errorsEl, this.warningsEl);

    keepKeys(this.promptInput);
    keepKeys(this.rawInput);
    this.addBtn.addEventListener("click", () => this.onAdd());
    this.removeBtn.addEventListener("click", () => this.onRemove());
    this.modeBtn.addEventListener("click", () => this.setTextMode(!this.textMode));
    this.fitBtn.addEventListener("click", () => this.onFit());
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
    const key = [this.text, this.duration, this.fps, this.playhead, this.warnings.schedule,
      this.warnings.sampler, this.pace].join("\u0000");
    if (!force && key === this.rendered) return;
    this.rendered = key;
    this.render();
  }

  render() {
    if (this.drag) return;
    const { entries, errors } = this.parsed;
    const length = this.duration; // the video's length
    const fps = this.fps;
    const duration = laneLength(entries, length, { fps }); // the lane: stretched to show late prompts
    const late = new Set(lateIndices(entries, length, { fps }));
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

    // blocks (the last one ends at the video's end unless late prompts stretch the lane)
    this.track.replaceChildren();
    const slots = assignColorSlots(this.colorSlots, entries);
    this.colorSlots = entries.map((e, i) => ({ prompt: e.prompt, slot: slots[i] }));
    for (const s of spans(entries, Math.max(length, 0), { fps })) {
      const block = el("div", "vssm-tl-block");
      const end = s.index + 1 < entries.length ? s.end : Math.max(s.end, late.has(s.index) ? duration : length);
      block.dataset.index = String(s.index);
      block.style.left = pct(s.start, duration);
      block.style.width = `calc(${pct(end, duration)} - ${pct(s.start, duration)})`;
      block.style.background = blockColor(slots[s.index]);
      block.title = `${formatTime(entries[s.index].time)}: ${s.prompt}`; // attribute text, not HTML
      if (late.has(s.index)) {
        block.classList.add("late");
        block.title += `\n(starts after the video ends at ${formatTime(length)}: skipped; drag it back or use Fit)`;
      }
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

    if (duration > length + 1e-9) {
      const past = el("div", "vssm-tl-past", { title: "after the video ends" });
      past.style.left = pct(length, duration);
      this.track.append(past);
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
    this.fitBtn.disabled = !ok || late.size === 0;
    const n = chunkCount(length, { fps });
    const source = this.samplerSecondsWidget ? " (sampler)" : "";
    this.info.textContent = `${entries.length} prompt${entries.length === 1 ? "" : "s"} · ${formatTime(length)}${source} · ${n} chunk${n === 1 ? "" : "s"}`;
    // no estimate before a run has measured this machine (model, size and steps all change it)
    if (this.pace != null) this.info.textContent += ` · ${formatDuration(n * this.pace)} at the last run's pace`;
    this.info.title = this.pace != null ? `${this.pace.toFixed(2)} s per chunk in the last run` : "";
    this.errorsEl.textContent = errors.map((e) => e.message).join("\n");
    if (!ok && !this.textMode) this.errorsEl.textContent += "\n(switch to Text to fix)";
    const notes = [];
    if (ok && late.size) {
      notes.push(`${late.size} prompt${late.size === 1 ? " starts" : "s start"} after the video ends `
        + `(${formatTime(length)}) and will be skipped: drag back or use Fit to length`);
    }
    for (const w of [this.warnings.schedule, this.warnings.sampler]) if (w) notes.push(w);
    this.warningsEl.textContent = notes.join("\n");
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

  onFit() {
    const { entries, errors } = this.parsed;
    if (errors.length) return;
    const fit = fitToLength(entries, this.duration, { fps: this.fps });
    if (!fit) {
      this.warnings.sampler = "more prompts than chunks: lengthen the video or remove prompts";
      return this.refresh(true);
    }
    this.commit(fit);
  }

  /** Warnings from a run: `which` is "schedule" (words dropped) or "sampler" (prompts skipped). */
  setWarnings(which, lines) {
    this.warnings[which] = (lines ?? []).join("\n").split("\n").filter((l) => l.startsWith("warning:"))
      .join("\n");
    this.refresh();
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

  get laneSeconds() {
    return laneLength(this.parsed.entries, this.duration, { fps: this.fps });
  }

  pointerTime(e, lane) {
    const rect = this.track.getBoundingClientRect(); // includes canvas zoom (CSS transform)
    return xToTime(e.clientX - rect.left, rect.width, lane);
  }

  onPointerDown(e) {
    const handle = e.target.closest?.(".vssm-tl-handle");
    const block = e.target.closest?.(".vssm-tl-block");
    if (!block) return;
    e.stopPropagation();
    const index = Number(block.dataset.index);
    this.selected = index;
    const { entries, errors } = this.parsed;
    if (index === 0 || errors.length) return this.refresh(true); // the first prompt always starts at 0
    e.preventDefault();
    const lane = this.laneSeconds; // fixed for the drag, so the blocks do not slide under the pointer
    // a handle moves the start at once; a body press becomes a drag once it moves (else a click),
    // keeping the offset between the pointer and the block's start
    const offset = handle ? 0 : this.pointerTime(e, lane) - entries[index].time;
    this.drag = { index, entries, pointer: e.pointerId, lane, offset, x: e.clientX, active: !!handle };
    this.track.setPointerCapture?.(e.pointerId);
  }

  dragTarget(e) {
    const { entries, index, lane, offset } = this.drag;
    const t = this.pointerTime(e, lane) - offset;
    return moveBoundary(entries, index, t, { fps: this.fps, duration: lane });
  }

  onPointerMove(e) {
    if (!this.drag || e.pointerId !== this.drag.pointer) return;
    e.stopPropagation();
    if (!this.drag.active && Math.abs(e.clientX - this.drag.x) < DRAG_START_PX) return;
    this.drag.active = true;
    const moved = this.dragTarget(e);
    this.drag.preview = moved;
    // live preview: move the two affected blocks without re-rendering (keeps pointer capture)
    const i = this.drag.index;
    const d = this.drag.lane;
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
    const moved = this.drag.active ? this.dragTarget(e) : null;
    this.track.releasePointerCapture?.(e.pointerId);
    this.selected = this.drag.index;
    this.drag = null;
    if (moved) this.commit(moved);
    else this.refresh(true);
  }

  // -------------------------------------------------------------- progress
  noteChunk() {
    this.chunkTimes.push(performance.now());
    this.pace = paceFromChunkTimes(this.chunkTimes) ?? this.pace;
  }

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
  const key = id.split(":").pop(); // ids are numbers in frontend 1.32, strings in some later graphs
  const start = graph?.getNodeById?.(key) ?? graph?.getNodeById?.(Number(key));
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
    c.noteChunk();
    c.setPlayhead(Math.min(seconds, c.duration));
  }
}

// ------------------------------------------------------------------ text output on the node
// Inspect / Save State return their summary as ui text; the frontend shows a node's ui text only
// where an extension puts it, so give them a read-only box (not serialized: widgets_values stay
// as the backend defines them).
const TEXT_MIN_HEIGHT = 110;

function showText(node, lines) {
  let w = node.widgets?.find((x) => x.name === "videossm_text");
  if (!w) {
    const box = el("textarea", "vssm-text", { readOnly: true, spellcheck: false });
    box.dataset.node = String(node.id);
    keepKeys(box);
    w = node.addDOMWidget("videossm_text", "videossm_text", box, {
      serialize: false, hideOnZoom: false, getMinHeight: () => TEXT_MIN_HEIGHT });
    w.serialize = false;
    const size = node.computeSize?.() ?? node.size;
    node.setSize?.([Math.max(node.size[0], 360), Math.max(node.size[1], size[1])]);
  }
  w.element.value = (lines ?? []).join("\n");
  w.element.dataset.node = String(node.id);
  node.setDirtyCanvas?.(true, true);
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
    setInterval(() => live.forEach((c) => c.refresh()), POLL_MS);
    api.addEventListener("videossm.chunk", onChunkEvent);
    // a new run starts with no playhead and no warnings of the last one
    api.addEventListener("execution_start", () => live.forEach((c) => {
      c.warnings = { schedule: "", sampler: "" };
      c.chunkTimes = [];
      c.setPlayhead(null);
    }));
    // Cancel: the playhead must not stay frozen; say where the saved video stops instead
    api.addEventListener("videossm.stopped", (event) => {
      const d = event.detail ?? {};
      for (const c of timelinesFor(String(d.node ?? ""))) {
        const at = Number.isFinite(d.seconds) ? formatTime(Math.round(d.seconds * 100) / 100) : "?";
        c.warnings.sampler = `cancelled at ${at}: the video and state so far are saved (see the sampler)`;
        c.setPlayhead(null);
      }
    });
    api.addEventListener("execution_error", () => live.forEach((c) => c.setPlayhead(null)));
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (TEXT_NODES.has(nodeData?.name)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        // room for the summary from the start (the plot goes to a Preview Image)
        this.setSize?.([Math.max(this.size?.[0] ?? 0, 360), this.size?.[1] ?? 0]);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        if (message?.text) showText(this, message.text);
      });
      return;
    }
    if (nodeData?.name === SAMPLER_TYPE) {
      chain(nodeType.prototype, "onExecuted", function (message) {
        // prompts the sampler skipped (after the video's end): shown on the timeline(s) feeding it
        for (const c of timelinesFor(String(this.id))) c.setWarnings("sampler", message?.text ?? []);
      });
      return;
    }
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onExecuted", function (message) {
      this.videossmTimeline?.setWarnings("schedule", message?.text ?? []);
    });
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
