"""Prompt schedules: the cases shared with the JS timeline, plus the Python-only API."""

import json
from pathlib import Path

import pytest

from videossm_core.schedule import (ScheduleError, chunk_start_seconds, chunks_for_duration, parse_schedule,
                                    parse_time, snap_to_chunk)

CASES = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "schedules.json").read_text())


@pytest.mark.parametrize("case", CASES["parse"], ids=[c["name"] for c in CASES["parse"]])
def test_shared_parse_cases(case):
    fps = case.get("fps", 16)
    if case["errors"]:
        with pytest.raises(ScheduleError) as info:
            parse_schedule(case["text"], fps=fps)
        assert [line for line, _ in info.value.errors] == case["errors"]
        messages = dict(info.value.errors)
        for line, needles in case.get("mentions", {}).items():
            for needle in needles:
                assert needle in messages[int(line)], messages[int(line)]
        for line in case["errors"]:
            if line:
                assert f"line {line}:" in str(info.value)
    else:
        schedule = parse_schedule(case["text"], fps=fps)
        got = [(e.time, e.prompt, e.line, e.chunk) for e in schedule.entries]
        want = [(pytest.approx(e["time"], abs=1e-9), e["prompt"], e["line"], e["chunk"]) for e in case["entries"]]
        assert got == want


@pytest.mark.parametrize("case", CASES["snap"])
def test_shared_snap_cases(case):
    chunk = snap_to_chunk(case["time"], case["fps"])
    assert chunk == case["chunk"]
    assert chunk_start_seconds(chunk, case["fps"]) == pytest.approx(case["seconds"])


@pytest.mark.parametrize("case", CASES["chunk_count"])
def test_shared_chunk_count_cases(case):
    assert chunks_for_duration(case["duration"], case["fps"]) == case["count"]


def test_sixty_seconds_is_81_chunks_and_round_trips():
    schedule = parse_schedule("0s: a\n20s: b\n40s: c\n")
    assert chunks_for_duration(60) == 81
    assert [e.chunk for e in schedule.entries] == [0, 27, 54]  # 40 s = frame 640, nearest boundary 645
    assert parse_schedule(schedule.to_text()).entries == schedule.entries
    assert parse_schedule(schedule.to_json()).entries == schedule.entries
    with pytest.raises(ScheduleError, match="after the video ends"):
        schedule.check_duration(30)


def test_continued_streams_count_full_chunks():
    schedule = parse_schedule("0s: a\n3s: b\n")
    assert schedule.segment_starts() == [(0, "a"), (4, "b")]
    assert schedule.segment_starts(continuing=True) == [(0, "a"), (4, "b")]
    assert chunks_for_duration(3.0, continuing=True) == 4 and chunks_for_duration(3.0) == 5


def test_time_forms():
    assert parse_time("1m30s") == 90 and parse_time("2M") == 120 and parse_time("40f") == 2.5
    for bad in ("1.5m", "-3", "1m30", "abc", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_clock_times_and_a_capped_error_list():
    assert parse_time("1:30") == 90 and parse_time("0:05.5") == 5.5
    with pytest.raises(ValueError):
        parse_time("1:75")
    with pytest.raises(ScheduleError) as info:
        parse_schedule("0s: a\n" + "banana\n" * 1999)
    assert len(info.value.errors) == 1999  # every bad line is still available to callers
    message = str(info.value)
    assert message.count("line ") == 10 and message.endswith("and 1989 more bad lines") and len(message) < 1000


def test_json_fps_does_not_move_times_given_in_seconds():
    schedule = parse_schedule('{"fps": 24, "prompts": [{"time": 0, "prompt": "a"}, {"time": "12s", "prompt": "b"}]}')
    assert schedule.fps == 16 and schedule.entries[1].chunk == snap_to_chunk(12.0)  # 12 s, not 17.8 s


def test_late_entries_are_the_prompts_a_shorter_video_never_reaches():
    schedule = parse_schedule("0s: a\n5s: b\n20s: c\n40s: d\n")
    late = schedule.late_entries(10.0)
    assert [e.prompt for e in late] == ["c", "d"]
    kept = schedule.without(late)
    assert kept.prompts == ["a", "b"]
    kept.check_duration(10.0)  # what is left fits
    assert schedule.late_entries(60.0) == []
    assert parse_schedule("0s: a\n").late_entries(0.5) == []  # the first prompt always starts
