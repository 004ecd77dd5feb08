"""A procedural "video world": one coloured shape moving over a simple background.

The shipped demo model is trained on this world, so long-video generation with timed prompt switches
can be shown in minutes on a CPU, and quality can be *measured* without a learned judge: every prompt
names a colour, a shape, a motion and a background that ``measure_frame`` reads back from pixels.

Prompt grammar: ``"a {colour} {shape} {motion} on a {background} background"``, e.g.
``"a red circle bouncing on a dark background"``.

Design choices that matter to the measurement and to the generator:

* Backgrounds are achromatic and constant along each row (vertical gradient, horizontal stripes), so a
  per-row median models them exactly and no foreground colour can be mistaken for them.
* The world wraps horizontally (a torus): a sliding object leaving on the left re-enters on the right
  while still being drawn whole (split across the edge), so it never vanishes and its area stays put.
  ``measure_frame`` undoes the split before measuring. Every other motion keeps the object fully on
  screen inside a box.
* Shapes are axis-aligned (never rotated): a square rotated by 45 degrees would be a diamond.
* Hidden state, opt-in, for the memory benchmark: a *marking* (a band across the object's middle, in
  one of ``MARKINGS``, never the body colour) that no prompt names, fixed per prompt within a video,
  and a world wider than the frame (``world_width``) that a sliding object leaves and re-enters.
  ``sample_memory_episode`` chains scenes so that a marking is out of view for 4-8 s, longer than the
  generator's 3 s local window, and must then be recalled; ``measure_frame`` reads the marking back.
* A clip's ``end_state`` is the state of the *next* frame, so continuing from it is seamless, and a
  prompt change keeps the object where it is (and its size); only the motion's own parameters, the
  colour, the shape and (if it changes) the background are new.

Only numpy is needed.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# ------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------

# Saturated reference colours, far apart in Lab so they survive lossy VAE/generator round trips.
# White is the only unsaturated one; it stays >= 60 levels above the brightest background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 190, 50),
    "cyan": (30, 205, 215),
    "blue": (40, 80, 235),
    "purple": (150, 50, 215),
    "white": (250, 250, 250),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring")
MOTIONS: tuple[str, ...] = (
    "bouncing", "sliding left", "sliding right", "orbiting", "zigzagging", "floating", "resting")
BACKGROUNDS: tuple[str, ...] = ("dark", "light", "gradient", "striped")

# Every shape fits inside +-EXTENT * radius of the object's position (the triangle's apex is the
# furthest point); the motions keep the position EXTENT * radius away from the walls.
EXTENT = 1.15
# The object's radius, drawn per clip, as a fraction of the frame's smaller side.
RADIUS_RANGE = (0.15, 0.2)
_RING_INNER = 0.5  # inner radius of the ring, as a fraction of the outer one
_SUPERSAMPLE = 4  # coverage samples per pixel and axis (anti-aliasing)
_FG_THRESHOLD = 36.0  # max-channel difference from the background model that counts as foreground

# Hidden markings: a horizontal band through the object's centre (pixel rows within MARK_BAND * radius
# of its y, intersected with the shape) painted in a marking colour that no prompt names. Far apart in
# Lab from each other; a scene's marking is never its body colour.
MARKINGS: tuple[str, ...] = ("orange", "green", "purple", "white")
MARK_BAND = 0.3


def marking_candidates(colour: str) -> tuple[str, ...]:
    """The markings an object of body colour ``colour`` may carry (drawn uniformly)."""
    _check_word("colour", colour, tuple(COLOURS))
    return tuple(m for m in MARKINGS if m != colour)


def _check_word(kind: str, word: str, known: Sequence[str]) -> None:
    if word not in known:
        raise ValueError(f"unknown {kind} {word!r}; known {kind}s are {list(known)}")


@dataclass(frozen=True)
class SceneSpec:
    """What one prompt asks for. ``prompt()`` and ``parse_prompt`` are inverses."""

    colour: str
    shape: str
    motion: str
    background: str

    def __post_init__(self):
        _check_word("colour", self.colour, tuple(COLOURS))
        _check_word("shape", self.shape, SHAPES)
        _check_word("motion", self.motion, MOTIONS)
        _check_word("background", self.background, BACKGROUNDS)

    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {self.motion} on a {self.background} background"

    def replace(self, **changes) -> "SceneSpec":
        fields = {"colour": self.colour, "shape": self.shape, "motion": self.motion,
                  "background": self.background}
        fields.update(changes)
        return SceneSpec(**fields)


_GRAMMAR = "a {colour} {shape} {motion} on a {background} background"


def parse_prompt(text: str) -> SceneSpec:
    """Parse ``"a {colour} {shape} {motion} on a {background} background"``.

    Case, repeated whitespace, a trailing full stop and "an"/"the" for "a" are tolerated. An unknown
    colour/shape/motion/background raises ValueError naming the word; a sentence that does not follow
    the grammar raises ValueError quoting the grammar.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    words = text.strip().rstrip(".!").lower().replace(",", " ").split()

    def bad(reason: str) -> ValueError:
        return ValueError(f"cannot parse prompt {text!r}: {reason}; expected {_GRAMMAR!r}")

    articles = ("a", "an", "the")
    if len(words) < 7 or words[0] not in articles:
        raise bad("it must start with 'a' and have at least 7 words")
    if words[-1] != "background":
        raise bad("it must end with 'background'")
    if "on" not in words[3:]:
        raise bad("missing 'on'")
    on = len(words) - 1 - words[::-1].index("on")  # the last "on": motions never contain it
    if on + 4 != len(words) or words[on + 1] not in articles:
        raise bad("expected 'on a {background} background' at the end")
    colour, shape, motion, background = words[1], words[2], " ".join(words[3:on]), words[on + 2]
    if not motion:
        raise bad("missing motion")
    return SceneSpec(colour, shape, motion, background)


def all_specs() -> list[SceneSpec]:
    """Every scene the grammar can express, in a fixed order."""
    return [SceneSpec(c, s, m, b) for c in COLOURS for s in SHAPES for m in MOTIONS for b in BACKGROUNDS]


def all_prompts() -> list[str]:
    return [spec.prompt() for spec in all_specs()]


def prompt_words() -> list[str]:
    """Every word that appears in some prompt (for word-level tokenizers), in first-seen order."""
    words: list[str] = []
    for w in ["a", "on", "background", *COLOURS, *SHAPES, *" ".join(MOTIONS).split(), *BACKGROUNDS]:
        if w not in words:
            words.append(w)
    return words


def is_valid_frame_count(num_frames: int) -> bool:
    """Wan's VAE rule: 1 + 4k video frames (the first latent frame holds one video frame)."""
    return num_frames >= 1 and (num_frames - 1) % 4 == 0


# ------------------------------------------------------------------------------------------------
# World state and motions
# ------------------------------------------------------------------------------------------------


@dataclass
class WorldState:
    """Everything needed to render the next frame and to continue a clip.

    Positions/velocities are in pixels (x right, y down, pixel centres at +0.5) of a ``height`` x
    ``width`` frame; ``x`` lives on a horizontal torus [0, width).
    """

    height: int
    width: int
    spec: SceneSpec
    x: float
    y: float
    vx: float
    vy: float
    radius: float
    speed: float  # the object's characteristic speed in pixels per frame
    colour_jitter: tuple[int, int, int]
    motion_params: dict[str, Any] = field(default_factory=dict)
    background_params: dict[str, Any] = field(default_factory=dict)
    frame: int = 0  # frames rendered so far along the whole (long) clip
    # prompt -> marking (the hidden band's colour name); None: objects carry no marking.
    markings: dict[str, str] | None = None
    # Width of the horizontal torus x lives on; None: the frame width. When wider, the frame shows
    # x in [0, width) and a sliding object travels hidden through the rest.
    world_width: float | None = None

    def copy(self) -> "WorldState":
        return copy.deepcopy(self)

    @property
    def torus(self) -> float:
        """The width of the horizontal torus that x lives on."""
        return self.width if self.world_width is None else self.world_width

    @property
    def marking(self) -> str | None:
        """The current prompt's marking (None in a world without markings)."""
        return None if self.markings is None else self.markings.get(self.spec.prompt())

    def fully_visible(self) -> bool:
        """The whole object (so its whole marking band) is inside the frame."""
        lo_x, hi_x, _, _ = self.box()
        return lo_x - 1e-9 <= self.x <= hi_x + 1e-9

    @property
    def extent(self) -> float:
        return EXTENT * self.radius

    def box(self) -> tuple[float, float, float, float]:
        """(lo_x, hi_x, lo_y, hi_y): where the position may be with the shape fully on screen."""
        e = self.extent
        return e, self.width - e, e, self.height - e


def _as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _background_params(name: str, height: int, rng: np.random.Generator) -> dict[str, Any]:
    """Random but well-defined looks. All greys carry a small tint (|tint| <= 6) so they stay
    achromatic; levels are chosen so that every foreground colour differs by >= 60 in some channel."""

    def grey(lo: float, hi: float) -> list[float]:
        level = rng.uniform(lo, hi)
        return [float(level + t) for t in rng.uniform(-6, 6, 3)]

    if name == "dark":
        return {"colour": grey(8, 40)}
    if name == "light":
        return {"colour": grey(140, 175)}
    if name == "gradient":
        top, bottom = grey(10, 40), grey(110, 150)
        if rng.random() < 0.5:
            top, bottom = bottom, top
        return {"top": top, "bottom": bottom}
    if name == "striped":
        return {"a": grey(15, 45), "b": grey(85, 125),
                "period": float(max(4.0, rng.uniform(0.12, 0.25) * height)),
                "phase": float(rng.uniform(0, 1))}
    raise ValueError(f"unknown background {name!r}")


def _background_image(name: str, params: dict[str, Any], height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3], constant along each row."""
    ss = _SUPERSAMPLE
    ys = (np.arange(height * ss, dtype=np.float64) + 0.5) / ss  # supersampled row positions
    if name in ("dark", "light"):
        rows = np.tile(np.asarray(params["colour"]), (height * ss, 1))
    elif name == "gradient":
        t = (ys / height)[:, None]
        rows = (1 - t) * np.asarray(params["top"]) + t * np.asarray(params["bottom"])
    elif name == "striped":
        period = params["period"]
        band = np.floor(ys / (period / 2) + 2 * params["phase"]).astype(np.int64) % 2
        rows = np.where(band[:, None] == 0, np.asarray(params["a"]), np.asarray(params["b"]))
    else:
        raise ValueError(f"unknown background {name!r}")
    rows = rows.reshape(height, ss, 3).mean(1)  # anti-aliased stripe edges
    return np.broadcast_to(rows[:, None, :], (height, width, 3)).astype(np.float32)


_WALLED = ("bouncing", "orbiting", "zigzagging", "floating", "resting")


def _init_motion(st: WorldState, rng: np.random.Generator, fresh: bool) -> None:
    """Set ``st.motion_params`` (and velocity) for ``st.spec.motion`` starting at the current position.

    A fresh start may also pick the position; a continued one never moves the object. If a walled
    motion starts while the object straddles the left/right edge (after sliding), it first "settles"
    into the box along the shorter way round the torus.
    """
    motion, s = st.spec.motion, st.speed
    lo_x, hi_x, lo_y, hi_y = st.box()
    size = min(st.height, st.width)
    p: dict[str, Any] = {}
    st.motion_params = p
    if fresh:
        st.x = float(rng.uniform(lo_x, hi_x))
        st.y = float(rng.uniform(lo_y, hi_y))
        st.vx = st.vy = 0.0

    if motion in ("sliding left", "sliding right"):
        st.vx, st.vy = (-s if motion == "sliding left" else s), 0.0
        return

    # Walled motions: bring a straddling object inside the box first.
    anchor_x = st.x
    if not lo_x <= st.x <= hi_x:
        right, left = (lo_x - st.x) % st.torus, (st.x - hi_x) % st.torus
        anchor_x = lo_x if right <= left else hi_x
        p["settle_dir"] = 1.0 if right <= left else -1.0
        p["settle_left"] = float(min(right, left))
    x, y = anchor_x, st.y  # where the motion proper starts

    if motion == "bouncing":
        h = rng.uniform(0.3, 0.7) * (hi_y - lo_y)  # apex height above the floor
        period = rng.uniform(24, 40)  # frames per bounce (1.5-2.5 s at 16 fps)
        g = 8 * h / period**2
        vb = math.sqrt(2 * g * h)
        p.update(g=g, vb=vb)
        if fresh:
            st.y = y = hi_y - rng.uniform(0, 1) * h
            st.vy = _sign(rng) * math.sqrt(max(vb**2 - 2 * g * (hi_y - y), 0.0))
            st.vx = _sign(rng) * rng.uniform(0.4, 1.0) * s
        else:  # keep the velocity the object has, within what the bounce allows
            st.vx = float(np.clip(st.vx, -2 * s, 2 * s))
            if abs(st.vx) < 0.2 * s:
                st.vx = _sign(rng) * rng.uniform(0.4, 1.0) * s
            st.vy = float(np.clip(st.vy, -vb, vb))
    elif motion == "orbiting":
        cx = st.width / 2 + rng.uniform(-0.08, 0.08) * st.width
        cy = st.height / 2 + rng.uniform(-0.08, 0.08) * st.height
        rho_max = max(1.0, min(cx - lo_x, hi_x - cx, cy - lo_y, hi_y - cy))
        rho_target = rng.uniform(0.55, 0.95) * rho_max
        if fresh:
            theta, rho = rng.uniform(0, 2 * math.pi), rho_target
            st.x, st.y = cx + rho * math.cos(theta), cy + rho * math.sin(theta)
        else:  # start on a circle through the current point; the radius relaxes to its target
            rho, theta = math.hypot(x - cx, y - cy), math.atan2(y - cy, x - cx)
        p.update(cx=cx, cy=cy, rho=rho, rho_target=rho_target, theta=theta, dir=_sign(rng))
    elif motion == "zigzagging":
        amp = min(rng.uniform(0.12, 0.25) * size, (hi_y - lo_y) / 2)
        if fresh:
            base = rng.uniform(lo_y + amp, hi_y - amp)
            st.y = y = base + rng.uniform(-amp, amp)
        else:  # the band [base - amp, base + amp] always contains the current y
            base = float(np.clip(y, lo_y + amp, hi_y - amp))
        sx = math.copysign(1.0, st.vx) if abs(st.vx) > 0.1 else _sign(rng)
        sy = math.copysign(1.0, st.vy) if abs(st.vy) > 0.1 else _sign(rng)
        p.update(base=base, amp=amp)
        st.vx, st.vy = sx * s, sy * s * rng.uniform(1.2, 2.0)
    elif motion == "floating":
        amp_y = min(rng.uniform(0.05, 0.1) * size, (hi_y - lo_y) / 2)
        amp_x = min(rng.uniform(0.02, 0.06) * size, (hi_x - lo_x) / 2)
        omega = 2 * math.pi / rng.uniform(32, 64)
        p.update(omega_y=omega, omega_x=omega * rng.uniform(0.4, 0.6))
        for axis, pos, lo, hi, amp in (("x", x, lo_x, hi_x, amp_x), ("y", y, lo_y, hi_y, amp_y)):
            base = float(np.clip(pos, lo + amp, hi - amp))  # chosen so pos lies on the oscillation
            phase = math.asin(float(np.clip((pos - base) / amp, -1, 1))) if amp > 0 else 0.0
            if rng.random() < 0.5:
                phase = math.pi - phase  # same position, going the other way
            p.update({f"base_{axis}": base, f"amp_{axis}": amp, f"phase_{axis}": phase})
    elif motion == "resting":
        st.vx = st.vy = 0.0
    else:  # pragma: no cover - SceneSpec validates motions
        raise ValueError(f"unknown motion {motion!r}")


def _step(st: WorldState) -> None:
    """Advance one frame."""
    st.frame += 1
    p, motion = st.motion_params, st.spec.motion
    lo_x, hi_x, lo_y, hi_y = st.box()
    x0, y0 = st.x, st.y

    if motion in ("sliding left", "sliding right"):
        st.x = (st.x + st.vx) % st.torus
        return
    if p.get("settle_left", 0.0) > 0:  # still settling into the box after sliding
        move = min(max(st.speed, 0.5), p["settle_left"])
        p["settle_left"] -= move
        st.x = (st.x + p["settle_dir"] * move) % st.torus
        if p["settle_left"] <= 1e-9:
            st.x = lo_x if p["settle_dir"] > 0 else hi_x
        return

    if motion == "bouncing":
        st.vy += p["g"]
        st.x += st.vx
        st.y += st.vy
        if st.y > hi_y:  # elastic floor: rebound with the speed that reaches the apex again
            st.y, st.vy = 2 * hi_y - st.y, -p["vb"]
        if st.y < lo_y:
            st.y, st.vy = 2 * lo_y - st.y, abs(st.vy)
        st.x, st.vx = _reflect(st.x, st.vx, lo_x, hi_x)
        st.y = float(np.clip(st.y, lo_y, hi_y))
    elif motion == "zigzagging":
        st.x += st.vx
        st.y += st.vy
        st.x, st.vx = _reflect(st.x, st.vx, lo_x, hi_x)
        st.y, st.vy = _reflect(st.y, st.vy, p["base"] - p["amp"], p["base"] + p["amp"])
    elif motion == "orbiting":
        p["rho"] += (p["rho_target"] - p["rho"]) * 0.08
        p["theta"] += p["dir"] * min(st.speed / max(p["rho"], 1.0), 0.3)
        st.x = float(np.clip(p["cx"] + p["rho"] * math.cos(p["theta"]), lo_x, hi_x))
        st.y = float(np.clip(p["cy"] + p["rho"] * math.sin(p["theta"]), lo_y, hi_y))
        st.vx, st.vy = st.x - x0, st.y - y0
    elif motion == "floating":
        p["phase_x"] += p["omega_x"]
        p["phase_y"] += p["omega_y"]
        st.x = p["base_x"] + p["amp_x"] * math.sin(p["phase_x"])
        st.y = p["base_y"] + p["amp_y"] * math.sin(p["phase_y"])
        st.vx, st.vy = st.x - x0, st.y - y0


def _reflect(pos: float, vel: float, lo: float, hi: float) -> tuple[float, float]:
    if pos < lo:
        pos, vel = 2 * lo - pos, abs(vel)
    elif pos > hi:
        pos, vel = 2 * hi - pos, -abs(vel)
    return float(np.clip(pos, lo, hi)), vel


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean inside test for a shape centred on (0, 0) with size ``r``; y points down."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (_RING_INNER * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.1 * r
    if shape == "triangle":  # equilateral, apex up, centroid at the origin, circumradius EXTENT * r
        big = EXTENT * r
        return (dy <= big / 2) & (np.abs(dx) <= (dy + big) / math.sqrt(3))
    raise ValueError(f"unknown shape {shape!r}")


def _object_alpha(st: WorldState) -> np.ndarray:
    """Anti-aliased coverage [H, W] of the object: drawn on the horizontal torus when the world is the
    frame's width, else cut by the frame's edges (the frame shows x in [0, width) of a wider world)."""
    h, w, r = st.height, st.width, st.radius
    alpha = np.zeros((h, w), np.float32)
    e = st.extent + 1
    if st.world_width is not None and st.world_width > w:  # the copy of the object nearest the frame
        ww = st.world_width
        x_obj = min((st.x + k * ww for k in (-1, 0, 1)), key=lambda x: abs(x - w / 2))
        if x_obj + e <= 0 or x_obj - e >= w:
            return alpha
    else:
        x_obj = st.x
    x0, x1 = int(math.floor(x_obj - e)), int(math.ceil(x_obj + e))
    y0, y1 = max(0, int(math.floor(st.y - e))), min(h, int(math.ceil(st.y + e)))
    if x1 - x0 > w:
        raise ValueError(f"object too large for a {w}-pixel-wide frame")
    if y1 <= y0:
        return alpha
    ss = _SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss - x_obj
    ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss - st.y
    inside = _inside(st.spec.shape, xs[None, :], ys[:, None], r).astype(np.float32)
    patch = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean((1, 3))
    if x_obj is not st.x:  # wider world: keep only the columns inside the frame
        cols = np.arange(x0, x1)
        keep = (cols >= 0) & (cols < w)
        alpha[y0:y1, cols[keep]] = patch[:, keep]
    else:
        alpha[y0:y1, np.arange(x0, x1) % w] = patch  # columns wrap around the torus
    return alpha


def _band_rows(st: WorldState) -> np.ndarray:
    """Boolean [H]: the pixel rows of the marking band (row centres within MARK_BAND * radius of y)."""
    return np.abs(np.arange(st.height) + 0.5 - st.y) <= MARK_BAND * st.radius


def _object_colour(st: WorldState, name: str | None = None) -> np.ndarray:
    base = np.asarray(COLOURS[st.spec.colour if name is None else name], np.float32)
    return np.clip(base + np.asarray(st.colour_jitter, np.float32), 0, 255)


def _render_frames(st: WorldState, num_frames: int) -> np.ndarray:
    """Render ``num_frames`` frames from ``st`` (advanced in place); no randomness."""
    height, width = st.height, st.width
    background = _background_image(st.spec.background, st.background_params, height, width)
    colour = _object_colour(st)
    marking = st.marking
    band = None if marking is None else _object_colour(st, marking)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        alpha = _object_alpha(st)[..., None]
        if band is None:
            frames[t] = np.rint(background + alpha * (colour - background)).astype(np.uint8)
        else:
            rows = np.where(_band_rows(st)[:, None, None], band, colour)  # [H, 1, 3]
            frames[t] = np.rint(background + alpha * (rows - background)).astype(np.uint8)
        _step(st)
    return frames


def _begin(spec: SceneSpec, height: int, width: int, rng: np.random.Generator,
           start_state: WorldState | None, markings: bool = False,
           world_width: float | None = None) -> WorldState:
    """The state for a clip's first frame: fresh, or continued from ``start_state`` (not modified).

    ``markings`` turns markings on (a state that has them keeps them); a prompt without a marking yet
    draws one, after every other random number. ``world_width`` (if given) sets the world's width.
    """
    st = _begin_scene(spec, height, width, rng, start_state)
    if world_width is not None:
        if world_width < width:
            raise ValueError(f"world_width must be >= the frame width {width}, got {world_width}")
        st.world_width = float(world_width)
    if markings and st.markings is None:
        st.markings = {}
    if st.markings is not None and spec.prompt() not in st.markings:
        st.markings[spec.prompt()] = str(rng.choice(marking_candidates(spec.colour)))
    return st


def _begin_scene(spec: SceneSpec, height: int, width: int, rng: np.random.Generator,
                 start_state: WorldState | None) -> WorldState:
    if height < 8 or width < 8:
        raise ValueError(f"frames must be at least 8x8 pixels, got {height}x{width}")
    if start_state is None:
        size = min(height, width)
        st = WorldState(
            height=height, width=width, spec=spec, x=0.0, y=0.0, vx=0.0, vy=0.0,
            radius=float(rng.uniform(*RADIUS_RANGE) * size),
            speed=float(rng.uniform(0.012, 0.025) * size),
            colour_jitter=tuple(int(j) for j in rng.integers(-10, 11, 3)))
        st.background_params = _background_params(spec.background, height, rng)
        _init_motion(st, rng, fresh=True)
        return st
    if (start_state.height, start_state.width) != (height, width):
        raise ValueError(
            f"start_state was rendered at {start_state.height}x{start_state.width}, not {height}x{width}")
    st = start_state.copy()
    old, st.spec = st.spec, spec
    if spec.background != old.background:
        st.background_params = _background_params(spec.background, height, rng)
    if spec.motion != old.motion:  # an unchanged motion just carries on (seamless continuation)
        _init_motion(st, rng, fresh=False)
    return st


def render_clip(spec: SceneSpec | str, num_frames: int, height: int = 64, width: int = 64,
                seed: int | np.random.Generator | None = 0, *, rng: np.random.Generator | None = None,
                start_state: WorldState | None = None, markings: bool = False,
                world_width: float | None = None) -> tuple[np.ndarray, WorldState]:
    """Render ``num_frames`` frames of one scene: ``(uint8 [T, H, W, 3], end_state)``.

    ``markings=True`` paints each prompt's hidden marking band (see ``MARKINGS``; a continued state
    that has markings keeps them); ``world_width`` makes the world wider than the frame.

    Deterministic for a given ``seed`` (an int or a numpy Generator; ``rng`` is an alias). With
    ``start_state`` (a previous clip's ``end_state``) the object continues where it was; the random
    numbers are only used for what changes. Any ``num_frames >= 1`` works (the Wan VAE wants 1 + 4k
    for whole clips, see ``is_valid_frame_count``).
    """
    if rng is not None and seed not in (None, 0):
        raise ValueError("pass either seed or rng, not both")
    gen = _as_rng(rng if rng is not None else seed)
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    st = _begin(spec, height, width, gen, start_state, markings, world_width)
    return _render_frames(st, num_frames), st


def render_long_clip(segments: Sequence[tuple[SceneSpec | str, int]], height: int = 64, width: int = 64,
                     seed: int | np.random.Generator | None = 0, *, rng: np.random.Generator | None = None,
                     start_state: WorldState | None = None, markings: bool = False,
                     world_width: float | None = None) -> tuple[np.ndarray, WorldState]:
    """Render consecutive segments ``[(spec, num_frames), ...]`` as one continuous clip.

    At each boundary the prompt may change colour, shape, motion and background while the object
    continues from where it was. Segment ``i`` starts at frame ``sum(n for _, n in segments[:i])``.
    """
    if rng is not None and seed not in (None, 0):
        raise ValueError("pass either seed or rng, not both")
    if not segments:
        raise ValueError("segments must not be empty")
    gen = _as_rng(rng if rng is not None else seed)
    state, parts = start_state, []
    for spec, n in segments:
        frames, state = render_clip(spec, int(n), height, width, rng=gen, start_state=state,
                                    markings=markings, world_width=world_width)
        parts.append(frames)
    return np.concatenate(parts), state


# ------------------------------------------------------------------------------------------------
# Dataset helpers
# ------------------------------------------------------------------------------------------------


def sample_spec(rng: int | np.random.Generator | None) -> SceneSpec:
    """A uniformly random scene."""
    gen = _as_rng(rng)
    return SceneSpec(colour=str(gen.choice(list(COLOURS))), shape=str(gen.choice(SHAPES)),
                     motion=str(gen.choice(MOTIONS)), background=str(gen.choice(BACKGROUNDS)))


def _mutate_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Change each attribute with probability 1/2, and at least one."""
    options = {"colour": list(COLOURS), "shape": SHAPES, "motion": MOTIONS, "background": BACKGROUNDS}
    names = list(options)
    change = [rng.random() < 0.5 for _ in names]
    if not any(change):
        change[int(rng.integers(len(names)))] = True
    updates = {}
    for name, flag in zip(names, change):
        if flag:
            current = getattr(spec, name)
            updates[name] = str(rng.choice([o for o in options[name] if o != current]))
    return spec.replace(**updates)


def _check_clip_frames(num_frames: int) -> None:
    if not is_valid_frame_count(num_frames):
        raise ValueError(f"num_frames must be 1 + 4k (Wan VAE rule), got {num_frames}")


def sample_clip(rng: int | np.random.Generator | None, num_frames: int, height: int = 64,
                width: int = 64, markings: bool = False) -> tuple[np.ndarray, str]:
    """A random single-prompt clip: ``(uint8 [T, H, W, 3], prompt)``. ``num_frames`` must be 1 + 4k.

    ``markings=True``: the same scene, with a marking drawn for it (for training on marked objects)."""
    _check_clip_frames(num_frames)
    gen = _as_rng(rng)
    spec = sample_spec(gen)
    frames, _ = render_clip(spec, num_frames, height, width, rng=gen, markings=markings)
    return frames, spec.prompt()


def sample_switch_clip(rng: int | np.random.Generator | None, num_frames: int, height: int = 64,
                       width: int = 64, num_switches: int = 1,
                       latent_align: int = 1, markings: bool = False) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A random clip whose prompt changes ``num_switches`` times: ``(frames, [(start_frame, prompt), ...])``.

    The first entry starts at frame 0. Switches happen where a latent frame starts (video frame
    ``4 L - 3`` for latent frame ``L >= 1``), at latent frames that are multiples of ``latent_align``;
    ``latent_align=3`` puts them on chunk boundaries (video frames 9, 21, 33, ...). ``markings=True``
    gives each prompt a marking (drawn when the prompt first appears).
    """
    _check_clip_frames(num_frames)
    if num_switches < 0 or latent_align < 1:
        raise ValueError("num_switches must be >= 0 and latent_align >= 1")
    num_latent = (num_frames - 1) // 4 + 1
    candidates = [4 * lat - 3 for lat in range(latent_align, num_latent, latent_align)]
    if num_switches > len(candidates):
        raise ValueError(f"{num_frames} frames allow at most {len(candidates)} switches at "
                         f"latent_align={latent_align}, asked for {num_switches}")
    gen = _as_rng(rng)
    starts = [0] + sorted(int(s) for s in gen.choice(candidates, size=num_switches, replace=False))
    specs = [sample_spec(gen)]
    for _ in range(num_switches):
        specs.append(_mutate_spec(specs[-1], gen))
    lengths = [b - a for a, b in zip(starts, starts[1:] + [num_frames])]
    frames, _ = render_long_clip(list(zip(specs, lengths)), height, width, rng=gen, markings=markings)
    return frames, [(s, spec.prompt()) for s, spec in zip(starts, specs)]


# ------------------------------------------------------------------------------------------------
# Memory episodes
# ------------------------------------------------------------------------------------------------

LOCAL_WINDOW_FRAMES = 48  # the generator's local attention window: 3 s at 16 fps
_HIDDEN_RANGE = (64, 128)  # how long an episode hides a marking: 4-8 s at 16 fps


@dataclass(frozen=True)
class MemoryEvent:
    """A marking that comes back after being out of view for longer than the local window.

    ``kind``: "revisit" (scenes X -> A -> B -> A: A's prompt again) or "return" (A's sliding object
    re-enters a world wider than the frame). ``frame``: the first video frame at which the marking is
    fully visible again; ``hidden_frames``: the video frames before it during which it was not.
    """

    kind: str
    frame: int
    hidden_frames: int
    prompt: str
    marking: str


@dataclass
class MemoryEpisode:
    """A long marked clip and its memory events.

    ``frames`` is None when it came from ``memory_schedule`` (``render_memory_episode`` draws it);
    ``states`` holds the world state at the start of each ``schedule`` entry.
    """

    frames: np.ndarray | None
    schedule: list[tuple[int, str]]
    events: list[MemoryEvent]
    markings: dict[str, str]
    states: list[WorldState] = field(default_factory=list, repr=False)


def _draw_marking(spec: SceneSpec, rng: np.random.Generator, avoid: Sequence[str | None]) -> str:
    """A marking for a new prompt: uniform among its candidates other than ``avoid``, when any remain."""
    candidates = marking_candidates(spec.colour)
    kept = [m for m in candidates if m not in avoid]
    return str(rng.choice(kept or list(candidates)))


class _Planner:
    """Builds a memory episode scene by scene by stepping the world (no rendering)."""

    def __init__(self, rng: np.random.Generator, num_frames: int, height: int, width: int, chunk_frames: int):
        self.rng, self.num_frames, self.height, self.width = rng, num_frames, height, width
        self.chunk_frames = chunk_frames
        self.state: WorldState | None = None
        self.chunk = 0  # the next segment starts at this chunk
        self.schedule: list[tuple[int, str]] = []
        self.states: list[WorldState] = []
        self.events: list[MemoryEvent] = []

    def start(self, chunk: int) -> int:
        return 0 if chunk == 0 else self.chunk_frames * chunk - 3

    @property
    def done(self) -> bool:
        return self.start(self.chunk) >= self.num_frames

    def seen(self, spec: SceneSpec) -> bool:
        return self.state is not None and spec.prompt() in self.state.markings

    def next_spec(self, walled: bool) -> SceneSpec:
        """A new prompt (never seen in this video) that differs from the current scene."""
        prev = self.state.spec if self.state is not None else None
        for _ in range(1000):
            spec = sample_spec(self.rng) if prev is None else _mutate_spec(prev, self.rng)
            if walled and spec.motion not in _WALLED:
                continue
            if not self.seen(spec):
                return spec
        raise RuntimeError("no new scene found")  # 1120 prompts: not reached in practice

    def begin(self, spec: SceneSpec, marking: str | None = None, world_width: float | None = None) -> None:
        if self.state is not None and marking is not None and not self.seen(spec):
            self.state.markings[spec.prompt()] = marking
        self.state = _begin(spec, self.height, self.width, self.rng, self.state, True, world_width)
        self.schedule.append((self.start(self.chunk), spec.prompt()))
        self.states.append(self.state.copy())

    def run(self, chunks: int) -> list[bool]:
        """Advance the current scene by whole chunks (fewer at the clip's end); per frame: fully visible?"""
        end = min(self.start(self.chunk + chunks), self.num_frames)
        visible = []
        for _ in range(self.start(self.chunk), end):
            visible.append(self.state.fully_visible())
            _step(self.state)
        self.chunk += chunks
        return visible

    def run_until_visible(self, chunks: int, extra: int = 4) -> None:
        """``chunks`` chunks, then up to ``extra`` more while the object is not fully in the frame."""
        self.run(chunks)
        while extra and not self.done and not self.state.fully_visible():
            self.run(1)
            extra -= 1

    def marking(self) -> str:
        return self.state.marking

    def revisit(self) -> None:
        rng = self.rng
        x = self.next_spec(walled=True)
        self.begin(x, _draw_marking(x, rng, ()))
        self.run_until_visible(int(rng.integers(3, 6)))
        a = self.next_spec(walled=True)
        if self.done:
            return
        self.begin(a, _draw_marking(a, rng, (self.marking(),)))
        self.run(int(rng.integers(3, 6)))
        b = self.next_spec(walled=True)
        if self.done:
            return
        self.begin(b, _draw_marking(b, rng, (self.state.markings[a.prompt()],)))
        lo, hi = (-(-_HIDDEN_RANGE[0] // self.chunk_frames), _HIDDEN_RANGE[1] // self.chunk_frames)
        hidden_start = self.start(self.chunk)
        self.run(int(rng.integers(lo, hi + 1)))
        if self.done:
            return
        self.begin(a)  # the same prompt string: the state gives its marking back
        frame = self.start(self.chunk)
        if self.state.fully_visible():
            self.events.append(MemoryEvent("revisit", frame, frame - hidden_start, a.prompt(), self.marking()))
        self.run(3)

    def return_(self) -> None:
        rng, w = self.rng, self.width
        x = self.next_spec(walled=True)
        self.begin(x, _draw_marking(x, rng, ()))
        self.run_until_visible(int(rng.integers(3, 6)))
        if self.done or not self.state.fully_visible():
            return
        st = self.state
        motion = "sliding right" if st.x < w / 2 else "sliding left"  # towards the farther edge
        for _ in range(1000):
            a = _mutate_spec(st.spec, rng).replace(motion=motion)
            if not self.seen(a):
                break
        # Hidden from the last frame fully in (x = w - e, sliding right) to the first one fully back
        # (x = W + e): (W - w + 2 e) / v frames; W >= w + 2 e + 4 so that it is fully out for a while.
        v, e = st.speed, st.extent
        lo = max(_HIDDEN_RANGE[0] + 2.0, (4 * e + 4) / v + 2.0)
        hidden = rng.uniform(lo, max(lo, _HIDDEN_RANGE[1] - 10.0))
        self.begin(a, _draw_marking(a, rng, (self.marking(),)), world_width=w - 2 * e + hidden * v)
        prompt, marking = a.prompt(), self.marking()
        frame = self.start(self.chunk)
        last_seen, event = None, None
        while not self.done:
            for t, vis in enumerate(self.run(1), frame):
                if event is None and vis and last_seen is not None and t - last_seen > 1:
                    event = MemoryEvent("return", t, t - last_seen - 1, prompt, marking)
                if vis:
                    last_seen = t
            frame = self.start(self.chunk)
            if event is not None and frame >= event.frame + 2 * self.chunk_frames:
                self.events.append(event)
                return


def memory_schedule(rng: int | np.random.Generator | None, num_frames: int, height: int = 64, width: int = 64,
                    kinds: Sequence[str] = ("revisit", "return"), chunk_frames: int = 12) -> MemoryEpisode:
    """Plan a long marked clip of chained memory episodes without rendering it (``frames`` is None).

    Prompts change only where a chunk starts (video frame ``chunk_frames * c - 3`` for chunk c >= 1).
    Each episode picks its kind with ``rng`` among ``kinds`` and continues the object from the previous:

    * "revisit": X (3-5 chunks) -> A (3-5) -> B (64-128 frames: 6-10 chunks) -> A again (3 chunks);
      the event is at the second A's first frame, A's marking hidden for B's length.
    * "return": X (3-5 chunks, not sliding) -> A sliding towards the farther edge in a world made
      wider than the frame so that the object, visible for >= 1 chunk, leaves and comes fully back
      after 64-128 frames; A lasts until >= 2 chunks after that. Only the world knows when the object
      returns: a generator decides that itself, so a benchmark finds returns in its own frames.

    X and B take walled (never sliding) motions so that the object stays fully in view; X may run up
    to 4 more chunks while it settles back into the frame after a return. Every scene's prompt is new
    to the video. Marking rule: X draws uniformly among its candidates; A among its candidates other
    than X's marking, and B among its candidates other than A's (when any remain), so a model that
    copies the first scene of an episode or the latest marking it saw is wrong. Events that do not
    complete before ``num_frames`` are dropped. Deterministic for a given seed.
    """
    _check_clip_frames(num_frames)
    kinds = tuple(kinds)
    if not kinds or any(k not in ("revisit", "return") for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of ('revisit', 'return'), got {kinds}")
    if chunk_frames < 4 or chunk_frames % 4:
        raise ValueError(f"chunk_frames must be a positive multiple of 4, got {chunk_frames}")
    planner = _Planner(_as_rng(rng), num_frames, height, width, chunk_frames)
    while not planner.done:
        kind = kinds[int(planner.rng.integers(len(kinds)))]
        planner.revisit() if kind == "revisit" else planner.return_()
    events = [e for e in planner.events if e.frame < num_frames]
    return MemoryEpisode(None, planner.schedule, events, dict(planner.state.markings), planner.states)


def render_memory_episode(episode: MemoryEpisode, num_frames: int) -> np.ndarray:
    """Render a planned episode's ``num_frames`` frames (no randomness: from its recorded states)."""
    starts = [s for s, _ in episode.schedule] + [num_frames]
    return np.concatenate([_render_frames(st.copy(), b - a)
                           for st, a, b in zip(episode.states, starts, starts[1:])])


def render_marking_masks(episode: MemoryEpisode, num_frames: int) -> np.ndarray:
    """Bool ``[T, H, W]``: the pixels of the marking band (half or more covered by the object, inside the band's
    rows) in each frame ``render_memory_episode`` draws for this episode; the recall loss weights them."""
    starts = [s for s, _ in episode.schedule] + [num_frames]
    out = np.zeros((num_frames, episode.states[0].height, episode.states[0].width), bool)
    for st, a, b in zip(episode.states, starts, starts[1:]):
        st = st.copy()
        for t in range(a, b):
            if st.marking is not None:
                out[t] = (_object_alpha(st) >= 0.5) & _band_rows(st)[:, None]
            _step(st)
    return out


def sample_memory_episode(rng: int | np.random.Generator | None, num_frames: int, height: int = 64,
                          width: int = 64, kinds: Sequence[str] = ("revisit", "return"),
                          chunk_frames: int = 12) -> MemoryEpisode:
    """``memory_schedule`` (same schedule and events for the same seed) with its frames rendered."""
    episode = memory_schedule(rng, num_frames, height, width, kinds, chunk_frames)
    episode.frames = render_memory_episode(episode, num_frames)
    return episode


# ------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMeasure:
    """What ``measure_frame`` reads from one frame.

    ``centroid`` is (x, y) in pixels (pixel centres at +0.5, x wrapped into [0, W)); ``area`` is the
    object's coverage in pixels (anti-aliased edges count fractionally). ``colour``/``shape``/
    ``centroid`` are None when no object is found. ``clipped`` is True when a frame edge cuts the
    object (not for an object wrapping round the left/right edges); its shape is then unreliable.
    ``marking`` names the band across the object's middle among ``marking_candidates(colour)``; None
    when there is no object or its middle rows have the body colour.
    """

    colour: str | None
    shape: str | None
    centroid: tuple[float, float] | None
    area: float
    background: str
    clipped: bool = False
    marking: str | None = None


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 255] -> CIE Lab (D65); perceptual distances make the colour names robust."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_COLOUR_NAMES = list(COLOURS)
_COLOUR_LAB = _srgb_to_lab(np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float64))


def classify_colour(rgb: Sequence[float], among: Sequence[str] | None = None) -> str:
    """Nearest reference colour (in Lab) to an RGB triple in [0, 255], among ``among`` (default all)."""
    lab = _srgb_to_lab(np.asarray(rgb, np.float64))
    if among is None:
        return _COLOUR_NAMES[int(np.argmin(((_COLOUR_LAB - lab) ** 2).sum(-1)))]
    refs = _COLOUR_LAB[[_COLOUR_NAMES.index(n) for n in among]]
    return among[int(np.argmin(((refs - lab) ** 2).sum(-1)))]


def _core_rgb(img: np.ndarray, diff: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Median colour of the most contrasted pixels of ``region`` (None if it is empty)."""
    if not region.any():
        return None
    core = region & (diff >= 0.7 * np.percentile(diff[region], 95))
    return np.median(img[core], axis=0)


def _read_marking(img: np.ndarray, diff: np.ndarray, blob: np.ndarray):
    """``(body rgb, body colour, band rgb, marking)`` of a marked blob, or None when its middle rows
    have the body colour. The band is centred on the blob's mean row; its half height is about
    0.3 radius, and the radius about half the blob's height (0.8 to 1.1 of it, by shape)."""
    ys = np.nonzero(blob)[0]
    cy, radius = ys.mean() + 0.5, (ys.max() - ys.min() + 1) / 2
    dy = np.abs(np.arange(img.shape[0]) + 0.5 - cy)[:, None]
    body_rgb = _core_rgb(img, diff, blob & (dy > 0.375 * radius + 1.0))
    band_rgb = _core_rgb(img, diff, blob & (dy <= 0.15 * radius + 0.5))
    if body_rgb is None or band_rgb is None:
        return None
    colour = classify_colour(body_rgb)
    marking = classify_colour(band_rgb, (colour, *marking_candidates(colour)))
    return None if marking == colour else (body_rgb, colour, band_rgb, marking)


def classify_background(rows: np.ndarray) -> str:
    """Name a background from its per-row colour profile [H, 3].

    Flat profiles are dark or light by brightness; varying ones are a gradient when the profile is
    (near) monotone, i.e. its total variation is about its range, and striped when it swings many times.
    """
    lum = np.asarray(rows, np.float64).mean(-1)
    lo, hi = np.percentile(lum, [5, 95])
    if hi - lo < 30:
        return "dark" if lum.mean() < 90 else "light"
    total_variation = np.abs(np.diff(lum)).sum()
    return "gradient" if total_variation < 2.5 * (lum.max() - lum.min()) else "striped"


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx) with zero fill."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


_N8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_N4 = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (label propagation, numpy only)."""
    if not mask.any():
        return mask
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:  # each pass spreads the largest label one pixel; a few dozen passes for demo sizes
        grown = labels.copy()
        for dy, dx in _N8:
            grown = np.maximum(grown, _shift(labels, dy, dx))
        grown = np.where(mask, grown, 0)
        if np.array_equal(grown, labels):
            break
        labels = grown
    ids, counts = np.unique(labels[mask], return_counts=True)
    return labels == ids[np.argmax(counts)]


def _holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels enclosed by ``mask`` (not 4-connected to the image border)."""
    free = ~mask
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = free[0], free[-1], free[:, 0], free[:, -1]
    while True:
        grown = outside.copy()
        for dy, dx in _N4:
            grown |= _shift(outside, dy, dx)
        grown &= free
        if np.array_equal(grown, outside):
            return free & ~outside
        outside = grown


def classify_shape(mask: np.ndarray) -> str | None:
    """Name the shape of a single blob from simple moments.

    ring: a hole (or an empty middle); triangle: the only shape whose mass sits low in its box (apex up:
    centroid 2/3 of the way down); square: the only one that reaches the corners of its box (a circle or
    a diamond leaves them empty; a square drawn with rounded corners or sides bowed in, as a generator
    may draw it, still fills them, though its box fill drops to a circle's); otherwise the fill ratio of
    the bounding box: square ~1, circle ~pi/4, diamond ~1/2.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 4:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = np.pad(mask[y0:y1, x0:x1], 1)
    holes = _holes(box)
    filled = box | holes
    h, w = y1 - y0, x1 - x0
    hole_fraction = holes.sum() / filled.sum()
    # Fraction of the blob's middle (a disc of 0.2 * size around the box centre) that is covered.
    yy, xx = np.mgrid[0:h + 2, 0:w + 2] + 0.5
    centre = (yy - 1 - h / 2) ** 2 + (xx - 1 - w / 2) ** 2 <= (0.2 * min(h, w)) ** 2
    centre_fill = box[centre].mean() if centre.any() else 1.0
    if hole_fraction > 0.06 or centre_fill < 0.35:
        return "ring"
    fy, _ = np.nonzero(filled)
    mass_depth = ((fy - 1 + 0.5).mean()) / h  # 0.5 for symmetric shapes, 2/3 for an apex-up triangle
    if mass_depth > 0.585:
        return "triangle"
    fill = filled.sum() / (h * w)
    if fill > 0.87 or _corner_fill(filled[1:-1, 1:-1]) > 0.3:
        return "square"
    return "circle" if fill > 0.65 else "diamond"


def _corner_fill(box: np.ndarray) -> float:
    """Covered fraction of the four corner triangles of a blob's bounding box ``box`` [h, w] (legs a quarter
    of the shorter side, half a circle's radius): ~1 for a square, 0 for a circle or a diamond (a circle's
    edge crosses the box diagonal at 0.29 of its radius in from both sides, outside these triangles)."""
    h, w = box.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    legs = 0.25 * min(h, w)
    corners = [(np.abs(yy - cy) + np.abs(xx - cx)) < legs for cy in (0, h) for cx in (0, w)]
    return float(np.mean([box[c].mean() for c in corners if c.any()] or [0.0]))


def _as_uint8_frame(frame: np.ndarray) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected a frame [H, W, 3], got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame, got {a.dtype}")
    return a


def measure_frame(frame: np.ndarray, background: str | np.ndarray | None = None) -> FrameMeasure:
    """Read the background, the object's colour, shape, centroid and area from one uint8 [H, W, 3] frame.

    ``background`` may name the background (reported as is) or give the background image [H, W, 3]
    (used as the background model); by default the model is the per-row median, which is exact for
    this world's backgrounds as long as the object covers less than half of each row.
    """
    img = _as_uint8_frame(frame).astype(np.float32)
    h, w, _ = img.shape
    if isinstance(background, np.ndarray):
        if background.shape != img.shape:
            raise ValueError(f"background image {background.shape} does not match frame {img.shape}")
        bg = background.astype(np.float32)
        name = classify_background(np.median(bg, axis=1))
    else:
        rows = np.median(img, axis=1)
        bg = np.broadcast_to(rows[:, None, :], img.shape)
        name = classify_background(rows) if background is None else str(background)
    diff = np.abs(img - bg).max(-1)
    coarse = diff > _FG_THRESHOLD

    # Undo a horizontal wrap: roll the middle of the widest empty gap to the left edge (one piece).
    roll = 0
    if coarse[:, 0].any() and coarse[:, -1].any():
        occupied = np.nonzero(coarse.any(0))[0]
        if len(occupied) < w:  # cut in the middle of the widest empty gap, clear of faint edges
            cols = np.arange(w)
            gap = np.abs(cols[:, None] - occupied[None, :])
            roll = int(np.argmax(np.minimum(gap, w - gap).min(1)))
            img, bg, diff, coarse = (np.roll(a, -roll, axis=1) for a in (img, np.asarray(bg), diff, coarse))
    blob = _largest_component(coarse)
    if blob.sum() < 3:
        return FrameMeasure(None, None, None, 0.0, name, False)

    # Colour: median of the most contrasted (fully covered) pixels, named in Lab; for a marked object,
    # of those outside its middle rows.
    marked = _read_marking(img, diff, blob)
    if marked is None:
        rgb = _core_rgb(img, diff, blob)
        colour, band_rgb, marking = classify_colour(rgb), None, None
    else:
        rgb, colour, band_rgb, marking = marked

    # Coverage: project each pixel onto the background->object colour line, near the blob only,
    # so that shape and area do not depend on the object's contrast with the background. A marked
    # object's pixels take the band's or the body's line, whichever fits them better.
    near = blob.copy()
    for dy, dx in _N8:
        near |= _shift(blob, dy, dx)
    alpha = _project(img, bg, rgb)
    if band_rgb is not None:
        alpha_band = _project(img, bg, band_rgb)
        miss = lambda a, c: (((img - bg) - a[..., None] * (c[None, None, :] - bg)) ** 2).sum(-1)
        alpha = np.where(miss(alpha_band, band_rgb) < miss(alpha, rgb), alpha_band, alpha)
    alpha = np.where(near, alpha, 0.0)
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cy = float((alpha * ys).sum() / max(area, 1e-6))
    cx = float(((alpha * xs).sum() / max(area, 1e-6) + roll) % w)
    solid = alpha >= 0.5
    return FrameMeasure(colour, classify_shape(solid), (cx, cy), area, name, _is_cut(solid, roll == 0), marking)


def _project(img: np.ndarray, bg: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Coverage [H, W] in [0, 1]: each pixel projected onto the background->``rgb`` colour line."""
    direction = rgb[None, None, :] - bg
    alpha = ((img - bg) * direction).sum(-1) / np.maximum((direction**2).sum(-1), 1.0)
    return np.clip(alpha, 0.0, 1.0)


def _is_cut(solid: np.ndarray, sides: bool) -> bool:
    """True when a frame edge cuts the blob: a long run of it lies along the edge (a blob that merely
    touches an edge has a short chord there). Left/right count only when the frame was not un-wrapped."""
    ys, xs = np.nonzero(solid)
    if not len(ys):
        return False
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    edges = [(solid[0], width), (solid[-1], width)]
    if sides:
        edges += [(solid[:, 0], height), (solid[:, -1], height)]
    return any(edge.sum() > 0.3 * extent for edge, extent in edges)


def dynamic_degree(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, in [0, 1] units (uint8 / 255, or floats in [0, 1])."""
    a = np.asarray(frames)
    if a.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, C], got shape {a.shape}")
    if len(a) < 2:
        return 0.0
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    total = 0.0
    for t in range(1, len(a)):  # frame by frame: no T-sized float copy of a long clip
        total += float(np.abs(a[t].astype(np.float32) - a[t - 1].astype(np.float32)).mean())
    return total / (len(a) - 1) / scale


def dynamic_degree_per_minute(frames: np.ndarray, fps: int = 16) -> list[float]:
    """``dynamic_degree`` over each minute of ``frames [T, H, W, 3]`` uint8 (consecutive minutes share their boundary
    frame). A last stretch shorter than half a minute (the few frames past a whole number of minutes) is left out."""
    per_minute = []
    for start in range(0, len(frames) - 1, 60 * fps):
        seg = frames[start:start + 60 * fps + 1]
        if len(seg) > 30 * fps or start == 0:
            per_minute.append(dynamic_degree(seg))
    return per_minute


def _majority(values: list) -> tuple[Any, float]:
    found = [v for v in values if v is not None]
    if not found:
        return None, 0.0
    value, count = Counter(found).most_common(1)[0]
    return value, count / len(values)


def measure_clip(frames: np.ndarray, background: str | np.ndarray | None = None) -> dict[str, Any]:
    """Measure every frame and summarise.

    Returns ``colour``, ``shape``, ``background`` (majorities; the shape only over unclipped frames),
    ``colour_agreement``/``shape_agreement``/``background_agreement`` (fraction of frames that agree
    with the majority), per-frame ``centroids`` (None where no object), ``areas``, ``measures``
    (the FrameMeasure list) and ``dynamic_degree``.
    """
    a = np.asarray(frames)
    if a.ndim != 4:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {a.shape}")
    measures = [measure_frame(f, background) for f in a]
    colour, colour_agree = _majority([m.colour for m in measures])
    shape, shape_agree = _majority([m.shape for m in measures if not m.clipped])
    bg, bg_agree = _majority([m.background for m in measures])
    return {
        "colour": colour, "colour_agreement": colour_agree,
        "shape": shape, "shape_agreement": shape_agree,
        "background": bg, "background_agreement": bg_agree,
        "centroids": [m.centroid for m in measures],
        "areas": [m.area for m in measures],
        "measures": measures,
        "dynamic_degree": dynamic_degree(a),
    }
