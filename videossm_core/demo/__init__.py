"""The demo: a procedural video world (ground truth for training and measuring the demo model)."""

from .world import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    FrameMeasure,
    SceneSpec,
    WorldState,
    all_prompts,
    all_specs,
    dynamic_degree,
    is_valid_frame_count,
    measure_clip,
    measure_frame,
    parse_prompt,
    prompt_words,
    render_clip,
    render_long_clip,
    sample_clip,
    sample_spec,
    sample_switch_clip,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "MOTIONS", "SHAPES", "FrameMeasure", "SceneSpec", "WorldState",
    "all_prompts", "all_specs", "dynamic_degree", "is_valid_frame_count", "measure_clip",
    "measure_frame", "parse_prompt", "prompt_words", "render_clip", "render_long_clip", "sample_clip",
    "sample_spec", "sample_switch_clip",
]
