"""The student's self-rollout (Self-Forcing): generate chunk by chunk on its own outputs, with the cache.

Per chunk, exactly as the sampler does at inference (``videossm_core.sampling``): start from noise,
run the warped few-step schedule (predict x0, re-noise to the next level with fresh noise), then run
the chunk's clean x0 once more at the context timestep (0) to write its K/V into the window. For
training, *stochastic gradient truncation*: the chunk's output is its x0 prediction at a random exit
step; only that model call runs with gradients, the earlier steps and the clean pass run under
``no_grad`` (the cache stores K/V detached anyway, so no gradient crosses chunk boundaries through it).

With the global memory trained (stage 2) two more things keep their graph:
- the clean pass runs with gradients, so the memory gates it caches (``g``, ``beta``) stay attached to
  the parameters that computed them;
- the memory write of an evicted chunk, which happens inside the chunk's *first* model call, is
  recomputed with gradients when that call ran under ``no_grad`` (``_rewrite_memory``), so the loss
  reaches the gate parameters through the state. The state and gates are float32.
Between training windows ``detach_state`` cuts the graphs; stage 2 keeps the memory's and the cached gates' for
a few windows (its ``memory_bptt_windows``), since a chunk is evicted windows after it is written.

A prompt switch is LongLive's re-cache, as ``StreamSampler.switch_prompt_inplace`` does it: load the
new prompt's cross-attention K/V, recompute the window's non-sink frames from their clean latents at
the context timestep; the sink and the global memory are kept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..config import SamplingConfig, StreamConfig
from ..model.attention import plan_cache
from ..model.transformer import CausalWanModel
from ..sampling import remember_recent_latents_inplace, warped_timesteps
from ..state import BranchState, StreamState

NoiseFn = Callable[[int, int], Tensor]  # (absolute chunk index, step index) -> [B, C, chunk, h, w]


@dataclass
class RolloutConfig:
    stream: StreamConfig
    sampling: SamplingConfig
    train_memory: bool = False  # keep gate/memory-write graphs (stage 2)


class SelfRollout:
    """Runs a student's self-rollout on a ``StreamState`` (branch "cond" only: the student needs no CFG)."""

    def __init__(self, model: CausalWanModel, config: RolloutConfig):
        self.model = model
        self.config = config
        self.timesteps = warped_timesteps(config.sampling)

    # ------------------------------------------------------------------ state
    def new_state(self, batch: int, context: Tensor, seed: int = 0) -> StreamState:
        sampling = SamplingConfig(**{**self.config.sampling.to_dict(), "guidance_scale": 1.0})
        state = StreamState.new(self.model.config, self.config.stream, sampling, seed=seed, batch=batch)
        with torch.no_grad():
            self.model.set_prompt_inplace(state.branches["cond"], context)
        return state

    def switch_prompt(self, state: StreamState, context: Tensor) -> None:
        """LongLive re-cache under a new prompt (per-sample contexts ``[B, L, D]``).

        With the memory trained and grad on, the re-cached frames' gates keep their graph (to the gate parameters
        only; the calls' outputs are dropped), so frames evicted after a switch still teach the write side."""
        branch = state.branches["cond"]
        with torch.no_grad():
            self.model.set_prompt_inplace(branch, context)
        if state.recent_latents is None:
            return
        keep_gate_graph = self._memory_trained(state) and torch.is_grad_enabled()
        chunk = self.config.stream.chunk_frames
        with torch.set_grad_enabled(keep_gate_graph):
            for offset in range(0, state.recent_latents.shape[2], chunk):
                latents = state.recent_latents[:, :, offset:offset + chunk]
                self._call(state, latents, self.config.sampling.context_timestep, state.recent_start + offset)
        if not keep_gate_graph:  # the gates were replaced in place, without a graph: drop the old ones' graph
            for layer in branch.layers:
                if layer.g is not None:
                    layer.g, layer.beta = layer.g.detach(), layer.beta.detach()

    @staticmethod
    def detach_state(state: StreamState, keep_memory_graph: bool = False) -> None:
        """Cut the graphs the state carries before the next training window. ``keep_memory_graph`` keeps the
        memory state's and the cached gates' (graphs to the memory parameters only, see ``WanSelfAttention``):
        a chunk's gates are cached when it is written and used when it is evicted, windows later, so only a
        graph carried that far lets the loss reach the write side (W_alpha, W_beta, A_log, the gate biases)."""
        names = ("k", "v") if keep_memory_graph else ("k", "v", "g", "beta", "memory")
        for branch in state.branches.values():
            for layer in branch.layers:
                for name in names:
                    t = getattr(layer, name)
                    if t is not None:
                        setattr(layer, name, t.detach())
        if state.recent_latents is not None:
            state.recent_latents = state.recent_latents.detach()

    # ------------------------------------------------------------------ model calls
    def _call(self, state: StreamState, x: Tensor, t: float, start: int) -> Tensor:
        timestep = torch.full((x.shape[0], x.shape[2]), float(t), device=x.device)
        flow, state.next_frame = self.model.forward_stream(x, timestep, state.branches["cond"], start,
                                                           state.next_frame, state.stream, state.counters)
        return flow.float()

    def _memory_trained(self, state: StreamState) -> bool:
        return self.config.train_memory and state.memory_active

    def _eviction_snapshot(self, branch: BranchState, start: int, num_frames: int, next_frame: int,
                           hw: tuple[int, int]) -> list[tuple] | None:
        """What the coming first call of a chunk will write into the memory (to redo it with grad)."""
        if start != next_frame:
            return None
        ph, pw = self.model.config.patch_size[1:]
        grid = (hw[0] // ph, hw[1] // pw)
        plan, _, _ = plan_cache(branch.slot_frames, start, num_frames, next_frame, grid[0] * grid[1], grid,
                                self.model.config, self.config.stream, device=self.model.device)
        if plan.evict_tokens is None:
            return None
        idx = plan.evict_tokens
        return [(layer.memory, layer.k[:, idx], layer.v[:, idx], layer.g[:, idx], layer.beta[:, idx])
                for layer in branch.layers]

    def _rewrite_memory(self, branch: BranchState, snapshot: list[tuple]) -> None:
        """Redo the eviction write with gradients (same values as the ``no_grad`` write it replaces)."""
        for block, layer, (memory, k, v, g, beta) in zip(self.model.blocks, branch.layers, snapshot):
            layer.memory = block.self_attn.memory.write(memory, k, v, g, beta)

    # ------------------------------------------------------------------ chunks
    def run_chunks(self, state: StreamState, num_chunks: int, noise_fn: NoiseFn, exit_steps: Sequence[int],
                   grad: bool | Sequence[bool] = True) -> Tensor:
        """Generate ``num_chunks`` chunks, advancing ``state`` in place.

        ``exit_steps[i]``: index of the denoising step whose x0 prediction is chunk i's output.
        ``grad`` (per chunk or for all): whether chunk i's exit step keeps its graph.
        Returns ``[B, C, num_chunks * chunk_frames, h, w]`` (graph attached where ``grad``).
        """
        cfg = self.config
        chunk = cfg.stream.chunk_frames
        grads = [grad] * num_chunks if isinstance(grad, bool) else list(grad)
        outputs = []
        branch = state.branches["cond"]
        for i in range(num_chunks):
            chunk_idx = state.next_frame // chunk
            start = state.next_frame
            exit_step = int(exit_steps[i])
            with_grad = grads[i] and torch.is_grad_enabled()
            # The memory's writes keep their graph whenever grad is on, even for a chunk whose output keeps none:
            # later windows' losses reach the gates through them (stage 2's carried graph).
            memory_grad = torch.is_grad_enabled() and self._memory_trained(state)
            device = self.model.device
            x = noise_fn(chunk_idx, 0).to(device)
            hw = tuple(x.shape[-2:])
            if state.latent_shape is None:
                state.latent_shape = (x.shape[1], *hw)
            x0 = None
            for k, t in enumerate(self.timesteps[:exit_step + 1]):
                first_call = k == 0
                grad_here = with_grad and k == exit_step
                snapshot = None
                if first_call and memory_grad and not grad_here:
                    snapshot = self._eviction_snapshot(branch, start, chunk, state.next_frame, hw)
                ctx = contextlib.nullcontext() if grad_here else torch.no_grad()
                with ctx:
                    flow = self._call(state, x, t, start)
                    x0 = x - (t / cfg.sampling.num_train_timesteps) * flow
                if snapshot is not None:
                    self._rewrite_memory(branch, snapshot)
                if k < exit_step:
                    s_next = self.timesteps[k + 1] / cfg.sampling.num_train_timesteps
                    x = (1.0 - s_next) * x0.detach() + s_next * noise_fn(chunk_idx, k + 1).to(device)
            outputs.append(x0)
            # The clean pass writes the chunk into the window (and caches its memory gates).
            ctx = contextlib.nullcontext() if memory_grad else torch.no_grad()
            with ctx:
                self._call(state, x0.detach(), cfg.sampling.context_timestep, start)
            remember_recent_latents_inplace(state, x0.detach(), start)
        return torch.cat(outputs, dim=2)

    # ------------------------------------------------------------------ teacher forcing (ODE warm start)
    def teacher_forced_loss(self, state: StreamState, noisy: dict[int, Tensor], clean: Tensor) -> Tensor:
        """Regression of a few-step student onto teacher ODE pairs, through the streaming path.

        ``noisy[k]``: the trajectory's state at denoising step k's noise level, ``[B, C, F, h, w]``;
        ``clean``: the teacher's final sample. Chunk by chunk, every step predicts x0 from the
        trajectory state (with grad) and is regressed onto the teacher's x0; then the teacher's clean
        chunk is written into the cache (teacher forcing). Returns the mean MSE.
        """
        chunk = self.config.stream.chunk_frames
        losses = []
        for c in range(clean.shape[2] // chunk):
            start = state.next_frame
            target = clean[:, :, start:start + chunk]
            for k, t in enumerate(self.timesteps):
                x = noisy[k][:, :, start:start + chunk]
                flow = self._call(state, x, t, start)
                x0 = x - (t / self.config.sampling.num_train_timesteps) * flow
                losses.append((x0 - target).pow(2).mean())
            with torch.no_grad():
                self._call(state, target, self.config.sampling.context_timestep, start)
        return torch.stack(losses).mean()
