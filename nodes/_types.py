"""The suite's custom ComfyUI types and the objects that travel along their links (one place)."""

from __future__ import annotations

from dataclasses import dataclass, field

from comfy_api.latest import io
from torch import Tensor

from ..videossm_core.model.transformer import CausalWanModel
from ..videossm_core.schedule import PromptSchedule
from ..videossm_core.vae import WanVAE

CATEGORY = "VideoSSM"

VideoSSMModel = io.Custom("VIDEOSSM_MODEL")  # LoadedModel
VideoSSMState = io.Custom("VIDEOSSM_STATE")  # videossm_core.state.StreamState (never mutated by a node)
VideoSSMSchedule = io.Custom("VIDEOSSM_SCHEDULE")  # EncodedSchedule


@dataclass(frozen=True)
class LoadedModel:
    """A generator with what came with it. The bundled demo brings its own VAE and (demo-only) text
    encoder; real checkpoints use ComfyUI's native VAE and CLIP (umt5-xxl) loaders."""

    model: CausalWanModel
    name: str
    text_encoder: object | None = None  # videossm_core.text.DemoTextEncoder for the demo
    vae: WanVAE | None = None
    resolution: tuple[int, int] = (480, 832)  # (height, width) the model was trained at
    fps: int = 16


@dataclass(frozen=True)
class EncodedSchedule:
    """A parsed prompt timeline with every prompt already encoded ([1, L, text_dim] each)."""

    schedule: PromptSchedule
    duration: float
    conditioning: dict[str, Tensor] = field(default_factory=dict)
    negative: Tensor | None = None
    source: str = ""  # the schedule text as the user wrote it
