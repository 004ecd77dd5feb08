// Unit tests of web/timeline_model.js (node:test, no dependencies): `node --test web/tests/`.
// The parse cases come from tests/fixtures/schedules.json, which the Python parser tests share.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  parseSchedule, serializeSchedule, parseTime, formatTime,
  chunkIndexAt, chunkStartSeconds, chunkContaining, snapToChunk, chunkCount,
  chunkBoundariesSeconds, moveBoundary, addPrompt, removePrompt, editPrompt,
  suggestAddTime, spans, timeToX, xToTime, niceTickStep, cleanPrompt,
  cleanChunkTime, lateIndices, laneLength, fitToLength, assignColorSlots,
} from "../timeline_model.js";

const fixtures = JSON.parse(
  readFileSync(new URL("../../tests/fixtures/schedules.json", import.meta.url), "utf8"));
const close = (a, b, msg) => assert.ok(Math.abs(a - b) < 1e-9, `${msg}: ${a} != ${b}`);
const E = (pairs) => pairs.map(([time, prompt]) => ({ time, prompt }));
const times = (entries) => entries.map((e) => e.time);

describe("shared fixture: parse", () => {
  for (const c of fixtures.parse) {
    test(c.name, () => {
      const r = parseSchedule(c.text, c.fps ? { fps: c.fps } : undefined);
      assert.deepEqual(r.errors.map((e) => e.line), c.errors,
        `error lines: ${JSON.stringify(r.errors)}`);
      for (const e of r.errors) {
        assert.equal(typeof e.message, "string");
        if (e.line > 0) assert.match(e.message, new RegExp(`\\b${e.line}\\b`), "message names its line");
      }
      for (const [line, needles] of Object.entries(c.mentions ?? {})) {
        const err = r.errors.find((e) => e.line === Number(line));
        for (const n of needles) assert.match(err.message, new RegExp(`\\b${n}\\b`), err.message);
      }
      if (c.entries) {
        assert.equal(r.entries.length, c.entries.length);
        c.entries.forEach((want, i) => {
          const got = r.entries[i];
          close(got.time, want.time, `entry ${i} time`);
          assert.equal(got.prompt, want.prompt);
          assert.equal(got.line, want.line);
          assert.equal(got.chunk, want.chunk);
        });
      }
    });
  }
});

describe("shared fixture: geometry", () => {
  test("snap", () => {
    for (const s of fixtures.snap) {
      assert.equal(chunkIndexAt(s.time, s.fps), s.chunk, `chunkIndexAt(${s.time})`);
      close(snapToChunk(s.time, { fps: s.fps }), s.seconds, `snapToChunk(${s.time})`);
    }
  });
  test("chunk count", () => {
    for (const s of fixtures.chunk_count) {
      assert.equal(chunkCount(s.duration, { fps: s.fps }), s.count, `chunkCount(${s.duration})`);
    }
  });
});

describe("time syntax", () => {
  test("every form", () => {
    assert.equal(parseTime("12"), 12);
    assert.equal(parseTime("12.5"), 12.5);
    assert.equal(parseTime("12s"), 12);
    assert.equal(parseTime("12.5s"), 12.5);
    assert.equal(parseTime("1m30s"), 90);
    assert.equal(parseTime("2m"), 120);
    assert.equal(parseTime("40f"), 2.5);
    assert.equal(parseTime("40f", 8), 5);
    assert.equal(parseTime(" 3S "), 3);
  });
  test("rejects", () => {
    for (const bad of ["", "-1", "+1", "1e3", ".5", "1.", "1.5m", "1m 30s", "30s1m", "2.5f", "abc", "1h", "1ms"]) {
      assert.equal(parseTime(bad), null, bad);
    }
  });
  test("formatTime is canonical and parses back", () => {
    assert.equal(formatTime(0), "0s");
    assert.equal(formatTime(-0), "0s");
    assert.equal(formatTime(12), "12s");
    assert.equal(formatTime(12.5), "12.5s");
    assert.equal(formatTime(1.3125), "1.3125s");
    for (const t of [0, 1 / 3, 0.5625, 59.8125, 1e-7, 3600]) close(parseTime(formatTime(t)), t, String(t));
  });
});

describe("serialize", () => {
  test("round trip of every valid fixture", () => {
    for (const c of fixtures.parse.filter((c) => c.errors.length === 0)) {
      const fps = c.fps ? { fps: c.fps } : undefined;
      const a = parseSchedule(c.text, fps);
      const text = serializeSchedule(a.entries);
      const b = parseSchedule(text, { fps: a.fps });  // text has no fps of its own (JSON may)
      assert.deepEqual(b.errors, [], c.name);
      assert.deepEqual(b.entries.map((e) => [e.time, e.prompt, e.chunk]),
        a.entries.map((e) => [e.time, e.prompt, e.chunk]), c.name);
      assert.equal(serializeSchedule(b.entries), text, "canonical text is a fixed point");
    }
  });
  test("canonical form", () => {
    assert.equal(serializeSchedule(E([[0, "a"], [12.5, "b c"], [60, "d"]])), "0s: a\n12.5s: b c\n60s: d");
  });
  test("newlines in prompts become spaces", () => {
    const text = serializeSchedule(E([[0, "two\nlines \r\n here"]]));
    assert.equal(text, "0s: two lines here");
    assert.equal(cleanPrompt(" a \n\n b "), "a b");
  });
  test("HTML-looking prompt text is preserved verbatim", () => {
    const evil = `<script>alert("x")</script> <img src=x onerror=alert(1)> &amp; &lt;b&gt;`;
    const text = serializeSchedule(E([[0, evil], [3, "</div><div>"]]));
    const r = parseSchedule(text);
    assert.deepEqual(r.errors, []);
    assert.equal(r.entries[0].prompt, evil);
    assert.equal(r.entries[1].prompt, "</div><div>");
  });
});

describe("chunk geometry", () => {
  test("chunk 0 has 9 frames, later chunks 12 (fps 16)", () => {
    assert.deepEqual([0, 1, 2, 3].map((k) => chunkStartSeconds(k) * 16), [0, 9, 21, 33]);
    assert.deepEqual(chunkBoundariesSeconds(2), [0, 0.5625, 1.3125]);
    assert.deepEqual(chunkBoundariesSeconds(0.5), [0]);
  });
  test("chunkContaining", () => {
    assert.equal(chunkContaining(0), 0);
    assert.equal(chunkContaining(8 / 16), 0);
    assert.equal(chunkContaining(9 / 16), 1);
    assert.equal(chunkContaining(20 / 16), 1);
    assert.equal(chunkContaining(21 / 16), 2);
  });
  test("snapToChunk is idempotent", () => {
    for (let t = 0; t < 10; t += 0.37) {
      const s = snapToChunk(t);
      assert.equal(snapToChunk(s), s);
      assert.ok(Math.abs(s - t) <= 6 / 16 + 1e-12, "never more than half a chunk away");
    }
  });
});

describe("editing", () => {
  const base = E([[0, "a"], [chunkStartSeconds(4), "b"], [chunkStartSeconds(8), "c"]]);

  test("moveBoundary snaps", () => {
    const out = moveBoundary(base, 1, 1.0);               // 16 frames -> boundary 21 (chunk 2)
    assert.deepEqual(times(out), [0, cleanChunkTime(2), chunkStartSeconds(8)]);
    assert.notEqual(out, base);
    assert.equal(base[1].time, chunkStartSeconds(4), "input not mutated");
  });
  test("moveBoundary clamps with one chunk gap", () => {
    assert.equal(moveBoundary(base, 1, 0)[1].time, cleanChunkTime(1));
    assert.equal(moveBoundary(base, 1, 100)[1].time, cleanChunkTime(7));
    assert.equal(moveBoundary(base, 2, 0)[2].time, cleanChunkTime(5));
    assert.equal(moveBoundary(base, 2, 100)[2].time, cleanChunkTime(chunkIndexAt(100)), "last entry: no upper neighbour");
    assert.equal(moveBoundary(base, 2, 100, { duration: 5 })[2].time, cleanChunkTime(chunkCount(5) - 1));
  });
  test("moveBoundary: entry 0 and impossible moves are no-ops", () => {
    assert.deepEqual(moveBoundary(base, 0, 3), base);
    assert.deepEqual(moveBoundary(base, 7, 3), base);
    const tight = E([[0, "a"], [chunkStartSeconds(1), "b"], [chunkStartSeconds(2), "c"]]);
    assert.deepEqual(moveBoundary(tight, 1, 5).map((e) => chunkIndexAt(e.time)), [0, 1, 2], "no room: same chunks");
  });
  test("moveBoundary with a different fps", () => {
    const e = E([[0, "a"], [2, "b"]]);
    const moved = moveBoundary(e, 1, 1, { fps: 24 })[1].time;
    assert.equal(chunkIndexAt(moved, 24), chunkIndexAt(1, 24));
    assert.equal(moved, cleanChunkTime(chunkIndexAt(1, 24), 24));
  });
  test("addPrompt inserts sorted at a snapped free chunk", () => {
    const out = addPrompt(base, 1.0, "new");
    assert.deepEqual(out.map((e) => e.prompt), ["a", "new", "b", "c"]);
    assert.equal(out[1].time, cleanChunkTime(2));
    const clash = addPrompt(base, chunkStartSeconds(4), "x");       // chunk 4 taken -> 5
    assert.equal(clash[2].time, cleanChunkTime(5));
    const end = addPrompt(base, 100, "tail", { duration: chunkStartSeconds(8) + 0.1 });
    assert.equal(end.length, 4);
    // the video ends in chunk 8, which "c" holds: the nearest free chunk before it is used
    assert.deepEqual(end.map((e) => e.prompt), ["a", "b", "tail", "c"]);
    assert.equal(end[2].time, cleanChunkTime(7));
    assert.ok(end.every((e, i) => i === 0 || e.time > end[i - 1].time));
    assert.deepEqual(addPrompt([], 5, "first"), E([[0, "first"]]));
    assert.equal(addPrompt(base, 0, "zero")[1].time, cleanChunkTime(1), "chunk 0 is taken");
  });
  test("addPrompt when the video is full is a no-op", () => {
    const full = E([[0, "a"], [chunkStartSeconds(1), "b"]]);
    assert.deepEqual(addPrompt(full, 0.3, "c", { duration: chunkStartSeconds(1) + 0.1 }), full);
  });
  test("removePrompt", () => {
    assert.deepEqual(removePrompt(base, 1).map((e) => e.prompt), ["a", "c"]);
    const first = removePrompt(base, 0);
    assert.deepEqual(first, E([[0, "b"], [chunkStartSeconds(8), "c"]]), "next entry moves to 0");
    assert.deepEqual(removePrompt(E([[0, "only"]]), 0), E([[0, "only"]]), "last one stays");
    assert.deepEqual(removePrompt(base, 9), base);
    assert.deepEqual(parseSchedule(serializeSchedule(first)).errors, []);
  });
  test("editPrompt", () => {
    const out = editPrompt(base, 2, "<b>c</b>\nnext");
    assert.equal(out[2].prompt, "<b>c</b> next");
    assert.equal(base[2].prompt, "c");
  });
  test("edits keep the schedule valid", () => {
    let e = base;
    e = addPrompt(e, 2, "x", { duration: 10 });
    e = moveBoundary(e, 2, 0.1, { duration: 10 });
    e = removePrompt(e, 0);
    e = addPrompt(e, 9.9, "y", { duration: 10 });
    e = editPrompt(e, 0, "z");
    assert.deepEqual(parseSchedule(serializeSchedule(e)).errors, []);
  });
  test("suggestAddTime picks the middle of the longest stretch", () => {
    const t = suggestAddTime(base, 20);
    assert.ok(t > chunkStartSeconds(8) && t < 20);
    assert.equal(t, snapToChunk(t));
    assert.equal(suggestAddTime([], 10), 0);
  });
});

describe("drawing helpers", () => {
  test("spans", () => {
    const s = spans(E([[0, "a"], [1, "b"]]), 5);
    assert.deepEqual(s.map((x) => [x.start, x.end]), [[0, snapToChunk(1)], [snapToChunk(1), 5]]);
  });
  test("time <-> x", () => {
    assert.equal(timeToX(5, 200, 10), 100);
    assert.equal(timeToX(50, 200, 10), 200);
    assert.equal(timeToX(-1, 200, 10), 0);
    assert.equal(xToTime(100, 200, 10), 5);
    assert.equal(xToTime(-5, 200, 10), 0);
    assert.equal(xToTime(500, 200, 10), 10);
    assert.equal(xToTime(10, 0, 10), 0);
    assert.equal(timeToX(1, 100, 0), 0);
  });
  test("tick step", () => {
    assert.equal(niceTickStep(10, 800, 80), 1);
    assert.equal(niceTickStep(60, 600, 80), 10);
  });
});

describe("clean times, late prompts, fit to length, colours (issue #21)", () => {
  test("edits write clean times that snap to the same chunk", () => {
    assert.equal(chunkStartSeconds(16), 11.8125);
    assert.equal(cleanChunkTime(16), 12);
    for (let k = 0; k < 500; k += 1) {
      const t = cleanChunkTime(k);
      assert.equal(chunkIndexAt(t), k, `chunk ${k}: ${t}`);
      assert.ok(Number.isInteger(Math.round(t * 100)) && Math.abs(t * 100 - Math.round(t * 100)) < 1e-9, `${t}`);
    }
    const moved = moveBoundary(E([[0, "a"], [5, "b"], [40, "c"]]), 1, 11.8);
    assert.equal(serializeSchedule(moved).split("\n")[1], "12s: b");
  });
  test("a drag past the next prompt leaves every block at least one chunk long", () => {
    const e = E([[0, "a"], [5, "b"], [10, "c"]]);
    for (const t of [9.9, 10, 12, 100]) {
      const out = moveBoundary(e, 1, t);
      const k = out.map((x) => chunkIndexAt(x.time));
      assert.ok(k[1] >= k[0] + 1 && k[2] >= k[1] + 1, `${t}: ${k}`);
      assert.equal(k[2], chunkIndexAt(10), "the next prompt does not move");
    }
  });
  test("prompts past the end are late, and the lane stretches to show them", () => {
    const e = E([[0, "a"], [20, "b"], [40, "c"]]);
    assert.deepEqual(lateIndices(e, 10), [1, 2]);
    assert.deepEqual(lateIndices(e, 60), []);
    assert.equal(laneLength(e, 60), 60);
    const lane = laneLength(e, 10);
    assert.ok(lane > 40 && lane >= chunkStartSeconds(chunkIndexAt(40) + 1), `${lane}`);
    for (const s of spans(e, lane)) assert.ok(s.end <= lane && s.end > s.start, JSON.stringify(s));
  });
  test("fit to length spreads the prompts into the video, keeping order", () => {
    const e = E([[0, "a"], [20, "b"], [40, "c"]]);
    const fit = fitToLength(e, 10);
    assert.deepEqual(fit.map((x) => x.prompt), ["a", "b", "c"]);
    assert.deepEqual(lateIndices(fit, 10), []);
    assert.equal(laneLength(fit, 10), 10, "nothing late: the lane is the video");
    const k = fit.map((x) => chunkIndexAt(x.time));
    assert.ok(k[0] === 0 && k[1] > 0 && k[2] > k[1], `${k}`);
    assert.ok(Math.abs(fit[1].time - 10 * 20 / 40.75) < 1.5, `${fit[1].time} keeps the relative spacing`);
    assert.deepEqual(parseSchedule(serializeSchedule(fit)).errors, []);
    assert.deepEqual(fitToLength(e, 60), e, "already fits: unchanged");
    const crowded = E([[0, "a"], [30, "b"], [31, "c"], [32, "d"]]);
    const tight = fitToLength(crowded, 2.5);                   // 4 chunks for 4 prompts
    assert.deepEqual(tight.map((x) => chunkIndexAt(x.time)), [0, 1, 2, 3]);
    assert.equal(fitToLength(crowded, 1), null, "more prompts than chunks");
  });
  test("colours follow the prompt, not its position", () => {
    const first = assignColorSlots([], E([[0, "a"], [5, "b"], [9, "c"]]));
    assert.deepEqual(first, [0, 1, 2]);
    const prev = ["a", "b", "c"].map((prompt, i) => ({ prompt, slot: first[i] }));
    // a prompt added before "b": a, b and c keep their colours, the new one takes a free slot
    assert.deepEqual(assignColorSlots(prev, E([[0, "a"], [2, "new"], [5, "b"], [9, "c"]])), [0, 3, 1, 2]);
    // "a" removed: the others keep theirs
    assert.deepEqual(assignColorSlots(prev, E([[0, "b"], [9, "c"]])), [1, 2]);
    // "b" being edited: same count, same place, same colour
    assert.deepEqual(assignColorSlots(prev, E([[0, "a"], [5, "b!"], [9, "c"]])), [0, 1, 2]);
    // two identical prompts get different colours
    assert.deepEqual(assignColorSlots([], E([[0, "x"], [5, "x"]])), [0, 1]);
  });
});

describe("generation time estimate", () => {
  test("pace is the median gap between chunks, the first (loading) chunk left out", async () => {
    const { paceFromChunkTimes, formatDuration } = await import("../timeline_model.js");
    assert.equal(paceFromChunkTimes([]), null);
    assert.equal(paceFromChunkTimes([5000]), null);
    assert.equal(paceFromChunkTimes([60000, 62000, 64000, 70000]), 2);   // one slow gap does not skew it
    assert.equal(paceFromChunkTimes([0, 1000, 4000]), 2);
    assert.equal(formatDuration(81 * 0.5), "~41 s");
    assert.equal(formatDuration(81 * 8), "~11 min");
    assert.equal(formatDuration(7500), "~2 h 5 min");
  });
});
