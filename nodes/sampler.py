"""The streaming sampler: generates chunk after chunk into an mp4 on disk, with a preview per chunk."""

from __future__ import annotations

import base64
import dataclasses
import io as bytes_io
import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.input_impl import VideoFromFile
from comfy_api.latest import io, ui
from PIL import Image

from ..videossm_core.generate import (DEFAULT_CHECKPOINT_SECONDS, generate_video, prefill_from_frames,
                                      stream_video_frames)
from ..videossm_core.schedule import ScheduleError, format_time
from ..videossm_core.vae import vae_from_state_dict
from ..videossm_core.video_io import VideoFileError, copy_mp4_prefix
from ._files import OUTPUT_TAG, STATE_FOLDER, _inside, check_relative_name, output_path
from ._types import CATEGORY, VideoSSMModel, VideoSSMSchedule, VideoSSMState


def denoising_steps(steps: int) -> tuple[float, ...]:
    """Self-Forcing's list generalised: 4 steps -> (1000, 750, 500, 250)."""
    return tuple(1000.0 * (1 - k / steps) for k in range(steps))


def streaming_vae(loaded, vae):
    """Our streaming Wan VAE: from ComfyUI's native VAE (same weights, decoded with persistent causal
    caches) or the one bundled with the demo model."""
    if vae is not None:
        first_stage = getattr(vae, "first_stage_model", None)
        if first_stage is None or getattr(vae, "latent_channels", 16) != loaded.model.config.in_dim:
            raise ValueError(f"this VAE does not fit the model (needs a Wan2.1 VAE with "
                             f"{loaded.model.config.in_dim} latent channels, e.g. wan_2.1_vae.safetensors)")
        try:
            return vae_from_state_dict(first_stage.state_dict(), dtype=loaded.model.dtype,
                                       device=loaded.model.device, source="the connected VAE")
        except ValueError as err:
            raise ValueError(f"the connected VAE cannot stream-decode: {err}") from None
    if loaded.vae is None:
        raise ValueError("connect a VAE (VAELoader with wan_2.1_vae.safetensors): this model has none of its own")
    return loaded.vae


def continue_stream_video(state, video_path: str) -> bool:
    """Start the new mp4 with the stream's video so far, so a continued stream is one file (the old
    one is left as it was). Only a video inside ComfyUI's output folder is read; without one (deleted,
    moved, or a stream from elsewhere) the new file holds the continuation alone. True if copied."""
    recorded = state.video.get("path") if isinstance(state.video, dict) else None
    if not isinstance(recorded, str) or not os.path.isfile(recorded) \
            or not _inside(folder_paths.get_output_directory(), recorded):
        return False
    try:
        copy_mp4_prefix(recorded, video_path, stream_video_frames(state))
    except (VideoFileError, OSError):
        return False
    return True


def _send(kind: str, data: dict) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(kind, data, PromptServer.instance.client_id)
    except Exception:  # a UI nicety; generation must not fail because no browser listens
        pass


PREVIEW_SIZE = 512  # the live preview's longer side at most, in pixels (as ComfyUI's own previews)
PREVIEW_QUALITY = 90


def preview_jpeg(frame) -> str:
    """The chunk's last frame as a small JPEG, base64 (for the `videossm.chunk` event)."""
    image = Image.fromarray(frame)
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = bytes_io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _send_chunk_event(node_id, event, fps: int) -> None:
    """Progress for the timeline's playhead, and the live preview for the sampler's player. The preview
    travels in this event, not on ComfyUI's preview channel: the frontend keeps the last image of that
    channel as the node's preview, and frontend 1.58's Nodes 2.0 draws it under our player (as a live
    image during the run, and loaded into a <video> after it, since the node's output is a video)."""
    _send("videossm.chunk", {
        "node": node_id, "chunk": event.chunk, "done": event.done, "total": event.total,
        "seconds": event.frames_written / fps, "prompt": event.prompt,
        "preview": {"type": "image/jpeg", "data": preview_jpeg(event.frames[-1])}})


def _send_stopped_event(node_id, video_path: str, subfolder: str, filename: str, state_path: str,
                        seconds: float) -> None:
    """Cancel: ComfyUI sends no `executed` for an interrupted node, so the browser would show no video.
    Name the partial mp4 and the state that continues it (both closed and consistent by now)."""
    if not os.path.isfile(video_path):
        return
    name = os.path.basename(state_path)
    state = (f"{name}{OUTPUT_TAG}" if subfolder == STATE_FOLDER else None) if os.path.isfile(state_path) else None
    _send("videossm.stopped", {
        "node": node_id, "video": {"filename": filename, "subfolder": subfolder, "type": "output"},
        "seconds": seconds, "state_file": state,
        "state_path": f"{subfolder}/{name}" if os.path.isfile(state_path) else None})


class VideoSSMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMSampler",
            display_name="VideoSSM Streaming Sampler",
            category=CATEGORY,
            description="Generates the video chunk by chunk (3 latent = 12 video frames), following the prompt "
                        "timeline. Each chunk is decoded and appended to an mp4 in output/, and the stream state is "
                        "checkpointed next to it, so Cancel keeps everything made so far and the state continues it.",
            inputs=[
                VideoSSMModel.Input("model", tooltip="The video model, from VideoSSM Model Loader."),
                VideoSSMState.Input("state", tooltip="Where the video starts: VideoSSM New Stream, or a saved "
                                                     "stream to continue (VideoSSM Load State)."),
                VideoSSMSchedule.Input("schedule", tooltip="The prompts over time, from VideoSSM Prompt Schedule."),
                io.Float.Input("seconds", default=60.0, min=0.5, max=36000.0, step=0.5,
                               tooltip="The video's length (what this run adds to the stream). The prompt "
                                       "timeline follows it; prompts after the end are skipped."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed: the same seed and settings give the same video."),
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Denoising steps per chunk: more is slower. Fast models such as LongLive are "
                                     "made for 4."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Video width in pixels. Wan 1.3B models are trained at 832x480."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Video height in pixels. Wan 1.3B models are trained at 832x480."),
                io.String.Input("filename_prefix", default="videossm/stream",
                                tooltip="Where in ComfyUI's output folder the mp4 (and its stream state) go; a "
                                        "number is added."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Turns the generated latents into pixels: the Wan2.1 VAE from Load VAE. The "
                                     "demo model brings its own."),
                io.Float.Input("checkpoint_every", default=DEFAULT_CHECKPOINT_SECONDS, min=0.0, max=3600.0, step=10.0,
                               optional=True,
                               tooltip="Seconds of generation between saves of the stream state next to the video "
                                       "(0 = after every chunk). It is always saved at the end and on Cancel. A "
                                       "full-size state is about 5 GB, so saves are spaced further apart when one "
                                       "is slow, keeping them under 5% of the run."),
            ],
            outputs=[
                VideoSSMState.Output(display_name="state"),
                io.Latent.Output(display_name="latent", tooltip="the latents of the cached window (last frames)"),
                io.Video.Output(display_name="video", tooltip="the mp4 on disk (memory does not grow with length)"),
                io.Image.Output(display_name="last_frames", tooltip="the last chunk's frames, for chaining"),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix, width, height):
        try:
            if filename_prefix is not None:  # None: linked, known only at run time
                check_relative_name(filename_prefix, "filename prefix")
        except ValueError as err:
            return str(err)
        if width is not None and height is not None and (width % 8 or height % 8):
            return f"width and height must be multiples of 8 (got {width}x{height})"
        return True

    @classmethod
    def execute(cls, model, state, schedule, seconds, seed, steps, width, height, filename_prefix,
                vae=None, checkpoint_every=DEFAULT_CHECKPOINT_SECONDS) -> io.NodeOutput:
        wan_vae = streaming_vae(model, vae)
        video_path, subfolder, filename = output_path(filename_prefix, ".mp4")
        state_path = video_path[: -len(".mp4")] + ".state.safetensors"
        run_state = state.clone()  # the input stays as ComfyUI cached it
        run_state.seed = seed
        run_state.sampling = dataclasses.replace(run_state.sampling, denoising_steps=denoising_steps(steps))
        missing = [p for p in schedule.schedule.prompts if p not in schedule.conditioning]
        if missing:
            raise ValueError(f"the schedule has no encoding for {missing[:3]}")

        def encode(prompt: str) -> torch.Tensor:
            if prompt == "" and schedule.negative is not None:
                return schedule.negative
            if prompt in schedule.conditioning:
                return schedule.conditioning[prompt]
            return torch.zeros_like(next(iter(schedule.conditioning.values())))  # empty negative prompt

        # the sampler owns the length: prompts the video never reaches are skipped, not an error
        timeline = schedule.schedule
        late = timeline.late_entries(seconds, continuing=run_state.next_frame > 0)
        warnings = [f"line {e.line}: the prompt at {format_time(e.time)} ({e.prompt[:40]!r}) starts after the "
                    f"video ends ({seconds:g} s) and is skipped; lengthen 'seconds' or use Fit on the timeline"
                    for e in late]
        for warning in warnings:
            logging.warning("VideoSSM sampler: %s", warning)
        timeline = timeline.without(late)
        appended = run_state.next_frame > 0 and continue_stream_video(run_state, video_path)
        # a generator: its checks (e.g. the schedule against the length) run at the first chunk, in the loop
        events = generate_video(model.model, wan_vae, encode, timeline, seconds, width, height,
                                video_path=video_path, state=run_state, seed=seed, state_path=state_path,
                                checkpoint_seconds=checkpoint_every, fps=model.fps, copy_state=False,
                                append_video=appended)
        pbar = None
        last = None
        interrupted = False
        try:
            for event in events:
                if pbar is None:
                    pbar = comfy.utils.ProgressBar(event.total)
                last = event
                # updating the bar also raises if the user pressed Cancel (between chunks); no preview
                # image on it: the chunk event carries ours
                pbar.update_absolute(event.done, event.total)
                _send_chunk_event(cls.hidden.unique_id, event, model.fps)
                comfy.model_management.throw_exception_if_processing_interrupted()
        except comfy.model_management.InterruptProcessingException:
            interrupted = True
            raise
        except ScheduleError as err:
            raise ValueError(f"prompt schedule, {err}") from None
        except OSError as err:  # e.g. a full disk: the saved state continues the stream, say how
            if not os.path.isfile(state_path):
                raise
            name = os.path.basename(state_path)
            how = (f"load '{name}{OUTPUT_TAG}' with VideoSSM Load State" if subfolder == STATE_FOLDER
                   else f"copy {subfolder}/{name} into input/{STATE_FOLDER}, load it with VideoSSM Load State")
            raise OSError(err.errno, f"{err.strerror or err}. To continue the stream (its video grows from "
                                     f"the last saved chunk), {how} into this sampler and queue it again") from err
        finally:
            events.close()  # closes the mp4 and keeps the state of every finished chunk
            if interrupted:
                done = last.frames_written / model.fps if last is not None else 0.0
                _send_stopped_event(cls.hidden.unique_id, video_path, subfolder, filename, state_path, done)
        out_state = last.state
        recent = out_state.recent_latents if out_state.recent_latents is not None else last.latents
        latent = {"samples": wan_vae.denormalize(recent.to(wan_vae.device)).float().cpu()}
        frames = torch.from_numpy(last.frames).float() / 255.0
        saved = ui.SavedResult(filename, subfolder, io.FolderType.output)
        shown = ui.PreviewVideo([saved]).as_dict()
        if warnings:
            shown["text"] = ["\n".join(f"warning: {w}" for w in warnings)]
        return io.NodeOutput(out_state, latent, VideoFromFile(video_path), frames, ui=shown)


class VideoSSMContinueFromClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoSSMContinueFromClip",
            display_name="VideoSSM Continue From Clip",
            category=CATEGORY,
            description="Starts a stream from existing frames (a clip, or one image): they are VAE-encoded and fed "
                        "into the window and memory, so the sampler continues the clip. Uses the last 12m-3 frames.",
            inputs=[
                VideoSSMModel.Input("model", tooltip="The video model, from VideoSSM Model Loader."),
                VideoSSMState.Input("state", tooltip="A new stream (VideoSSM New Stream)."),
                io.Image.Input("images", tooltip="The clip's frames (at least 9; a single image is repeated)."),
                VideoSSMSchedule.Input("schedule", tooltip="Its first prompt should describe the clip."),
                io.Vae.Input("vae", optional=True, tooltip="The Wan2.1 VAE from Load VAE; the demo model "
                                                          "brings its own."),
            ],
            outputs=[VideoSSMState.Output(display_name="state")],
        )

    @classmethod
    def execute(cls, model, state, images, schedule, vae=None) -> io.NodeOutput:
        wan_vae = streaming_vae(model, vae)
        if images.shape[0] == 1:
            images = images.repeat(9, 1, 1, 1)
        frames = images[..., :3].permute(3, 0, 1, 2)[None].float() * 2 - 1  # [1, 3, T, H, W] in [-1, 1]
        prompt = schedule.schedule.prompts[0]
        new_state = prefill_from_frames(model.model, wan_vae, state, frames, prompt, schedule.conditioning[prompt])
        return io.NodeOutput(new_state)
