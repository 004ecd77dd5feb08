"""Training data: world clips and their cached latents, prompt sources, and text conditioning.

Three kinds of data feed the stages:
- the VAE trains on pixels rendered on the fly from the procedural world (``world_batch``);
- the teacher trains on latents of world clips, encoded once by the demo VAE and cached in one
  safetensors file (``LatentDataset``); clips are a little longer than a training window so windows can
  also start mid-clip (chunk-aligned), which is what the teacher sees later when it judges windows
  of a long stage-2 rollout;
- the distillation stages are data-free: they need prompts only (``PromptSource``), from the world's
  grammar or, at real scale, from a prompt file; stage 2 draws prompt *schedules* with switches on
  chunk boundaries.

Every draw is keyed by (seed, step, global sample index) through ``distributed.sample_seed``, so a
sample is the same whichever rank handles it and after a resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..demo import world
from .distributed import DistEnv, barrier, sample_seed


# ---------------------------------------------------------------------------------------------- pixels

def frames_to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 ``[T, H, W, 3]`` or ``[B, T, H, W, 3]`` -> float32 ``[B, 3, T, H, W]`` in [-1, 1]."""
    a = np.asarray(frames)
    if a.ndim == 4:
        a = a[None]
    return torch.from_numpy(a).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: Tensor) -> np.ndarray:
    """float ``[B, 3, T, H, W]`` in [-1, 1] -> uint8 ``[B, T, H, W, 3]``."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()


def _object_centre(frame: np.ndarray) -> tuple[int | None, int | None]:
    """(row, column) of the foreground's centroid in a uint8 frame (background = per-row median)."""
    img = frame.astype(np.float32)
    mask = np.abs(img - np.median(img, axis=1, keepdims=True)).max(-1) > 36
    if not mask.any():
        return None, None
    ys, xs = np.nonzero(mask)
    return int(ys.mean()), int(xs.mean())


def foreground_masks(frames: np.ndarray, threshold: float = 36.0) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> bool ``[T, H, W]``: pixels that differ from their row's median, i.e. the
    object (the world's backgrounds are constant along rows; the object covers less than half a row)."""
    img = frames.astype(np.float32)
    return np.abs(img - np.median(img, axis=2, keepdims=True)).max(-1) > threshold


def world_batch(seed: int, step: int, indices: Sequence[int], num_frames: int, height: int, width: int,
                crop: int | None = None, object_crop_prob: float = 0.75, with_masks: bool = False,
                markings: bool = False) -> tuple[Tensor, list[str]] | tuple[Tensor, list[str], Tensor]:
    """Freshly rendered world clips for the given global sample indices.

    Returns frames ``[b, 3, num_frames, crop or H, crop or W]`` in [-1, 1] and the prompts. ``crop``
    takes a square crop (the VAE is convolutional; crops make its training steps cheaper), centred
    near the object with probability ``object_crop_prob``, anywhere otherwise. ``with_masks`` also
    returns the object masks ``[b, 1, T, h, w]`` (float 0/1), computed on the whole frames before
    cropping (a crop around the object would fool the row-median background model). ``markings`` draws the
    objects with the world's hidden per-scene marking (the memory benchmark's world).
    """
    clips, prompts, masks = [], [], []
    for i in indices:
        rng = np.random.default_rng(sample_seed(seed, step, i, "world"))
        frames, prompt = (world.sample_clip(rng, num_frames, height, width, markings=True) if markings
                          else world.sample_clip(rng, num_frames, height, width))
        mask = foreground_masks(frames) if with_masks else None
        if crop is not None and crop < min(height, width):
            cy, cx = _object_centre(frames[len(frames) // 2]) if rng.random() < object_crop_prob else (None, None)
            if cy is None:  # anywhere
                y = int(rng.integers(0, height - crop + 1))
                x = int(rng.integers(0, width - crop + 1))
            else:  # around the object, with jitter, so most crops teach the object rather than flat background
                y = int(np.clip(cy - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, height - crop))
                x = int(np.clip(cx - crop // 2 + rng.integers(-crop // 4, crop // 4 + 1), 0, width - crop))
            frames = frames[:, y:y + crop, x:x + crop]
            mask = mask[:, y:y + crop, x:x + crop] if with_masks else None
        clips.append(frames)
        prompts.append(prompt)
        masks.append(mask)
    out = frames_to_tensor(np.stack(clips))
    if with_masks:
        return out, prompts, torch.from_numpy(np.stack(masks)).float()[:, None]
    return out, prompts


# ---------------------------------------------------------------------------------------------- latents

@dataclass
class LatentDataset:
    """Cached clip latents ``[N, C, F_total, h, w]`` (stored float16) with one prompt per clip."""

    latents: Tensor
    prompts: list[str]
    fps: int = 16
    height: int = 64
    width: int = 64
    masks: Tensor | None = None  # [N, 1, F_total, h, w] uint8: latent pixels the object touches (optional)

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def frames_per_clip(self) -> int:
        return self.latents.shape[2]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        meta = {"prompts": json.dumps(self.prompts), "fps": str(self.fps), "height": str(self.height),
                "width": str(self.width), "format": "videossm-latent-dataset"}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        save_file({"latents": self.latents.half().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentDataset":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            latents = f.get_tensor("latents")
        return cls(latents, json.loads(meta["prompts"]), int(meta.get("fps", 16)),
                   int(meta.get("height", 64)), int(meta.get("width", 64)))

    def batch(self, seed: int, step: int, indices: Sequence[int], num_frames: int,
              offset_align: int = 3, p_clip_start: float = 0.5) -> tuple[Tensor, list[str]]:
        """Windows of ``num_frames`` latent frames for the given global sample indices.

        A window starts at the clip's first frame with probability ``p_clip_start``, otherwise at a
        random later multiple of ``offset_align`` (a chunk boundary) that still fits.
        Returns float32 latents ``[b, C, num_frames, h, w]`` and the prompts.
        """
        if num_frames > self.frames_per_clip:
            raise ValueError(f"windows of {num_frames} frames do not fit clips of {self.frames_per_clip}")
        offsets = list(range(offset_align, self.frames_per_clip - num_frames + 1, offset_align))
        out, prompts, masks = [], [], []
        for i in indices:
            rng = np.random.default_rng(sample_seed(seed, step, i, "latent-batch"))
            clip = int(rng.integers(len(self)))
            start = 0
            if offsets and rng.random() >= p_clip_start:
                start = int(rng.choice(offsets))
            out.append(self.latents[clip, :, start:start + num_frames].float())
            prompts.append(self.prompts[clip])
            if self.masks is not None:
                masks.append(self.masks[clip, :, start:start + num_frames].float())
        self.last_masks = torch.stack(masks) if masks else None  # [b, 1, F, h, w] for the same windows
        return torch.stack(out), prompts


def pool_masks_to_latents(mask: Tensor, spatial_stride: int, dilate: int = 0) -> Tensor:
    """Video-frame object masks ``[B, 1, T, H, W]`` (T = 1 + 4k) -> latent resolution ``[B, 1, F, H/s, W/s]``
    uint8: a latent frame covers its video frames (frame 0 alone, then 4 each); dilated by ``dilate``."""
    first = mask[:, :, :1]
    rest = mask[:, :, 1:].unflatten(2, ((mask.shape[2] - 1) // 4, 4)).amax(3)
    m = torch.cat([first, rest], 2).float()
    m = torch.nn.functional.max_pool3d(m, kernel_size=(1, spatial_stride, spatial_stride))
    if dilate:
        k = 2 * dilate + 1
        m = torch.nn.functional.max_pool3d(m, kernel_size=(1, k, k), stride=1, padding=(0, dilate, dilate))
    return m.byte()


def latent_object_masks(num_clips: int, latent_frames: int, height: int, width: int, seed: int,
                        dilate: int = 1, spatial_stride: int = 8, markings: bool = False) -> Tensor:
    """Where the object is, at latent resolution, for the clips ``encode_world_dataset`` encodes with the
    same arguments (they are re-rendered: rendering is cheap, encoding is not). ``[N, 1, F, H/s, W/s]`` uint8."""
    num_video = 1 + 4 * (latent_frames - 1)
    out = []
    for i in range(num_clips):
        _, _, mask = world_batch(seed, 0, [i], num_video, height, width, with_masks=True,
                                 markings=markings)  # [1, 1, T, H, W]
        out.append(pool_masks_to_latents(mask, spatial_stride, dilate))
    return torch.cat(out)


@torch.no_grad()
def encode_world_dataset(vae, num_clips: int, latent_frames: int, height: int, width: int, seed: int,
                         batch_size: int = 8, progress: Callable[[int, int], None] | None = None,
                         markings: bool = False) -> LatentDataset:
    """Render ``num_clips`` world clips of ``1 + 4 (latent_frames - 1)`` video frames and encode them
    (``markings``: the marked world's, each scene with its hidden marking).

    Latents are the VAE's normalised posterior means, ``[N, C, latent_frames, H/8, W/8]``.
    """
    num_video = 1 + 4 * (latent_frames - 1)
    parts, prompts = [], []
    for start in range(0, num_clips, batch_size):
        idx = range(start, min(num_clips, start + batch_size))
        frames, p = world_batch(seed, 0, idx, num_video, height, width, markings=markings)
        parts.append(vae.encode(frames.to(vae.device, vae.dtype)).float().cpu())
        prompts += p
        if progress is not None:
            progress(len(prompts), num_clips)
    return LatentDataset(torch.cat(parts), prompts, 16, height, width)


def cached_world_dataset(path: str | os.PathLike, vae, env: DistEnv, **kwargs) -> LatentDataset:
    """Load the latent cache at ``path``, building it first (on rank 0) if it does not exist."""
    path = Path(path)
    if env.is_main and not path.is_file():
        encode_world_dataset(vae, **kwargs).save(path)
    barrier(env)
    return LatentDataset.load(path)


# ---------------------------------------------------------------------------------------------- memory episodes

def latent_frame_of(video_frame: int) -> int:
    """The latent frame that holds ``video_frame`` (Wan VAE: latent 0 is video frame 0, then 4 video frames each)."""
    return 0 if video_frame <= 0 else (video_frame + 3) // 4


@dataclass
class EpisodeDataset:
    """Encoded memory episodes of the world (``world.sample_memory_episode``): scenes whose hidden marking leaves
    the view for longer than the local window and comes back (a revisited prompt, an object re-entering a world
    wider than the frame).

    ``latents`` ``[N, C, F, h, w]`` (stored float16); ``masks`` ``[N, 1, F, h, w]`` uint8, the latent pixels the
    object touches; per episode, in latent frames, ``schedules[i] = [(frame, prompt), ...]`` (the first at 0, the
    rest on chunk starts) and ``events[i] = [{"kind", "frame", "hidden_frames", "prompt", "marking"}, ...]`` (frame:
    the latent frame where the marking is back in view; hidden_frames in video frames). ``marking_masks``
    ``[N, 1, F, h, w]`` uint8: the latent pixels the marking band touches (None in caches written before them:
    ``with_marking_masks`` adds them).
    """

    latents: Tensor
    masks: Tensor
    schedules: list[list[tuple[int, str]]]
    events: list[list[dict]]
    fps: int = 16
    marking_masks: Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        meta = {"format": "videossm-memory-episodes", "fps": str(self.fps),
                "schedules": json.dumps(self.schedules), "events": json.dumps(self.events)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tensors = {"latents": self.latents.half().contiguous(), "masks": self.masks.contiguous()}
        if self.marking_masks is not None:
            tensors["marking_masks"] = self.marking_masks.contiguous()
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EpisodeDataset":
        from safetensors.torch import load_file
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "videossm-memory-episodes":
            raise ValueError(f"{path} is not a memory-episode cache")
        tensors = load_file(str(path))
        schedules = [[(int(f), str(p)) for f, p in sched] for sched in json.loads(meta["schedules"])]
        return cls(tensors["latents"], tensors["masks"], schedules, json.loads(meta["events"]), int(meta.get("fps", 16)),
                   tensors.get("marking_masks"))

    @classmethod
    def interleave(cls, shards: Sequence["EpisodeDataset"]) -> "EpisodeDataset":
        """Shards of ranks that encoded episodes ``rank, rank + W, ...`` -> one dataset in episode order."""
        order = [(i, r) for r, shard in enumerate(shards) for i in range(len(shard))]
        order.sort(key=lambda ir: ir[0] * len(shards) + ir[1])
        pick = lambda name: [getattr(shards[r], name)[i] for i, r in order]  # noqa: E731
        marked = all(s.marking_masks is not None for s in shards)
        return cls(torch.stack(pick("latents")), torch.stack(pick("masks")), pick("schedules"), pick("events"),
                   shards[0].fps, torch.stack(pick("marking_masks")) if marked else None)

    def with_marking_masks(self, seed: int, height: int, width: int, spatial_stride: int,
                           kinds: Sequence[str] = ("revisit", "return"), chunk_frames: int = 3) -> "EpisodeDataset":
        """This cache with its marking masks, re-planned from the seed it was encoded with (episode i is
        ``encode_memory_episodes``' episode i; planning and masks need no rendering or VAE)."""
        if self.marking_masks is not None:
            return self
        num_latent = self.latents.shape[2]
        num_video = 1 + 4 * (num_latent - 1)
        out = []
        for i in range(len(self)):
            rng = np.random.default_rng(sample_seed(seed, 0, i, "memory-episode"))
            ep = world.memory_schedule(rng, num_video, height, width, kinds=tuple(kinds), chunk_frames=4 * chunk_frames)
            if [(latent_frame_of(f), p) for f, p in ep.schedule] != self.schedules[i]:
                raise ValueError(f"episode {i} does not re-plan to the cached one: wrong seed, size or kinds")
            out.append(_latent_marking_mask(ep, num_video, spatial_stride))
        return dataclasses.replace(self, marking_masks=torch.cat(out))


@torch.no_grad()
def encode_memory_episodes(vae, episodes: int | Sequence[int], latent_frames: int, height: int, width: int,
                           seed: int, kinds: Sequence[str] = ("revisit", "return"), chunk_frames: int = 3,
                           progress: Callable[[int, int], None] | None = None) -> EpisodeDataset:
    """Render memory episodes of ``1 + 4 (latent_frames - 1)`` video frames and encode them (normalised posterior
    means), with their object masks and their schedules and events in latent frames. ``episodes``: how many, or
    which indices (episode i is the same whoever encodes it: a share per rank)."""
    indices = list(range(episodes)) if isinstance(episodes, int) else list(episodes)
    num_episodes = len(indices)
    num_video = 1 + 4 * (latent_frames - 1)
    latents, masks, marking_masks, schedules, events = [], [], [], [], []
    for n, i in enumerate(indices):
        rng = np.random.default_rng(sample_seed(seed, 0, i, "memory-episode"))
        ep = world.sample_memory_episode(rng, num_video, height, width, kinds=tuple(kinds),
                                         chunk_frames=4 * chunk_frames)
        latents.append(vae.encode(frames_to_tensor(ep.frames).to(vae.device, vae.dtype)).float().cpu())
        fg = torch.from_numpy(foreground_masks(ep.frames))[None, None]  # [1, 1, T, H, W]
        masks.append(pool_masks_to_latents(fg, vae.spatial_stride, dilate=1))
        marking_masks.append(_latent_marking_mask(ep, num_video, vae.spatial_stride))
        schedules.append([(latent_frame_of(f), p) for f, p in ep.schedule])
        events.append([{"kind": e.kind, "frame": latent_frame_of(e.frame), "hidden_frames": int(e.hidden_frames),
                        "prompt": e.prompt, "marking": e.marking} for e in ep.events])
        if progress is not None:
            progress(n + 1, num_episodes)
    return EpisodeDataset(torch.cat(latents), torch.cat(masks), schedules, events,
                          marking_masks=torch.cat(marking_masks))


def _latent_marking_mask(episode, num_video: int, spatial_stride: int) -> Tensor:
    """The marking band's pixels at latent resolution ``[1, 1, F, h, w]`` uint8 (not dilated: the loss is on the
    band itself)."""
    band = torch.from_numpy(world.render_marking_masks(episode, num_video))[None, None]
    return pool_masks_to_latents(band, spatial_stride)


# ---------------------------------------------------------------------------------------------- prompts

class PromptSource:
    """Where the data-free stages get their prompts.

    ``prompt(seed, step, index)`` draws one prompt for a sample; ``switch(prompt, seed, step, index)``
    draws the prompt a stream switches to (a variation of the current one where that makes sense).
    """

    def prompt(self, seed: int, step: int, index: int) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def switch(self, prompt: str, seed: int, step: int, index: int) -> str:  # pragma: no cover
        raise NotImplementedError


class WorldPrompts(PromptSource):
    """Prompts of the procedural world; a switch changes each attribute with probability 1/2 (at least one)."""

    def prompt(self, seed: int, step: int, index: int) -> str:
        return world.sample_spec(np.random.default_rng(sample_seed(seed, step, index, "prompt"))).prompt()

    def switch(self, prompt: str, seed: int, step: int, index: int) -> str:
        rng = np.random.default_rng(sample_seed(seed, step, index, "switch"))
        spec = world.parse_prompt(prompt)
        options = {"colour": list(world.COLOURS), "shape": list(world.SHAPES), "motion": list(world.MOTIONS),
                   "background": list(world.BACKGROUNDS)}
        change = [rng.random() < 0.5 for _ in options]
        if not any(change):
            change[int(rng.integers(len(options)))] = True
        updates = {}
        for (name, choices), flag in zip(options.items(), change):
            if flag:
                current = getattr(spec, name)
                updates[name] = str(rng.choice([c for c in choices if c != current]))
        return spec.replace(**updates).prompt()


class FilePrompts(PromptSource):
    """One prompt per line of a text file (Self-Forcing / LongLive style, e.g. VidProM extended)."""

    def __init__(self, path: str | os.PathLike):
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        self.prompts = [line for line in lines if line and not line.startswith("#")]
        if not self.prompts:
            raise ValueError(f"{path} holds no prompts")

    def _pick(self, seed: int, step: int, index: int, purpose: str) -> str:
        rng = np.random.default_rng(sample_seed(seed, step, index, purpose))
        return self.prompts[int(rng.integers(len(self.prompts)))]

    def prompt(self, seed: int, step: int, index: int) -> str:
        return self._pick(seed, step, index, "prompt")

    def switch(self, prompt: str, seed: int, step: int, index: int) -> str:
        return self._pick(seed, step, index, "switch")


# ---------------------------------------------------------------------------------------------- text

class TextConditioner:
    """Frozen prompt -> ``[B, text_len, text_dim]`` conditioning with a per-prompt cache.

    Wraps any encoder with ``encode(list[str]) -> [B, L, D]`` (``DemoTextEncoder``, ``UMT5TextEncoder``).
    The unconditional input for classifier-free guidance is the empty prompt (all zeros for the demo
    encoder, the padded empty-string embedding for UMT5).
    """

    def __init__(self, encoder, text_len: int, device: str | torch.device = "cpu", max_cache: int = 4096):
        self.encoder = encoder
        self.text_len = int(text_len)
        self.device = torch.device(device)
        self.max_cache = max_cache
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.max_cache:
                self._cache.clear()
            emb = self.encoder.encode(list(missing)).float()
            if emb.shape[1] < self.text_len:
                emb = torch.nn.functional.pad(emb, (0, 0, 0, self.text_len - emb.shape[1]))
            for p, e in zip(missing, emb):
                self._cache[p] = e.cpu()
        return torch.stack([self._cache[p] for p in prompts]).to(self.device)

    def uncond(self, batch: int) -> Tensor:
        return self([""] * batch)
