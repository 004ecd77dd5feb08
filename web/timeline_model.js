// timeline_model.js - the prompt-timeline logic of ComfyUI-VideoSSM, free of DOM and ComfyUI.
//
// Implements the prompt schedule syntax of docs/DESIGN.md exactly like videossm_core/schedule.py
// (tests/fixtures/schedules.json holds the cases both implementations must agree on):
//
//   TIME: PROMPT            one entry per line; the prompt is everything after the first ':'
//   TIME                    12 | 12.5 | 12s | 12.5s      seconds
//                           1m30s | 1m30.5s | 2m         minutes (+ seconds)
//                           40f                          video frames at the schedule's fps
//                           (units are case-insensitive; no sign, no exponent)
//   blank lines and lines whose first non-blank character is '#' are ignored;
//   lines are split on \n after turning \r\n and \r into \n; lines and both sides of the
//   first ':' are trimmed.
//   The first entry must be at time 0; times must increase strictly; each time snaps to the
//   nearest chunk boundary and two entries that snap to the same chunk are an error naming
//   both lines.
//   JSON is accepted too: [{"time": "0s" | 0, "prompt": "..."}, ...] or
//   {"fps": 16, "prompts": [...]}; then `line` is the 1-based item number.
//
// Chunk geometry: a chunk is 3 latent frames; latent frame 0 decodes to 1 video frame and every
// later latent frame to 4, so chunk 0 spans video frames [0, 9) and chunk k >= 1 spans
// [9 + 12 (k-1), 9 + 12 k). Chunk boundaries (in frames) are 0, 9, 21, 33, ...
//
// Prompt text is data: nothing here (or in the widget) interprets it as HTML.

export const DEFAULT_FPS = 16;
export const CHUNK_LATENT_FRAMES = 3;
export const FIRST_CHUNK_FRAMES = 1 + 4 * (CHUNK_LATENT_FRAMES - 1); // 9
export const CHUNK_FRAMES = 4 * CHUNK_LATENT_FRAMES; // 12
const EPS = 1e-9;

// ------------------------------------------------------------------ chunk geometry

/** First video frame of chunk k. */
export function chunkStartFrame(k) {
  return k <= 0 ? 0 : FIRST_CHUNK_FRAMES + CHUNK_FRAMES * (k - 1);
}

/** Start of chunk k in seconds. */
export function chunkStartSeconds(k, fps = DEFAULT_FPS) {
  return chunkStartFrame(k) / fps;
}

/** Index of the chunk boundary nearest to `seconds` (ties go to the later boundary). */
export function chunkIndexAt(seconds, fps = DEFAULT_FPS) {
  const f = Math.max(0, seconds) * fps;
  if (f < FIRST_CHUNK_FRAMES / 2) return 0;
  return Math.max(1, Math.floor((f - FIRST_CHUNK_FRAMES) / CHUNK_FRAMES + 0.5) + 1);
}

/** Index of the chunk whose frames contain time `seconds` (for a playhead). */
export function chunkContaining(seconds, fps = DEFAULT_FPS) {
  const f = Math.max(0, seconds) * fps;
  if (f < FIRST_CHUNK_FRAMES) return 0;
  return 1 + Math.floor((f - FIRST_CHUNK_FRAMES) / CHUNK_FRAMES + EPS);
}

/** `seconds` snapped to the nearest chunk boundary. */
export function snapToChunk(seconds, { fps = DEFAULT_FPS } = {}) {
  return chunkStartSeconds(chunkIndexAt(seconds, fps), fps);
}

/**
 * A clean time (seconds) for chunk k: the shortest decimal (whole seconds, then 1 or 2 decimals)
 * that still snaps to chunk k and lies within a quarter chunk of its exact start, so the schedule
 * text reads "12s" instead of "11.8125s" (both snap to the same chunk here and in schedule.py).
 */
export function cleanChunkTime(k, fps = DEFAULT_FPS) {
  const exact = chunkStartSeconds(k, fps);
  for (const scale of [1, 10, 100]) {
    const t = Math.round(exact * scale) / scale;
    if (chunkIndexAt(t, fps) === k && Math.abs(t - exact) * fps <= CHUNK_FRAMES / 4 + EPS) return t;
  }
  return exact;
}

/** Number of chunks needed to cover `durationSeconds` (at least 1). */
export function chunkCount(durationSeconds, { fps = DEFAULT_FPS } = {}) {
  const frames = Math.max(0, durationSeconds) * fps;
  if (frames <= FIRST_CHUNK_FRAMES + EPS) return 1;
  return 1 + Math.ceil((frames - FIRST_CHUNK_FRAMES) / CHUNK_FRAMES - EPS);
}

/** Start times (seconds) of every chunk of a video of `durationSeconds`: [0, 0.5625, ...]. */
export function chunkBoundariesSeconds(durationSeconds, { fps = DEFAULT_FPS } = {}) {
  const n = chunkCount(durationSeconds, { fps });
  return Array.from({ length: n }, (_, k) => chunkStartSeconds(k, fps));
}

// ------------------------------------------------------------------ parsing

const TIME_RE = /^(?:(\d+(?:\.\d+)?)s?|(\d+)m(?:(\d+(?:\.\d+)?)s)?|(\d+)f|(\d+):([0-5]\d(?:\.\d+)?))$/i;
// "1:30: a prompt" is minutes:seconds, not a switch at 1 s with the prompt "30: a prompt"
const CLOCK_LINE_RE = /^(\d+:[0-5]\d(?:\.\d+)?)\s*:([\s\S]*)$/;

/** Seconds for a TIME string ("12", "12.5s", "1m30s", "2m", "40f"), or null if invalid. */
export function parseTime(text, fps = DEFAULT_FPS) {
  const m = TIME_RE.exec(String(text).trim());
  if (!m) return null;
  if (m[1] !== undefined) return Number(m[1]);
  if (m[2] !== undefined) return Number(m[2]) * 60 + (m[3] !== undefined ? Number(m[3]) : 0);
  if (m[5] !== undefined) return Number(m[5]) * 60 + Number(m[6]);
  return Number(m[4]) / fps;
}

/** Canonical TIME text for a number of seconds: "0s", "12s", "12.5s". */
export function formatTime(seconds) {
  let s = String(seconds === 0 ? 0 : seconds); // no "-0"
  if (/e/i.test(s)) s = seconds.toFixed(9).replace(/\.?0+$/, "");
  return `${s}s`;
}

/**
 * Parse schedule text.
 * @returns {{entries: {time:number, prompt:string, line:number, chunk:number}[],
 *            errors: {line:number, message:string}[], fps:number}}
 * `line` is 1-based (the JSON item number for JSON input); 0 means the whole schedule.
 * Malformed lines are skipped; well-formed ones are kept in `entries` even when an ordering
 * error names them, so an editor can still show them.
 */
export function parseSchedule(text, { fps = DEFAULT_FPS } = {}) {
  const src = String(text ?? "");
  const trimmed = src.trim();
  if (trimmed.startsWith("[") || trimmed.startsWith("{")) return parseJsonSchedule(src, fps);

  const raw = [];
  const errors = [];
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  lines.forEach((rawLine, i) => {
    const line = i + 1;
    const s = rawLine.trim();
    if (s === "" || s.startsWith("#")) return;
    const colon = s.indexOf(":");
    if (colon < 0) {
      errors.push({ line, message: `line ${line}: expected "TIME: PROMPT"` });
      return;
    }
    const clock = CLOCK_LINE_RE.exec(s);
    const timeText = clock ? clock[1] : s.slice(0, colon).trim();
    const prompt = (clock ? clock[2] : s.slice(colon + 1)).trim();
    const time = parseTime(timeText, fps);
    if (time === null) {
      errors.push({ line, message: `line ${line}: invalid time "${timeText}" (use 12, 12.5s, 1m30s or 40f)` });
      return;
    }
    if (prompt === "") {
      errors.push({ line, message: `line ${line}: empty prompt` });
      return;
    }
    raw.push({ time, prompt, line });
  });
  return finish(raw, errors, fps, "line");
}

function parseJsonSchedule(src, fps) {
  let data;
  try {
    data = JSON.parse(src);
  } catch (e) {
    const pos = /position (\d+)/.exec(String(e.message));
    const line = pos ? src.slice(0, Number(pos[1])).split("\n").length : 1;
    return { entries: [], errors: [{ line, message: `line ${line}: invalid JSON: ${e.message}` }], fps };
  }
  let items = data;
  // the file's fps only says what its "48f" times mean; chunks follow the video's fps
  let frameFps = fps;
  if (data && !Array.isArray(data) && typeof data === "object") {
    if (data.fps !== undefined) {
      if (typeof data.fps !== "number" || !(data.fps > 0) || !Number.isFinite(data.fps)) {
        return { entries: [], errors: [{ line: 0, message: '"fps" must be a positive number' }], fps };
      }
      frameFps = data.fps;
    }
    items = data.prompts;
  }
  if (!Array.isArray(items)) {
    return {
      entries: [],
      errors: [{ line: 0, message: 'JSON schedule must be a list of {"time", "prompt"} or {"prompts": [...]}' }],
      fps,
    };
  }
  const raw = [];
  const errors = [];
  items.forEach((item, i) => {
    const line = i + 1;
    if (!item || typeof item !== "object" || Array.isArray(item)) {
      errors.push({ line, message: `item ${line}: expected {"time": ..., "prompt": ...}` });
      return;
    }
    let time = null;
    if (typeof item.time === "number") {
      time = Number.isFinite(item.time) && item.time >= 0 ? item.time : null;
    } else if (typeof item.time === "string") {
      time = parseTime(item.time, frameFps);
    }
    if (time === null) {
      const shown = item.time === undefined ? "missing" : JSON.stringify(item.time);
      errors.push({ line, message: `item ${line}: invalid time ${shown}` });
      return;
    }
    const prompt = typeof item.prompt === "string" ? item.prompt.trim() : "";
    if (prompt === "") {
      errors.push({ line, message: `item ${line}: missing or empty prompt` });
      return;
    }
    raw.push({ time, prompt, line });
  });
  return finish(raw, errors, fps, "item");
}

// ordering rules shared by the text and JSON forms
function finish(raw, errors, fps, what) {
  const entries = [];
  let prev = null;
  for (const e of raw) {
    const chunk = chunkIndexAt(e.time, fps);
    if (prev === null) {
      if (e.time !== 0) {
        errors.push({ line: e.line, message: `${what} ${e.line}: the first entry must be at time 0 (got ${formatTime(e.time)})` });
      }
    } else if (!(e.time > prev.time)) {
      errors.push({
        line: e.line,
        message: `${what} ${e.line}: time ${formatTime(e.time)} must be after ${formatTime(prev.time)} (${what} ${prev.line})`,
      });
    } else if (chunk === prev.chunk) {
      errors.push({
        line: e.line,
        message: `${what} ${e.line} and ${what} ${prev.line} snap to the same chunk ${chunk} (${formatTime(chunkStartSeconds(chunk, fps))}); move them further apart`,
      });
    }
    const entry = { time: e.time, prompt: e.prompt, line: e.line, chunk };
    entries.push(entry);
    prev = entry;
  }
  if (raw.length === 0 && errors.length === 0) {
    errors.push({ line: 0, message: "the schedule has no prompts" });
  }
  errors.sort((a, b) => a.line - b.line);
  return { entries, errors, fps };
}

// ------------------------------------------------------------------ serialization

/** One-line prompt text (newlines would split the entry). */
export function cleanPrompt(text) {
  return String(text ?? "").replace(/\s*[\r\n]+\s*/g, " ").trim();
}

/** Canonical text: one `12.5s: prompt` line per entry; parseSchedule() reads it back. */
export function serializeSchedule(entries) {
  return entries.map((e) => `${formatTime(e.time)}: ${cleanPrompt(e.prompt)}`).join("\n");
}

// ------------------------------------------------------------------ editing (pure)

const copy = (entries) => entries.map((e) => ({ time: e.time, prompt: e.prompt }));

/** Last chunk index of a video of `duration` seconds (Infinity when unknown). */
function lastChunk(duration, fps) {
  return duration == null ? Infinity : chunkCount(duration, { fps }) - 1;
}

/**
 * Retime entry `index` (> 0) to `newTime`, snapped to a chunk boundary and clamped so both
 * neighbours keep at least one chunk. Returns new entries (unchanged copy if impossible).
 */
export function moveBoundary(entries, index, newTime, { fps = DEFAULT_FPS, duration = null } = {}) {
  const out = copy(entries);
  if (!(index > 0 && index < out.length)) return out;
  const lo = chunkIndexAt(out[index - 1].time, fps) + 1;
  const hi = index + 1 < out.length ? chunkIndexAt(out[index + 1].time, fps) - 1 : lastChunk(duration, fps);
  if (lo > hi) return out;
  const k = Math.min(hi, Math.max(lo, chunkIndexAt(newTime, fps)));
  out[index].time = cleanChunkTime(k, fps);
  return out;
}

/**
 * Insert a prompt at the chunk boundary nearest `time`; if that chunk already starts a prompt,
 * the next free chunk is used (or the previous free one when the video ends first).
 * An empty schedule always gets its first prompt at 0.
 */
export function addPrompt(entries, time, prompt, { fps = DEFAULT_FPS, duration = null } = {}) {
  const out = copy(entries);
  const text = cleanPrompt(prompt);
  if (out.length === 0) return [{ time: 0, prompt: text }];
  const used = new Set(out.map((e) => chunkIndexAt(e.time, fps)));
  const last = lastChunk(duration, fps);
  const want = Math.min(chunkIndexAt(time, fps), last);
  let k = want;
  while (used.has(k) && k <= last) k += 1;
  if (k > last) {
    k = want - 1;
    while (k >= 0 && used.has(k)) k -= 1;
    if (k < 0) return out;
  }
  const t = cleanChunkTime(k, fps);
  const at = out.findIndex((e) => chunkIndexAt(e.time, fps) > k);
  out.splice(at < 0 ? out.length : at, 0, { time: t, prompt: text });
  return out;
}

/** Remove entry `index`; the last remaining entry cannot be removed. Removing entry 0 moves
 * the next entry to time 0. */
export function removePrompt(entries, index) {
  const out = copy(entries);
  if (out.length <= 1 || !(index >= 0 && index < out.length)) return out;
  out.splice(index, 1);
  if (index === 0) out[0].time = 0;
  return out;
}

/** Replace the prompt text of entry `index` (newlines become spaces). */
export function editPrompt(entries, index, text) {
  const out = copy(entries);
  if (index >= 0 && index < out.length) out[index].prompt = cleanPrompt(text);
  return out;
}

/** A good time for a new prompt: the middle of the longest stretch (snapped). */
export function suggestAddTime(entries, duration, { fps = DEFAULT_FPS } = {}) {
  if (entries.length === 0) return 0;
  const starts = entries.map((e) => snapToChunk(e.time, { fps }));
  const end = Math.max(duration ?? 0, starts[starts.length - 1]);
  let best = { len: -1, mid: 0 };
  starts.forEach((s, i) => {
    const e = i + 1 < starts.length ? starts[i + 1] : end;
    if (e - s > best.len) best = { len: e - s, mid: (s + e) / 2 };
  });
  return snapToChunk(best.mid, { fps });
}

/** Indices of the entries that start after a video of `duration` seconds ends (never entry 0):
 * the sampler skips them, the lane shows them past the end. */
export function lateIndices(entries, duration, { fps = DEFAULT_FPS } = {}) {
  const last = lastChunk(duration, fps);
  return entries.map((e, i) => i).filter((i) => i > 0 && chunkIndexAt(entries[i].time, fps) > last);
}

/** The lane's length: the video's duration, stretched past the end to show every late prompt
 * with one chunk of room, so no prompt is ever drawn outside the lane. */
export function laneLength(entries, duration, { fps = DEFAULT_FPS } = {}) {
  const d = duration > 0 ? duration : 0;
  if (!entries.length) return d || 10;
  if (d > 0 && !lateIndices(entries, d, { fps }).length) return d;
  const k = chunkIndexAt(entries[entries.length - 1].time, fps);
  return Math.max(d, chunkStartSeconds(k + 1, fps) + 0.25);
}

/**
 * "Fit to length": every prompt moved inside a video of `duration` seconds, keeping their order
 * and relative spacing (chunk positions scaled by length / lane length, at least one chunk
 * each, clean times). Entries that already fit are returned unchanged; null when there are
 * more prompts than chunks.
 */
export function fitToLength(entries, duration, { fps = DEFAULT_FPS } = {}) {
  const out = copy(entries);
  const chunks = chunkCount(duration, { fps });
  if (out.length > chunks) return null;
  if (!lateIndices(out, duration, { fps }).length) return out;
  const ks = out.map((e) => chunkIndexAt(e.time, fps));
  const span = ks[ks.length - 1] + 1;
  const n = out.length;
  for (let i = 0; i < n; i += 1) {
    let k = Math.floor((ks[i] * chunks) / span);
    if (i > 0) k = Math.max(k, ks[i - 1] + 1);
    ks[i] = Math.min(k, chunks - 1 - (n - 1 - i));
  }
  ks[0] = 0;
  ks.forEach((k, i) => { out[i].time = cleanChunkTime(k, fps); });
  return out;
}

/**
 * Colour slots by prompt identity, not position: `prev` is [{prompt, slot}] from the last render.
 * A prompt keeps its slot when its text is unchanged (blocks added or removed elsewhere), or when
 * the count is unchanged and the same position held it (its text is being edited); a new prompt
 * takes the smallest free slot. Returns one slot per entry.
 */
export function assignColorSlots(prev, entries) {
  const taken = new Set();
  const slots = entries.map(() => null);
  entries.forEach((e, i) => {
    const j = prev.findIndex((p, pj) => !taken.has(pj) && p.prompt === e.prompt);
    if (j >= 0) { taken.add(j); slots[i] = prev[j].slot; }
  });
  if (prev.length === entries.length) {
    slots.forEach((s, i) => {
      if (s == null && !taken.has(i)) { taken.add(i); slots[i] = prev[i].slot; }
    });
  }
  const inUse = new Set(slots.filter((s) => s != null));
  return slots.map((s) => {
    if (s != null) return s;
    let k = 0;
    while (inUse.has(k)) k += 1;
    inUse.add(k);
    return k;
  });
}

/** Blocks to draw: [{index, start, end, prompt}] with snapped starts, each ending where the
 * next begins (the last one at max(duration, its start)). */
export function spans(entries, duration, { fps = DEFAULT_FPS } = {}) {
  const starts = entries.map((e) => snapToChunk(e.time, { fps }));
  return entries.map((e, i) => ({
    index: i,
    start: starts[i],
    end: i + 1 < entries.length ? Math.max(starts[i], starts[i + 1]) : Math.max(duration ?? 0, starts[i]),
    prompt: e.prompt,
  }));
}

// ------------------------------------------------------------------ pixels <-> seconds

/** x in [0, width] for a time in [0, duration]. */
export function timeToX(seconds, width, duration) {
  if (!(duration > 0)) return 0;
  return (Math.min(Math.max(seconds, 0), duration) / duration) * width;
}

/** Time in [0, duration] for an x in [0, width]. */
export function xToTime(x, width, duration) {
  if (!(width > 0) || !(duration > 0)) return 0;
  return Math.min(Math.max(x / width, 0), 1) * duration;
}

/** Tick spacing (seconds) that gives roughly `targetPx` pixels between labelled ticks. */
export function niceTickStep(duration, width, targetPx = 80) {
  if (!(duration > 0) || !(width > 0)) return 1;
  const raw = (duration * targetPx) / width;
  for (const step of [0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600]) if (step >= raw) return step;
  return 600 * Math.ceil(raw / 600);
}

// ------------------------------------------------------------------ generation time

/**
 * Seconds per chunk measured from the completion times (ms) of one run's chunks: the median gap
 * between consecutive chunks (the first chunk also pays for loading the model, so it is left out).
 * null with fewer than two chunks.
 */
export function paceFromChunkTimes(timesMs) {
  const gaps = [];
  for (let i = 1; i < timesMs.length; i += 1) gaps.push((timesMs[i] - timesMs[i - 1]) / 1000);
  if (!gaps.length) return null;
  gaps.sort((a, b) => a - b);
  const mid = Math.floor(gaps.length / 2);
  return gaps.length % 2 ? gaps[mid] : (gaps[mid - 1] + gaps[mid]) / 2;
}

/** A rough duration for people: "~40 s", "~12 min", "~2 h 5 min". */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `~${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `~${m} min`;
  return `~${Math.floor(m / 60)} h ${m % 60} min`;
}
