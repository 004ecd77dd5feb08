"""Prompt timelines: parse, validate, and map times to chunk boundaries. Pure logic, no torch.

Text syntax (one entry per line, see docs/DESIGN.md; ``web/timeline_model.js`` implements the same):

    0s: a red circle bouncing on a dark background
    12.5s: a red circle sliding left on a dark background
    1m: a blue square orbiting on a striped background
    1:30: ...            (minutes:seconds)
    # comments and blank lines are ignored
    960f: ...            (video frames at the schedule's fps)

Prompts can only change at chunk boundaries: chunk 0 covers video frames 0-8 and every later chunk
12 frames (3 latent frames), so each time snaps to the nearest boundary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

from .config import DEFAULT_FPS, VAE_TEMPORAL_STRIDE

_TIME_RE = re.compile(
    r"^(?:(?P<sec>\d+(?:\.\d+)?)s?|(?P<min>\d+)m(?:(?P<msec>\d+(?:\.\d+)?)s)?|(?P<frames>\d+)f"
    r"|(?P<cmin>\d+):(?P<csec>[0-5]\d(?:\.\d+)?))$", re.IGNORECASE)
# "1:30: a prompt" is minutes:seconds, not a switch at 1 s with the prompt "30: a prompt"
_CLOCK_LINE_RE = re.compile(r"^(\d+:[0-5]\d(?:\.\d+)?)\s*:(.*)$")
MAX_LISTED_ERRORS = 10


class ScheduleError(ValueError):
    """A malformed schedule. ``errors`` lists (line, message) for every bad line (line 0: the whole
    schedule; for JSON the 1-based item); ``line`` is the first of them."""

    def __init__(self, errors: list[tuple[int, str]] | int, message: str | None = None):
        if isinstance(errors, int):
            errors = [(errors, message or "")]
        self.errors = sorted(errors, key=lambda e: e[0])
        self.line, self.message = self.errors[0]
        shown = self.errors[:MAX_LISTED_ERRORS]  # a file of garbage must not print one huge line
        text = "; ".join(f"line {ln}: {msg}" if ln else msg for ln, msg in shown)
        if len(self.errors) > len(shown):
            text += f"; and {len(self.errors) - len(shown)} more bad lines"
        super().__init__(text)


def parse_time(token: str, fps: int = DEFAULT_FPS) -> float:
    """'12', '12.5s', '1m30s', '2m' or '40f' (any case) -> seconds. Raises ValueError otherwise."""
    match = _TIME_RE.match(token.strip())
    if not match:
        raise ValueError(f"{token!r} is not a time; write seconds ('12.5s'), minutes ('1m30s') or frames ('40f')")
    if match["frames"] is not None:
        return int(match["frames"]) / fps
    if match["cmin"] is not None:
        return float(match["cmin"]) * 60.0 + float(match["csec"])
    if match["min"] is not None:
        return float(match["min"]) * 60.0 + float(match["msec"] or 0.0)
    return float(match["sec"])


def format_time(seconds: float) -> str:
    return f"{seconds:g}s"


def chunk_start_frame(chunk: int, chunk_frames: int = 3) -> int:
    """First video frame of a chunk: 0, then 1 + 4 * (first latent frame - 1)."""
    latent = chunk * chunk_frames
    return 0 if latent == 0 else 1 + VAE_TEMPORAL_STRIDE * (latent - 1)


def chunk_start_seconds(chunk: int, fps: int = DEFAULT_FPS, chunk_frames: int = 3) -> float:
    return chunk_start_frame(chunk, chunk_frames) / fps


def video_frames_for_chunks(num_chunks: int, chunk_frames: int = 3) -> int:
    return 0 if num_chunks <= 0 else chunk_start_frame(num_chunks, chunk_frames)


def chunks_for_duration(seconds: float, fps: int = DEFAULT_FPS, chunk_frames: int = 3,
                        continuing: bool = False) -> int:
    """The fewest chunks whose video lasts at least ``seconds``. A new stream's first chunk is 3
    frames shorter (the VAE's lone first frame); a continued stream's chunks are all full."""
    if not seconds >= 0 or not math.isfinite(seconds):
        raise ValueError(f"a video cannot last {seconds} s")
    frames = max(1, math.ceil(seconds * fps - 1e-9))
    per_chunk = VAE_TEMPORAL_STRIDE * chunk_frames
    if continuing:
        return math.ceil(frames / per_chunk)
    # n chunks of a new stream hold per_chunk * n - 3 frames (the VAE's lone first frame)
    return max(1, math.ceil((frames + VAE_TEMPORAL_STRIDE - 1) / per_chunk))


def snap_to_chunk(seconds: float, fps: int = DEFAULT_FPS, chunk_frames: int = 3) -> int:
    """Index of the chunk boundary nearest to ``seconds`` (ties go to the later chunk)."""
    frame = seconds * fps
    per_chunk = VAE_TEMPORAL_STRIDE * chunk_frames
    guess = max(0, int(round((frame + VAE_TEMPORAL_STRIDE - 1) / per_chunk)))
    candidates = [k for k in (guess - 1, guess, guess + 1) if k >= 0]
    return min(candidates, key=lambda k: (abs(chunk_start_frame(k, chunk_frames) - frame), -k))


@dataclass(frozen=True)
class ScheduleEntry:
    time: float  # seconds, as written
    prompt: str
    line: int  # 1-based source line (or JSON entry)
    chunk: int  # chunk at which the prompt takes over


@dataclass(frozen=True)
class PromptSchedule:
    entries: tuple[ScheduleEntry, ...]
    fps: int = DEFAULT_FPS
    chunk_frames: int = 3

    @property
    def prompts(self) -> list[str]:
        return [e.prompt for e in self.entries]

    def segment_starts(self, continuing: bool = False) -> list[tuple[int, str]]:
        """(start chunk, prompt) per entry, counted from the schedule's start. On a continued stream
        every chunk is a full 12 frames, so boundaries sit at multiples of 12 frames there."""
        if not continuing:
            return [(e.chunk, e.prompt) for e in self.entries]
        out: list[tuple[int, str]] = []
        per_chunk = VAE_TEMPORAL_STRIDE * self.chunk_frames
        for e in self.entries:
            chunk = int(round(e.time * self.fps / per_chunk))
            if out and chunk <= out[-1][0]:
                chunk = out[-1][0] + 1
            out.append((chunk, e.prompt))
        return out

    def prompt_at_chunk(self, chunk: int) -> str:
        current = self.entries[0].prompt
        for e in self.entries:
            if e.chunk <= chunk:
                current = e.prompt
        return current

    def to_text(self) -> str:
        return "".join(f"{format_time(e.time)}: {e.prompt}\n" for e in self.entries)

    def to_json(self) -> str:
        return json.dumps({"fps": self.fps, "prompts": [{"time": format_time(e.time), "prompt": e.prompt}
                                                        for e in self.entries]})

    def late_entries(self, seconds: float, continuing: bool = False) -> list[ScheduleEntry]:
        """The entries that would start after a video of ``seconds`` ends (never the first one)."""
        last_chunk = chunks_for_duration(seconds, self.fps, self.chunk_frames, continuing) - 1
        return [e for i, (e, (chunk, _)) in enumerate(zip(self.entries, self.segment_starts(continuing)))
                if i > 0 and chunk > last_chunk]

    def without(self, entries: list[ScheduleEntry]) -> "PromptSchedule":
        """This schedule less ``entries`` (e.g. ``late_entries``: a video shorter than the timeline)."""
        drop = {id(e) for e in entries}
        return dataclasses.replace(self, entries=tuple(e for e in self.entries if id(e) not in drop))

    def check_duration(self, seconds: float, continuing: bool = False) -> None:
        """Raise ScheduleError if a prompt starts after a video of ``seconds`` ends."""
        last_chunk = chunks_for_duration(seconds, self.fps, self.chunk_frames, continuing) - 1
        for e, (chunk, _) in zip(self.entries, self.segment_starts(continuing)):
            if chunk > last_chunk:
                raise ScheduleError(e.line, f"this prompt starts at {format_time(e.time)}, after the video ends "
                                            f"({seconds:g} s); lengthen the video or move the prompt earlier")


def _build(raw: list[tuple[int, str | float, str]], errors: list[tuple[int, str]], fps: int, chunk_frames: int,
           what: str = "line", frame_fps: float | None = None) -> PromptSchedule:
    """raw: (line, time token or seconds, prompt) of the lines that parsed; errors so far. ``fps`` is
    the video's (chunks follow it); ``frame_fps`` converts frame-count times (default: the video's)."""
    entries: list[ScheduleEntry] = []
    for line, token, prompt in raw:
        try:
            seconds = float(token) if isinstance(token, (int, float)) else parse_time(token, frame_fps or fps)
            if seconds < 0 or not math.isfinite(seconds):
                raise ValueError(f"{token!r} is not a time")
        except ValueError as err:
            errors.append((line, str(err)))
            continue
        prompt = prompt.strip()
        if not prompt:
            errors.append((line, "the prompt is empty"))
            continue
        chunk = snap_to_chunk(seconds, fps, chunk_frames)
        if not entries:
            if seconds != 0:
                errors.append((line, f"the first prompt must start at 0s (it starts at {format_time(seconds)}); "
                                     "every moment of the video needs a prompt"))
        elif seconds <= entries[-1].time:
            errors.append((line, f"times must increase: {format_time(seconds)} is not after "
                                 f"{format_time(entries[-1].time)} ({what} {entries[-1].line})"))
        elif chunk == entries[-1].chunk:
            step = 4 * chunk_frames / fps
            errors.append((line, f"{format_time(seconds)} falls on the same chunk as {what} {entries[-1].line} "
                                 f"({format_time(entries[-1].time)}); prompts can change every {step:g} s, "
                                 "so move this one later"))
        entries.append(ScheduleEntry(seconds, prompt, line, chunk))
    if not raw and not errors:
        errors.append((0, "the schedule is empty; write at least one line like '0s: a red circle ...'"))
    if errors:
        raise ScheduleError(errors)
    return PromptSchedule(tuple(entries), fps, chunk_frames)


def parse_schedule_text(text: str, fps: int = DEFAULT_FPS, chunk_frames: int = 3) -> PromptSchedule:
    raw, errors = [], []
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if ":" not in stripped:
            errors.append((number, f"expected 'TIME: PROMPT', got {stripped[:60]!r}"))
            continue
        clock = _CLOCK_LINE_RE.match(stripped)
        token, prompt = clock.groups() if clock else stripped.split(":", 1)
        raw.append((number, token, prompt))
    return _build(raw, errors, fps, chunk_frames)


def parse_schedule_json(text: str, fps: int = DEFAULT_FPS, chunk_frames: int = 3) -> PromptSchedule:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScheduleError(err.lineno, f"invalid JSON: {err.msg}") from None
    frame_fps = None
    if isinstance(data, dict):
        # The file's fps only says what its "48f" times mean; seconds stay seconds of the video, whose
        # chunks are at the video's fps (snapping at the file's fps moved a 12 s switch to 17.8 s).
        frame_fps = data.get("fps", fps)
        if not isinstance(frame_fps, (int, float)) or isinstance(frame_fps, bool) or not 0 < frame_fps < 1e6:
            raise ScheduleError(0, '"fps" must be a positive number')
        data = data.get("prompts")
    if not isinstance(data, list):
        raise ScheduleError(0, 'JSON schedules are a list of {"time": ..., "prompt": ...} '
                               'or {"fps": 16, "prompts": [...]}')
    raw, errors = [], []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            errors.append((i, 'expected {"time": ..., "prompt": ...}'))
            continue
        time = item.get("time")
        if isinstance(time, bool) or not isinstance(time, (int, float, str)):
            errors.append((i, f"invalid time {json.dumps(time) if 'time' in item else 'missing'}"))
            continue
        if not isinstance(item.get("prompt"), str):
            errors.append((i, "missing or empty prompt"))
            continue
        raw.append((i, time, item["prompt"]))
    return _build(raw, errors, fps, chunk_frames, what="item", frame_fps=frame_fps)


def parse_schedule(text: str, fps: int = DEFAULT_FPS, chunk_frames: int = 3) -> PromptSchedule:
    """Parse the text syntax, or JSON when the text starts with '[' or '{'."""
    if text.lstrip().startswith(("[", "{")):
        return parse_schedule_json(text, fps, chunk_frames)
    return parse_schedule_text(text, fps, chunk_frames)
