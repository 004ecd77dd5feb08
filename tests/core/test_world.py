"""The procedural demo world: prompt grammar, rendering, continuity, dataset helpers and measurement."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from videossm_core.demo.world import (
    BACKGROUNDS,
    COLOURS,
    MARKINGS,
    MOTIONS,
    RADIUS_RANGE,
    SHAPES,
    SceneSpec,
    all_prompts,
    classify_shape,
    dynamic_degree,
    is_valid_frame_count,
    marking_candidates,
    measure_clip,
    measure_frame,
    memory_schedule,
    parse_prompt,
    prompt_words,
    render_clip,
    render_long_clip,
    render_marking_masks,
    sample_clip,
    sample_memory_episode,
    sample_spec,
    sample_switch_clip,
)

WALLED = [m for m in MOTIONS if not m.startswith("sliding")]


def torus_distance(a, b, width):
    """Distance between two centroids on the world's horizontal torus."""
    dx = abs(a[0] - b[0])
    return float(np.hypot(min(dx, width - dx), a[1] - b[1]))


# ---------------------------------------------------------------------------------------- grammar


def test_vocabulary_sizes():
    assert len(COLOURS) >= 8 and len(SHAPES) >= 4 and len(MOTIONS) >= 4 and len(BACKGROUNDS) >= 3
    assert {"red", "green", "blue", "yellow", "white", "orange", "purple", "cyan"} <= set(COLOURS)
    assert {"circle", "square", "triangle"} <= set(SHAPES)


def test_all_prompts_round_trip():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(COLOURS) * len(SHAPES) * len(MOTIONS) * len(BACKGROUNDS)
    for prompt in prompts:
        assert parse_prompt(prompt).prompt() == prompt
    words = set(prompt_words())
    assert all(set(p.split()) <= words for p in prompts)


def test_parse_is_tolerant_to_case_spaces_and_full_stop():
    spec = parse_prompt("  A  Red CIRCLE   sliding   Left on an DARK background. ")
    assert spec == SceneSpec("red", "circle", "sliding left", "dark")
    assert spec.prompt() == "a red circle sliding left on a dark background"


@pytest.mark.parametrize("prompt, word", [
    ("a magenta circle bouncing on a dark background", "magenta"),
    ("a red hexagon bouncing on a dark background", "hexagon"),
    ("a red circle spinning on a dark background", "spinning"),
    ("a red circle sliding up on a dark background", "sliding up"),
    ("a red circle bouncing on a plaid background", "plaid"),
])
def test_parse_names_the_unknown_word(prompt, word):
    with pytest.raises(ValueError, match=word):
        parse_prompt(prompt)


@pytest.mark.parametrize("prompt", ["", "red circle", "a red circle bouncing", "a red circle on a dark background",
                                    "a red circle bouncing on a dark", "a red circle bouncing in a dark background"])
def test_parse_rejects_other_sentences(prompt):
    with pytest.raises(ValueError, match="expected"):
        parse_prompt(prompt)


def test_scene_spec_validates():
    with pytest.raises(ValueError, match="unknown colour"):
        SceneSpec("pink", "circle", "bouncing", "dark")


# -------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("height, width", [(64, 64), (32, 32), (96, 128), (128, 96)])
def test_render_shapes_and_determinism(height, width):
    spec = parse_prompt("a blue ring zigzagging on a striped background")
    frames, state = render_clip(spec, 17, height, width, seed=5)
    assert frames.shape == (17, height, width, 3) and frames.dtype == np.uint8
    again, _ = render_clip(spec.prompt(), 17, height, width, seed=np.random.default_rng(5))
    np.testing.assert_array_equal(frames, again)
    other, _ = render_clip(spec, 17, height, width, seed=6)
    assert not np.array_equal(frames, other)
    assert state.frame == 17 and (state.height, state.width) == (height, width)


def test_seed_varies_size_and_position():
    spec = parse_prompt("a red circle resting on a dark background")
    measures = [measure_frame(render_clip(spec, 1, seed=s)[0][0]) for s in range(20)]
    areas = [m.area for m in measures]
    xs = [m.centroid[0] for m in measures]
    assert max(areas) > 1.4 * min(areas) and np.std(xs) > 5


def test_continuing_from_end_state_is_seamless():
    spec = parse_prompt("a green triangle bouncing on a gradient background")
    whole, end_whole = render_clip(spec, 60, seed=3)
    first, state = render_clip(spec, 25, seed=3)
    second, end_parts = render_clip(spec, 35, seed=123, start_state=state)  # unchanged prompt: no randomness used
    np.testing.assert_array_equal(whole, np.concatenate([first, second]))
    assert (end_whole.x, end_whole.y) == (end_parts.x, end_parts.y)
    assert state.frame == 25  # the start state is not modified


def test_start_state_must_match_frame_size():
    _, state = render_clip("a red circle bouncing on a dark background", 5, 64, 64)
    with pytest.raises(ValueError, match="64x64"):
        render_clip("a red circle bouncing on a dark background", 5, 32, 32, start_state=state)


def test_prompt_switch_keeps_the_object_where_it_was():
    rng = np.random.default_rng(0)
    for _ in range(60):
        a, b = sample_spec(rng), sample_spec(rng)
        frames, _ = render_long_clip([(a, 13), (b, 12)], rng=rng)
        before, after = measure_frame(frames[12]), measure_frame(frames[13])
        assert (before.colour, before.shape, before.background) == (a.colour, a.shape, a.background)
        assert (after.colour, after.shape, after.background) == (b.colour, b.shape, b.background)
        # Fastest motion (a bounce near the floor) moves < 5 px per frame; shapes' centroids agree to ~1 px.
        assert torus_distance(before.centroid, after.centroid, 64) < 6.0, (a, b)


def test_walled_motions_keep_the_object_on_screen():
    rng = np.random.default_rng(1)
    for motion in WALLED:
        for _ in range(3):
            spec = sample_spec(rng).replace(motion=motion)
            frames, _ = render_clip(spec, 41, rng=rng)
            for frame in frames[::4]:
                m = measure_frame(frame)
                assert not m.clipped and m.shape == spec.shape, (spec, m)


def test_sliding_wraps_around_without_losing_the_object():
    spec = parse_prompt("a yellow square sliding right on a light background")
    frames, _ = render_clip(spec, 161, seed=2)  # > one full crossing of a 64-px frame
    measures = [measure_frame(f) for f in frames]
    areas = np.array([m.area for m in measures])
    assert areas.min() > 0.97 * areas.max()  # drawn whole even while split across the edge
    xs = np.array([m.centroid[0] for m in measures])
    steps = (np.diff(xs) + 32) % 64 - 32  # signed step on the torus
    assert (steps > 0).all() and np.ptp(steps) < 0.3  # constant speed (drawn at 1/4-pixel precision)
    assert np.any(np.abs(np.diff(xs)) > 32)  # it did wrap
    assert all(m.shape == "square" and m.colour == "yellow" for m in measures)


def test_switch_from_sliding_settles_back_into_the_box():
    frames, _ = render_long_clip([("a red ring sliding left on a dark background", 41),
                                  ("a red ring orbiting on a dark background", 80)], seed=4)
    centroids = [measure_frame(f).centroid for f in frames]
    assert max(torus_distance(a, b, 64) for a, b in zip(centroids, centroids[1:])) < 6.0
    assert not any(measure_frame(f).clipped for f in frames[60:])


# ------------------------------------------------------------------------------------ dataset


def test_frame_count_rule():
    assert [n for n in range(14) if is_valid_frame_count(n)] == [1, 5, 9, 13]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        sample_clip(0, 20)


def test_sample_clip():
    frames, prompt = sample_clip(np.random.default_rng(0), 21, 32, 48)
    assert frames.shape == (21, 32, 48, 3) and frames.dtype == np.uint8
    spec = parse_prompt(prompt)
    summary = measure_clip(frames)
    assert summary["background"] == spec.background and summary["colour"] == spec.colour
    np.testing.assert_array_equal(frames, sample_clip(np.random.default_rng(0), 21, 32, 48)[0])


@pytest.mark.parametrize("latent_align, allowed", [(1, {1, 5, 9, 13, 17, 21, 25, 29}), (3, {9, 21})])
def test_sample_switch_clip(latent_align, allowed):
    rng = np.random.default_rng(7)
    for _ in range(5):
        frames, schedule = sample_switch_clip(rng, 33, num_switches=2, latent_align=latent_align)
        assert frames.shape == (33, 64, 64, 3)
        starts = [s for s, _ in schedule]
        assert starts[0] == 0 and starts == sorted(set(starts)) and set(starts[1:]) <= allowed
        specs = [parse_prompt(p) for _, p in schedule]
        assert all(a != b for a, b in zip(specs, specs[1:]))
        for (start, _), spec in zip(schedule, specs):
            m = measure_frame(frames[start])
            assert (m.colour, m.shape, m.background) == (spec.colour, spec.shape, spec.background)
    with pytest.raises(ValueError, match="at most 2 switches"):
        sample_switch_clip(rng, 33, num_switches=3, latent_align=3)


# -------------------------------------------------------------------------------- measurement


def test_measurement_accuracy_on_random_frames():
    rng = np.random.default_rng(2024)
    n, hits = 300, {"colour": 0, "shape": 0, "background": 0}
    for _ in range(n):
        spec = sample_spec(rng)
        frames, _ = render_clip(spec, int(rng.integers(1, 50)), rng=rng)
        m = measure_frame(frames[-1])
        hits["colour"] += m.colour == spec.colour
        hits["shape"] += m.shape == spec.shape
        hits["background"] += m.background == spec.background
    assert hits["colour"] / n >= 0.98
    assert hits["shape"] / n >= 0.90
    assert hits["background"] / n >= 0.98


def test_measure_frame_details():
    spec = parse_prompt("a purple diamond resting on a striped background")
    frames, state = render_clip(spec, 1, seed=11)
    m = measure_frame(frames[0])
    assert (m.colour, m.shape, m.background) == ("purple", "diamond", "striped")
    assert abs(m.centroid[0] - state.x) < 0.5 and abs(m.centroid[1] - state.y) < 0.5
    true_area = 2 * (1.1 * state.radius) ** 2
    assert abs(m.area - true_area) < 0.1 * true_area
    assert measure_frame(frames[0], background="dark").background == "dark"  # a given name is reported
    rows = np.median(frames[0], axis=1).astype(np.uint8)
    given = measure_frame(frames[0], background=np.broadcast_to(rows[:, None, :], frames[0].shape))
    assert (given.colour, given.shape, given.background) == ("purple", "diamond", "striped")


def test_measure_frame_on_an_empty_background():
    frames, _ = render_clip("a white circle resting on a light background", 1, seed=0)
    rows = np.median(frames[0], axis=1).astype(np.uint8)
    empty = np.broadcast_to(rows[:, None, :], frames[0].shape).copy()
    m = measure_frame(empty)
    assert m.colour is None and m.shape is None and m.centroid is None and m.area == 0.0
    assert m.background == "light"
    with pytest.raises(ValueError, match="uint8"):
        measure_frame(empty.astype(np.float32))


def test_dynamic_degree_and_measure_clip():
    moving, _ = render_clip("a cyan square bouncing on a dark background", 33, seed=1)
    static, _ = render_clip("a cyan square resting on a dark background", 33, seed=1)
    assert dynamic_degree(static) == 0.0
    assert dynamic_degree(moving) > 0.002
    assert dynamic_degree(moving[:1]) == 0.0
    assert abs(dynamic_degree(moving.astype(np.float32) / 255) - dynamic_degree(moving)) < 1e-6
    summary = measure_clip(moving)
    assert (summary["colour"], summary["shape"], summary["background"]) == ("cyan", "square", "dark")
    assert summary["colour_agreement"] == 1.0 and len(summary["centroids"]) == 33
    assert summary["dynamic_degree"] == dynamic_degree(moving)


def test_the_largest_objects_are_still_measured_right():
    """Objects are drawn as large as the per-row median background model allows (larger objects survive
    the VAE and carry more of the loss); at the top of ``RADIUS_RANGE`` every shape, on every background,
    still covers less than half of each row and is read back right."""
    _, state = render_clip("a red circle resting on a dark background", 1, seed=0)
    for shape, background in ((s, b) for s in SHAPES for b in BACKGROUNDS):
        st = state.copy()
        st.radius, st.x, st.y = RADIUS_RANGE[1] * 64, 32.0, 32.0
        frames, _ = render_clip(f"a green {shape} resting on a {background} background", 1, seed=1, start_state=st)
        m = measure_frame(frames[0])
        assert (m.colour, m.shape, m.background) == ("green", shape, background)
        # The left column is background here, and backgrounds are constant along rows.
        object_pixels = np.abs(frames[0].astype(int) - frames[0][:, :1].astype(int)).max(-1) > 36
        assert object_pixels.sum(1).max() < 32


def _bowed_square(half: float, bow: float, size: int = 40) -> np.ndarray:
    """A square mask [size, size] of half side ``half`` whose four sides bow ``bow`` px inwards at their
    middles (each side cut by a disc through its two corners), corners intact: how a generator draws it."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5 - size / 2
    mask = (np.abs(yy) <= half) & (np.abs(xx) <= half)
    reach = (half**2 + bow**2) / (2 * bow)  # radius of the disc through both corners, ``bow`` deep
    for cy, cx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        off = half + reach - bow
        mask &= (yy - cy * off) ** 2 + (xx - cx * off) ** 2 > reach**2
    return mask


def test_squares_drawn_with_bowed_sides_or_round_corners_are_squares():
    """A generator's squares come out with sides bowed in and corners rounded: their box fill (about 0.83)
    is a circle's, but only a square reaches into the corners of its box."""
    yy, xx = np.mgrid[0:40, 0:40] + 0.5 - 20
    for half in (7.0, 10.0, 13.0):
        bowed = _bowed_square(half, bow=0.18 * half)
        ys, xs = np.nonzero(bowed)
        fill = bowed.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        assert fill < 0.87  # by its box fill alone it would be read as a circle
        assert classify_shape(bowed) == "square"
        corner = 0.35 * half  # rounded corners
        beyond_y, beyond_x = (np.clip(np.abs(a) - (half - corner), 0, None) for a in (yy, xx))
        inner = beyond_y**2 + beyond_x**2
        rounded = (np.abs(yy) <= half) & (np.abs(xx) <= half) & (inner <= corner**2)
        assert classify_shape(rounded) == "square"
        for stretch in (1.0, 1.15):  # round blobs, a little elongated, stay circles; diamonds stay diamonds
            assert classify_shape((yy / stretch) ** 2 + xx**2 <= half**2) == "circle"
            assert classify_shape(np.abs(yy / stretch) + np.abs(xx) <= half * 1.2) == "diamond"


# ------------------------------------------------------------------------------ hidden markings


def _blur(frame: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """Separable Gaussian blur (edge padding), about what the demo VAE does to a frame."""
    r = int(3 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k /= k.sum()
    a = np.pad(frame.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    a = sum(w * a[i:i + a.shape[0] - 2 * r] for i, w in enumerate(k))
    a = sum(w * a[:, i:i + a.shape[1] - 2 * r] for i, w in enumerate(k))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _marked_frames(seed, n, sizes):
    """``n`` (frame, spec, marking, size) of random marked scenes fully in frame (no sliding)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        spec = sample_spec(rng)
        if spec.motion.startswith("sliding"):
            spec = spec.replace(motion=str(rng.choice(WALLED)))
        size = sizes[i % len(sizes)]
        frames, state = render_clip(spec, int(rng.integers(1, 30)), *size, rng=rng, markings=True)
        yield frames[-1], spec, state.markings[spec.prompt()], size


def test_markings_vocabulary():
    assert len(MARKINGS) == 4 and set(MARKINGS) <= set(COLOURS)
    for colour in COLOURS:
        assert colour not in marking_candidates(colour)
        assert set(marking_candidates(colour)) == set(MARKINGS) - {colour}


def test_marking_is_read_back_on_every_render():
    n, hits, body = 300, 0, 0
    for frame, spec, marking, size in _marked_frames(31, n, [(64, 64), (32, 32), (96, 128), (48, 64)]):
        m = measure_frame(frame)
        hits += m.marking == marking
        if size != (32, 32):  # 32-px shapes are read at the same (imperfect) rate as unmarked ones
            body += (m.colour, m.shape, m.background) == (spec.colour, spec.shape, spec.background)
    assert hits == n, f"marking read back on {hits}/{n} renders"
    assert body == n * 3 // 4, f"colour, shape and background right on {body}/{n * 3 // 4} marked renders"


def test_marking_is_read_back_under_a_vae_like_blur():
    n, hits, colours = 300, 0, 0
    for frame, spec, marking, _ in _marked_frames(32, n, [(64, 64)]):
        m = measure_frame(_blur(frame))
        hits += m.marking == marking
        colours += m.colour == spec.colour
    assert hits >= 0.95 * n, f"marking read back on {hits}/{n} frames blurred by 1.4 px"
    assert colours >= 0.95 * n, f"colour read back on {colours}/{n} frames blurred by 1.4 px"


def test_unmarked_objects_have_no_marking_and_unmarked_renders_are_unchanged():
    frames, state = render_clip("a yellow square sliding right on a light background", 161, seed=2)
    assert state.markings is None and state.world_width is None
    assert measure_frame(frames[0]).marking is None
    # Renders recorded before markings and wider worlds existed: the default world is byte-identical.
    assert hashlib.sha256(frames.tobytes()).hexdigest()[:16] == "78051ffe2847807e"
    assert hashlib.sha256(sample_clip(np.random.default_rng(0), 21, 32, 48)[0].tobytes()).hexdigest()[:16] \
        == "9dfa84f48b8d0a78"
    long, _ = render_long_clip([("a red ring sliding left on a dark background", 41),
                                ("a red ring orbiting on a dark background", 80)], seed=4)
    assert hashlib.sha256(long.tobytes()).hexdigest()[:16] == "d5fa6c4972747375"


def test_same_prompt_same_marking_new_prompt_new_draw():
    red = "a red circle resting on a dark background"
    drawn = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        frames, state = render_long_clip([(red, 5), ("a blue ring floating on a light background", 5),
                                          (red, 5)], rng=rng, markings=True)
        marks = [measure_frame(frames[i]).marking for i in (0, 5, 10)]
        assert marks[0] == marks[2] == state.markings[red]  # the prompt's marking comes back
        assert marks[1] != "blue" and marks[0] != "red"
        drawn.append(marks[0])
    assert set(drawn) == set(marking_candidates("red"))  # uniform over the candidates
    # The training sampler: the same scene with a band; off by default.
    plain, prompt = sample_clip(5, 9)
    marked, same = sample_clip(5, 9, markings=True)
    assert prompt == same and measure_frame(marked[0]).marking in marking_candidates(parse_prompt(prompt).colour)
    assert measure_frame(plain[0]).marking is None
    frames, schedule = sample_switch_clip(3, 33, num_switches=2, latent_align=3, markings=True)
    assert all(measure_frame(frames[s]).marking is not None for s, _ in schedule)


# ------------------------------------------------------------------------------- wider world


def test_sliding_object_leaves_a_wider_world_and_comes_back():
    spec = parse_prompt("a green circle sliding left on a striped background")
    _, state = render_clip(spec, 1, seed=9)
    st = state.copy()
    st.x, st.frame = 32.0, 0
    world = 64 + 80.0
    n = int(world / st.speed)  # one lap: it starts, and ends, fully in the frame
    frames, end = render_clip(spec, n, seed=0, start_state=st, world_width=world, markings=True)
    measures = [measure_frame(f) for f in frames]
    present = np.array([m.centroid is not None for m in measures])
    whole = np.array([m.area > 0.98 * measures[0].area for m in measures])  # not cut by an edge
    assert present[0] and not present.all()  # it left the frame: frames with no object at all
    gone = np.nonzero(~present)[0]
    assert present[gone[-1] + 1:].any()  # and came back
    # Not fully in from x = r to x = 64 - r on the next lap: (world - 64 + 2 r) / speed frames.
    expected = (world - 64 + 2 * st.radius) / st.speed
    first_out = int(np.argmin(whole))
    back = first_out + int(np.argmax(whole[first_out:]))
    assert abs((back - first_out) - expected) <= 3, (back - first_out, expected)
    assert whole[0] and whole[-1] and end.world_width == world
    assert (st.x - end.x) % world == pytest.approx((n * st.speed) % world)
    # Partially out: cut by the frame's edge, not wrapped to the other side.
    part = frames[first_out + 3]
    assert np.abs(part[:, -8:].astype(int) - np.median(part, 1)[:, None].astype(int)).max() < 2


# ---------------------------------------------------------------------------------- episodes


def test_memory_episodes():
    n_frames = 1 + 4 * 150  # 601 frames, 37.5 s
    counts, bad, sink_wrong = {"revisit": 0, "return": 0}, [], 0
    for seed in range(8):
        ep = sample_memory_episode(seed, n_frames)
        assert ep.frames.shape == (n_frames, 64, 64, 3)
        starts = [s for s, _ in ep.schedule]
        assert starts[0] == 0 and all((s + 3) % 12 == 0 for s in starts[1:]) and starts == sorted(set(starts))
        prompts = [p for _, p in ep.schedule]
        assert all(a != b for a, b in zip(prompts, prompts[1:]))
        for e in ep.events:
            counts[e.kind] += 1
            assert 64 <= e.hidden_frames <= 128 and e.hidden_frames > 48, e
            assert ep.markings[e.prompt] == e.marking
            assert e.marking in marking_candidates(parse_prompt(e.prompt).colour)
            m = measure_frame(ep.frames[e.frame])
            if (m.marking, m.colour, m.clipped) != (e.marking, parse_prompt(e.prompt).colour, False):
                bad.append((seed, e, m))
            # The marking was out of view for hidden_frames frames before the event.
            before = [measure_frame(f) for f in ep.frames[e.frame - e.hidden_frames:e.frame:8]]
            if e.kind == "revisit":
                assert all(b.marking != e.marking for b in before)  # B's marking differs from A's
                i = max(k for k, (s, p) in enumerate(ep.schedule) if s < e.frame - e.hidden_frames)
                first = ep.markings[ep.schedule[i - 1][1]]  # the episode's first scene, X
                sink_wrong += first != e.marking
                assert ep.schedule[i][1] == e.prompt and ep.schedule[i + 2][0] == e.frame
            else:
                assert any(b.centroid is None for b in before)  # the object left the frame
    assert not bad, f"marking read back wrong at {len(bad)} events: {bad[:3]}"
    assert counts["revisit"] >= 5 and counts["return"] >= 5, counts
    assert sink_wrong == counts["revisit"]  # A's marking is never X's (X's colour leaves room)
    again = sample_memory_episode(3, n_frames)
    plan = memory_schedule(3, n_frames)
    first = sample_memory_episode(3, n_frames)
    assert again.schedule == plan.schedule == first.schedule and again.events == plan.events == first.events
    np.testing.assert_array_equal(again.frames, first.frames)
    assert plan.frames is None
    only = memory_schedule(4, n_frames, kinds=("return",))
    assert only.events and all(e.kind == "return" for e in only.events)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        memory_schedule(0, 600)


def test_marking_masks_cover_the_band_and_nothing_else():
    """The recall loss weights the marking's pixels: ``render_marking_masks`` marks the pixels drawn in the marking's
    colour (inside the object), on the frames ``render_memory_episode`` draws, and no others."""
    from videossm_core.training.data import foreground_masks

    n_frames = 1 + 4 * 60
    ep = sample_memory_episode(5, n_frames)
    band = render_marking_masks(ep, n_frames)
    assert band.shape == ep.frames.shape[:3] and band.any()
    fg = foreground_masks(ep.frames)
    assert not (band & ~fg).any()  # within the object
    starts = [s for s, _ in ep.schedule] + [n_frames]
    coloured, stray = 0, 0
    for (start, prompt), end in zip(ep.schedule, starts[1:]):
        body, marking = COLOURS[parse_prompt(prompt).colour], COLOURS[ep.markings[prompt]]
        frames, mask = ep.frames[start:end].astype(float), band[start:end]
        near = lambda rgb: np.abs(frames - np.asarray(rgb, float)).max(-1) < 40  # noqa: E731 (jitter, anti-aliasing)
        coloured += near(marking)[mask].sum()
        stray += (near(marking) & ~near(body) & fg[start:end] & ~mask).sum()  # marking-coloured pixels left out
    # Pixels half covered at the object's edge blend with the background (a mask a frame late: 86 %).
    assert coloured >= 0.95 * band.sum() and stray <= 0.05 * band.sum(), (coloured, stray, band.sum())
