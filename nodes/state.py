"""Stream-state nodes: start a stream, save / load it, look inside it."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..videossm_core.config import SamplingConfig, StreamConfig
from ..videossm_core.plot import plot_history
from ..videossm_core.state import StateFileError, StreamState
from ._files import OUTPUT_TAG, check_relative_name, output_path, resolve_state_file, state_file_choices
from ._types import CATEGORY, VideoSSMModel, VideoSSMState


STATES_ROUTE = "/videossm/states"
_routes_added = False


def add_routes() -> None:
    """GET /videossm/states: the Load State list as it is now. The frontend reads a combo's options once
    per page load, so without this a state written by a run (or Cancel) is not offered until a reload."""
    global _routes_added
    if _routes_added:
        return
    from aiohttp import web
    from server import PromptServer

    @PromptServer.instance.routes.get(STATES_ROUTE)
    async def list_states(request):
        return web.json_response(state_file_choices())

    _routes_added = True


class VideoSSMNewStream(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMNewStream",
            display_name="VideoSSM New Stream",
            category=CATEGORY,
            description="A fresh stream state: the local window (sink + recent frames), the global memory and "
                        "how positions are counted. All lengths are latent frames (1 latent frame = 4 video frames).",
            inputs=[
                VideoSSMModel.Input("model", tooltip="The video model, from VideoSSM Model Loader."),
                io.Int.Input("window_frames", default=12, min=2, max=64,
                             tooltip="How much recent video the model looks at directly, in latent frames (1 = 4 video "
                                     "frames; the anchor frames included). More = steadier but slower. LongLive: 12."),
                io.Int.Input("sink_frames", default=3, min=0, max=30, step=3,
                             tooltip="How many of the very first latent frames stay in view for the whole video, as an "
                                     "anchor for the look of the scene (a multiple of 3). LongLive: 3."),
                io.Boolean.Input("global_memory", default=True,
                                 tooltip="On: frames that scroll out of the window are remembered in a compact "
                                         "long-term memory (VideoSSM), so the video stays consistent for minutes. "
                                         "Off: the model only sees the window (plain LongLive)."),
                io.Combo.Input("memory_update", options=["auto", "chunkwise", "recurrent", "fla"], default="auto",
                               tooltip="Which code updates the long-term memory. All give the same video; only speed "
                                       "differs. Leave on auto (the fastest available). chunkwise: fast on any "
                                       "device; recurrent: slow, for checking; fla: needs an NVIDIA GPU and "
                                       "pip install fla-core."),
                io.Float.Input("router_horizon_seconds", default=0.0, min=0.0, max=36000.0, step=1.0,
                               tooltip="Over how many seconds the model leans more and more on its long-term memory "
                                       "(and less on the window). 0 = what the model was trained with (best); "
                                       "another value overrides it."),
                io.Combo.Input("position_mode", options=["unbounded", "absolute"], default="unbounded",
                               tooltip="unbounded: videos of any length (hours). absolute: exactly as the models were "
                                       "trained, but stops after about 256 s."),
                io.Float.Input("guidance", default=1.0, min=1.0, max=20.0, step=0.1,
                               tooltip="How strongly to follow the prompt (and avoid the negative prompt). 1 = "
                                       "off, the right value for fast 4-step models such as LongLive; higher "
                                       "doubles the work."),
            ],
            outputs=[VideoSSMState.Output(display_name="state")],
        )

    @classmethod
    def validate_inputs(cls, window_frames, sink_frames):
        if window_frames is None or sink_frames is None:  # linked: known only at run time
            return True
        try:
            StreamConfig(window_frames=window_frames, sink_frames=sink_frames)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model, window_frames, sink_frames, global_memory, memory_update, router_horizon_seconds,
                position_mode, guidance) -> io.NodeOutput:
        stream = StreamConfig(window_frames=window_frames, sink_frames=sink_frames, memory=global_memory,
                              memory_update=memory_update, position_mode=position_mode,
                              router_horizon_frames=(max(1, round(router_horizon_seconds * model.fps / 4))
                                                     if router_horizon_seconds > 0 else None))  # None: the model's
        state = StreamState.new(model.model.config, stream, SamplingConfig(guidance_scale=guidance))
        return io.NodeOutput(state)


class VideoSSMSaveState(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMSaveState",
            display_name="VideoSSM Save State",
            category=CATEGORY,
            description="Saves a stream state (caches, memory, decoder caches, position) to output/videossm as one "
                        "safetensors file, to continue the video later.",
            inputs=[VideoSSMState.Input("state", tooltip="The stream to save (e.g. the sampler's state output)."),
                    io.String.Input("filename_prefix", default="videossm/state",
                                    tooltip="Where in ComfyUI's output folder to save it; a number is added.")],
            outputs=[],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        if filename_prefix is None:  # linked: known only at run time
            return True
        try:
            check_relative_name(filename_prefix, "filename prefix")
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, state, filename_prefix) -> io.NodeOutput:
        path, subfolder, filename = output_path(filename_prefix, ".safetensors")
        state.save(path)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {subfolder}/{filename}{OUTPUT_TAG}\n{state.summary()}"))


class VideoSSMLoadState(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMLoadState",
            display_name="VideoSSM Load State",
            category=CATEGORY,
            description="Loads a stream state from input/videossm or output/videossm.",
            inputs=[io.Combo.Input("state_file", options=state_file_choices(),
                                    tooltip="A saved stream from input/videossm, or from output/videossm "
                                            "(marked [output]): every video the sampler makes has one next to it.")],
            outputs=[VideoSSMState.Output(display_name="state")],
        )

    @classmethod
    def validate_inputs(cls, state_file):
        if state_file is None:  # linked: known only at run time
            return True
        try:
            resolve_state_file(state_file)
        except (ValueError, FileNotFoundError) as err:
            return str(err)
        return True

    @classmethod
    def fingerprint_inputs(cls, state_file, **_):
        import os

        try:
            return os.path.getmtime(resolve_state_file(state_file))
        except (ValueError, OSError):
            return float("nan")

    @classmethod
    def execute(cls, state_file) -> io.NodeOutput:
        try:
            state = StreamState.load(resolve_state_file(state_file))
        except StateFileError as err:
            raise ValueError(str(err)) from None
        return io.NodeOutput(state)


class VideoSSMInspectState(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMInspectState",
            display_name="VideoSSM Inspect State",
            category=CATEGORY,
            description="Plots the router weight, per-layer memory norms, how much the memory's read adds to each "
                        "layer's attention output, and window occupancy over the stream's chunks, and summarises the "
                        "state.",
            inputs=[VideoSSMState.Input("state", tooltip="The stream to look into (e.g. the sampler's state output).")],
            outputs=[io.Image.Output(display_name="plot"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, state) -> io.NodeOutput:
        plot = torch.from_numpy(plot_history(state))[None]
        summary = state.summary()
        return io.NodeOutput(plot, summary, ui=ui.PreviewText(summary))
