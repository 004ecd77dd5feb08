"""The prompt timeline node: schedule text -> encoded prompt segments."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..videossm_core.schedule import ScheduleError, parse_schedule
from ._types import CATEGORY, EncodedSchedule, VideoSSMModel, VideoSSMSchedule

DEFAULT_SCHEDULE = """0s: a red circle bouncing on a dark background
20s: a blue square sliding right on a light background
40s: a yellow triangle orbiting on a striped background
"""


def _check(schedule: str, duration_seconds: float):
    parsed = parse_schedule(schedule)
    parsed.check_duration(duration_seconds)
    return parsed


def _encode_with_clip(clip, prompt: str, text_dim: int, text_len: int) -> torch.Tensor:
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]  # [1, L, D]
    if cond.shape[-1] != text_dim:
        raise ValueError(f"the CLIP gives {cond.shape[-1]}-dim text embeddings but the model expects {text_dim}; "
                         "for Wan models load umt5-xxl with CLIPLoader (type: wan)")
    if cond.shape[1] > text_len:
        logging.warning("VideoSSM: prompt %r is %d tokens long; the model reads the first %d", prompt[:40],
                        cond.shape[1], text_len)
        cond = cond[:, :text_len]
    return cond.float().cpu()


class VideoSSMPromptSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMPromptSchedule",
            display_name="VideoSSM Prompt Schedule",
            category=CATEGORY,
            description="A prompt timeline: one 'TIME: PROMPT' per line (12s, 1m30s, 40f for video frames at 16 fps). "
                        "Prompts switch at the nearest chunk boundary. Drag the blocks on the timeline to retime.",
            inputs=[
                io.String.Input("schedule", multiline=True, default=DEFAULT_SCHEDULE),
                io.Float.Input("duration_seconds", default=60.0, min=0.5, max=36000.0, step=0.5,
                               tooltip="the video's length (the timeline's axis); the sampler's length should match"),
                io.Clip.Input("clip", optional=True, tooltip="CLIPLoader (type wan, umt5-xxl) for real models"),
                VideoSSMModel.Input("model", optional=True,
                                    tooltip="uses the model's own (demo-only) text encoder when no CLIP is given"),
                io.String.Input("negative", multiline=True, default="", optional=True,
                                tooltip="negative prompt, used only with guidance > 1"),
            ],
            outputs=[VideoSSMSchedule.Output(display_name="schedule")],
        )

    @classmethod
    def validate_inputs(cls, schedule, duration_seconds):
        if schedule is None or duration_seconds is None:  # linked: known only at run time (execute checks)
            return True
        try:
            _check(schedule, duration_seconds)
        except ScheduleError as err:
            return f"prompt schedule, {err}"
        return True

    @classmethod
    def execute(cls, schedule, duration_seconds, clip=None, model=None, negative="") -> io.NodeOutput:
        try:
            parsed = _check(schedule, duration_seconds)
        except ScheduleError as err:
            raise ValueError(f"prompt schedule, {err}") from None
        prompts = list(dict.fromkeys(parsed.prompts))
        if clip is not None:
            if model is None:
                raise ValueError("connect the model too, so the schedule can check the text embedding size")
            cfg = model.model.config
            encode = lambda p: _encode_with_clip(clip, p, cfg.text_dim, cfg.text_len)  # noqa: E731
        elif model is not None and model.text_encoder is not None:
            encoder = model.text_encoder

            def encode(p):
                with torch.no_grad():
                    return encoder.encode([p]).float().cpu()
        else:
            raise ValueError("connect a CLIP (CLIPLoader, type wan, umt5-xxl) to encode the prompts; only the "
                             "bundled demo model can encode its own prompts")
        try:
            conditioning = {p: encode(p) for p in prompts}
        except ValueError as err:  # e.g. a word outside the demo vocabulary
            raise ValueError(f"prompt schedule: {err}") from None
        neg = encode(negative) if negative and negative.strip() else None
        return io.NodeOutput(EncodedSchedule(parsed, duration_seconds, conditioning, neg, schedule))
