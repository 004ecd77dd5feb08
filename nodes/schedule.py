"""The prompt timeline node: schedule text -> encoded prompt segments."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..videossm_core.schedule import ScheduleError, parse_schedule
from ._types import CATEGORY, EncodedSchedule, VideoSSMModel, VideoSSMSchedule

DEFAULT_SCHEDULE = """0s: a red circle bouncing on a dark background
20s: a blue square sliding right on a light background
40s: a yellow triangle orbiting on a striped background
"""


def _encode_with_clip(clip, prompt: str, text_dim: int, text_len: int, warnings: list[str]) -> torch.Tensor:
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]  # [1, L, D]
    if cond.shape[-1] != text_dim:
        raise ValueError(f"the CLIP gives {cond.shape[-1]}-dim text embeddings but the model expects {text_dim}; "
                         "for Wan models load umt5-xxl with CLIPLoader (type: wan)")
    if cond.shape[1] > text_len:
        warnings.append(f"{prompt[:60]!r} is {cond.shape[1]} tokens long; the model reads only the first {text_len}")
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
                        "Prompts switch at the nearest chunk boundary. Drag the blocks on the timeline to retime. "
                        "The video's length is the sampler's 'seconds' (the timeline shows it when the sampler is "
                        "connected); prompts past it never start, and the sampler says so. Words the text encoder "
                        "drops are listed on the node after a run.",
            inputs=[
                io.String.Input("schedule", multiline=True, default=DEFAULT_SCHEDULE,
                                tooltip="One 'TIME: PROMPT' per line, e.g. '0s: a fox in the snow'. The timeline "
                                        "above edits this text."),
                # kept so workflows saved before the sampler owned the length load unchanged
                io.Float.Input("duration_seconds", default=60.0, min=0.5, max=36000.0, step=0.5,
                               tooltip="The timeline's length while no sampler is connected. The connected "
                                       "sampler's 'seconds' decides the video's length and the timeline follows it."),
                io.Clip.Input("clip", optional=True,
                              tooltip="The text encoder for real models: Load CLIP with umt5-xxl, type wan."),
                VideoSSMModel.Input("model", optional=True,
                                    tooltip="The video model. Without a CLIP, the bundled demo model encodes the "
                                            "prompts itself (it knows only its toy world's words)."),
                io.String.Input("negative", multiline=True, default="", optional=True,
                                tooltip="What the video should avoid. Used only when the stream's guidance is "
                                        "above 1."),
            ],
            outputs=[VideoSSMSchedule.Output(display_name="schedule")],
        )

    @classmethod
    def validate_inputs(cls, schedule):
        if schedule is None:  # linked: known only at run time (execute checks)
            return True
        try:
            parse_schedule(schedule)
        except ScheduleError as err:
            return f"prompt schedule, {err}"
        return True

    @classmethod
    def execute(cls, schedule, duration_seconds, clip=None, model=None, negative="") -> io.NodeOutput:
        try:
            parsed = parse_schedule(schedule)
        except ScheduleError as err:
            raise ValueError(f"prompt schedule, {err}") from None
        prompts = list(dict.fromkeys(parsed.prompts))
        warnings: list[str] = []
        if clip is not None:
            if model is None:
                raise ValueError("connect the model too, so the schedule can check the text embedding size")
            cfg = model.model.config
            encode = lambda p: _encode_with_clip(clip, p, cfg.text_dim, cfg.text_len, warnings)  # noqa: E731
        elif model is not None and model.text_encoder is not None:
            encoder = model.text_encoder

            def encode(p):
                # the demo vocabulary is small: say which words it drops instead of encoding them silently
                warnings.extend(encoder.prompt_warnings(p))
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
        for warning in warnings:
            logging.warning("VideoSSM prompt schedule: %s", warning)
        # shown on the node (the timeline's warning line): a warning never fails the run
        text = "\n".join(f"warning: {w}" for w in warnings) or f"{len(prompts)} prompt(s) encoded as written"
        return io.NodeOutput(EncodedSchedule(parsed, duration_seconds, conditioning, neg, schedule),
                             ui=ui.PreviewText(text))
