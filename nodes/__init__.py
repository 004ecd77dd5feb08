"""ComfyUI nodes (V3 schema) over videossm_core: loader, stream state, prompt schedule, sampler."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .loaders import VideoSSMModelLoader
from .sampler import VideoSSMContinueFromClip, VideoSSMSampler
from .schedule import VideoSSMPromptSchedule
from .state import VideoSSMInspectState, VideoSSMLoadState, VideoSSMNewStream, VideoSSMSaveState, add_routes

NODES: list[type[io.ComfyNode]] = [
    VideoSSMModelLoader,
    VideoSSMNewStream,
    VideoSSMLoadState,
    VideoSSMSaveState,
    VideoSSMInspectState,
    VideoSSMPromptSchedule,
    VideoSSMSampler,
    VideoSSMContinueFromClip,
]


class VideoSSMExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        add_routes()  # here, not in on_load: ComfyUI 0.3.75 never calls on_load
        return NODES
