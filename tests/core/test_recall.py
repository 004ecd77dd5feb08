"""Recall tuning (``videossm_core.training.recall``) at tiny size: the supervised streaming term reaches the memory's
write side through evictions many chunks back, each variant streams with its own memory, and the student file
records the stream it was tuned with."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from videossm_core.config import SamplingConfig, StreamConfig, get_preset
from videossm_core.demo.bundle import META_STREAM
from videossm_core.text import DemoTextEncoder
from videossm_core.training.checkpointing import LossLog
from videossm_core.training.data import EpisodeDataset, TextConditioner, latent_frame_of
from videossm_core.training.distributed import DistEnv
from videossm_core.training.recall import VARIANTS, RecallConfig, chunk_weights, episode_loss, train_recall
from videossm_core.training.rollout import RolloutConfig, SelfRollout

from .tiny import make_tiny_model

TINY = get_preset("tiny")
# The demo's stream (chunks of 3, a sink of 3, a 12-frame window: chunk c evicts chunk c - 3 from chunk 4 on) at tiny size.
STREAM = dict(VARIANTS["hybrid"], router_horizon_frames=24)
WRITE_SIDE = ("alpha_proj.weight", "alpha_proj.bias", "beta_proj.weight", "beta_proj.bias", "A_log")
A, B, X = ("a red circle bouncing on a dark background", "a blue square resting on a light background",
           "a green ring floating on a striped background")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conditioner() -> TextConditioner:
    return TextConditioner(DemoTextEncoder(text_len=TINY.text_len, text_dim=TINY.text_dim, seed=0).eval(), TINY.text_len)


def _episodes(n: int = 3, frames: int = 24) -> EpisodeDataset:
    """X -> A -> B -> A episodes with a per-episode pattern for A (what only a memory can bring back after B)."""
    gen = torch.Generator().manual_seed(0)
    latents = 0.3 * torch.randn(n, TINY.in_dim, frames, 4, 4, generator=gen)
    secret = torch.randn(n, TINY.in_dim, 1, 4, 4, generator=gen)
    latents[:, :, 3:9] += secret
    latents[:, :, 18:24] += secret
    masks = torch.zeros(n, 1, frames, 4, 4, dtype=torch.uint8)
    masks[..., 1:3, 1:3] = 1
    schedule = [(0, X), (3, A), (9, B), (18, A)]
    events = [{"kind": "revisit", "frame": 18, "hidden_frames": 36, "prompt": A, "marking": "red"}]
    return EpisodeDataset(latents, masks, [schedule] * n, [events] * n)


def _cfg(tmp_path, variant="hybrid", **kw) -> RecallConfig:
    stream = dict(VARIANTS[variant], router_horizon_frames=24)
    base = dict(workdir=str(tmp_path / variant), variant=variant, stream=stream, steps=2, batch_size=2, lr=1e-2,
                base_lr_scale=0.1, warmup=0, min_lr_ratio=1.0, episode_frames=24, checkpoint_every=0, log_every=1,
                denoising_steps=(1000.0, 500.0))
    return RecallConfig(**{**base, **kw})


def test_variants_differ_only_in_their_memories():
    hybrid, sink, window = (StreamConfig(**VARIANTS[v]) for v in ("hybrid", "sink", "window"))
    assert hybrid.memory and not sink.memory and not window.memory
    assert sink.sink_frames == hybrid.sink_frames > 0 and window.sink_frames == 0
    # The same recent (non-sink) frames for all three: only the sink and the memory differ.
    assert {s.window_frames - s.sink_frames for s in (hybrid, sink, window)} == {9}
    assert hybrid.chunk_frames == sink.chunk_frames == window.chunk_frames


def test_chunk_weights_mark_the_chunks_from_an_event_on():
    assert chunk_weights([{"frame": 18}], 8, 3, 4.0, 2) == [1, 1, 1, 1, 1, 1, 4, 4]
    assert chunk_weights([{"frame": 21}], 8, 3, 4.0, 2) == [1, 1, 1, 1, 1, 1, 1, 4]  # cut at the end
    assert chunk_weights([], 3, 3, 4.0, 2) == [1, 1, 1]
    assert [latent_frame_of(f) for f in (0, 1, 4, 5, 9, 21)] == [0, 1, 1, 2, 3, 6]  # chunk c starts at 12 c - 3


def test_a_loss_on_the_revisit_reaches_the_write_side_only_with_the_memory():
    """Only the revisit's chunks are scored; A's first chunks were evicted into the memory chunks earlier. The
    hybrid's write side (W_alpha, W_beta, A_log) gets gradient through those evictions; without the memory none."""
    data = _episodes(1)
    weights = [0.0] * 6 + [1.0, 1.0]
    for variant, reaches in (("hybrid", True), ("sink", False)):
        model = make_tiny_model(seed=1, active_memory=True)
        stream = StreamConfig(**dict(VARIANTS[variant], router_horizon_frames=24), )
        rollout = SelfRollout(model, RolloutConfig(stream, SamplingConfig(denoising_steps=(1000.0, 500.0)),
                                                   train_memory=True))
        noise = torch.randn(data.latents[:1].shape, generator=torch.Generator().manual_seed(1))
        loss, errors = episode_loss(rollout, _conditioner(), data.latents[:1].float(), data.masks[:1].float(),
                                    data.schedules[0], weights, [0] * 8, noise, 4.0)
        assert len(errors) == 8 and loss.requires_grad
        loss.backward()
        for name in WRITE_SIDE:
            grads = [p.grad for n, p in model.named_parameters() if n.endswith(f"self_attn.memory.{name}")]
            assert len(grads) == TINY.num_layers
            got = [g is not None and bool(g.abs().sum() > 0) for g in grads]
            assert all(got) if reaches else not any(got), (variant, name, got)


def test_recall_tuning_moves_the_write_side_and_records_its_stream(tmp_path):
    data = _episodes()
    student = make_tiny_model(seed=1, active_memory=True)
    before = {k: v.clone() for k, v in student.memory_parameters().items()}
    summary = train_recall(_cfg(tmp_path), DistEnv(), student=student, conditioner=_conditioner(), data=data,
                           log=LossLog(tmp_path, DistEnv(), "log", quiet=True))
    assert summary["steps"] == 2 and all(l == l for l in summary["losses"])  # finite
    assert summary["history"]["event_error"], "the revisit chunks were scored"
    after = student.memory_parameters()
    for name in WRITE_SIDE:
        keys = [k for k in before if k.endswith(f"self_attn.memory.{name}")]
        assert keys and all(not torch.equal(before[k], after[k]) for k in keys), name
    with safe_open(str(tmp_path / "hybrid" / "student.safetensors"), framework="pt") as f:
        stream = json.loads(f.metadata()[META_STREAM])
    assert stream["memory"] is True and stream["sink_frames"] == 3


def test_the_window_variant_trains_without_sink_or_memory(tmp_path):
    student = make_tiny_model(seed=1, active_memory=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    train_recall(_cfg(tmp_path, "window", steps=1), DistEnv(), student=student, conditioner=_conditioner(),
                 data=_episodes(), log=LossLog(tmp_path, DistEnv(), "log", quiet=True))
    after = student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if ".self_attn.memory." in k)  # never used
    assert any(not torch.equal(before[k], after[k]) for k in before if ".self_attn.memory." not in k)
    with safe_open(str(tmp_path / "window" / "student.safetensors"), framework="pt") as f:
        stream = json.loads(f.metadata()[META_STREAM])
    assert (stream["memory"], stream["sink_frames"], stream["window_frames"]) == (False, 0, 9)


def test_episode_cache_round_trips(tmp_path):
    data = _episodes(2)
    data.save(tmp_path / "episodes.safetensors")
    back = EpisodeDataset.load(tmp_path / "episodes.safetensors")
    assert torch.equal(back.latents, data.latents.half()) and torch.equal(back.masks, data.masks)
    assert back.schedules == data.schedules and back.events == data.events


def test_episode_shards_join_in_episode_order():
    data = _episodes(5)
    shards = [EpisodeDataset(data.latents[r::2], data.masks[r::2], data.schedules[r::2], data.events[r::2])
              for r in range(2)]
    joined = EpisodeDataset.interleave(shards)
    assert torch.equal(joined.latents, data.latents) and joined.schedules == data.schedules


def test_the_episode_cache_is_encoded_once_in_shards(tmp_path):
    """Two ranks each encode half the episodes and wait by polling files (no collective that could time out while
    one encodes); rank 0 joins the shards, in episode order, into the same cache one process writes."""
    import threading

    from videossm_core.demo.bundle import DEMO_DIR
    from videossm_core.training.recall import load_episodes

    def cfg(name):
        return RecallConfig(workdir=str(tmp_path), episodes=str(tmp_path / name), vae=str(DEMO_DIR / "vae.safetensors"),
                            num_episodes=3, episode_frames=24)

    results = {}

    def rank(r):
        results[r] = load_episodes(cfg("two.safetensors"), DistEnv(rank=r, world_size=2), poll_s=0.05, timeout_s=300)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one = load_episodes(cfg("one.safetensors"), DistEnv())
    for got in results.values():
        assert len(got) == 3 and torch.equal(got.latents, one.latents) and torch.equal(got.masks, one.masks)
        assert got.schedules == one.schedules and got.events == one.events
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]  # shards removed


def test_chunk_weights_can_score_only_the_chunks_after_an_event():
    assert chunk_weights([{"frame": 18}], 8, 3, 1.0, 2, other_weight=0.0) == [0, 0, 0, 0, 0, 0, 1, 1]


def test_the_marking_weight_scores_the_band_pixels():
    """The loss is weighted up on the marking's band: an error there alone costs more with --marking-weight."""
    data = _episodes(1)
    marking = torch.zeros_like(data.masks)
    marking[:, :, 18:, 1, 1:3] = 1  # the band of A's revisit
    model = make_tiny_model(seed=1, active_memory=True)
    rollout = SelfRollout(model, RolloutConfig(StreamConfig(**STREAM), SamplingConfig(denoising_steps=(1000.0, 500.0))))
    noise = torch.randn(data.latents[:1].shape, generator=torch.Generator().manual_seed(1))
    weights = chunk_weights(data.events[0], 8, 3, 1.0, 2, other_weight=0.0)
    with torch.no_grad():
        plain, _ = episode_loss(rollout, _conditioner(), data.latents[:1].float(), data.masks[:1].float(),
                                data.schedules[0], weights, [0] * 8, noise, 4.0)
        marked, _ = episode_loss(rollout, _conditioner(), data.latents[:1].float(), data.masks[:1].float(),
                                 data.schedules[0], weights, [0] * 8, noise, 4.0, marking.float(), 20.0)
    assert float(marked) > 1.1 * float(plain)


def test_base_lr_scale_zero_trains_the_memory_alone(tmp_path):
    """--base-lr-scale 0: the memory and router move, every other weight stays bit-exact; a variant without a
    memory then has nothing to train and says so."""
    from videossm_core.training.stage2 import memory_param

    student = make_tiny_model(seed=1, active_memory=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    data = _episodes()
    data.marking_masks = data.masks.clone()
    train_recall(_cfg(tmp_path, base_lr_scale=0.0, marking_weight=20.0, other_weight=0.0), DistEnv(), student=student,
                 conditioner=_conditioner(), data=data, log=LossLog(tmp_path, DistEnv(), "log", quiet=True))
    after = student.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(memory_param(k) for k in moved)
    assert any(k.endswith("self_attn.memory.A_log") for k in moved)
    with pytest.raises(ValueError, match="nothing to train"):
        train_recall(_cfg(tmp_path, "sink", base_lr_scale=0.0), DistEnv(), student=make_tiny_model(seed=1),
                     conditioner=_conditioner(), data=_episodes(), log=LossLog(tmp_path, DistEnv(), "log", quiet=True))


def test_marking_masks_are_re_planned_for_an_old_cache(tmp_path):
    """A cache encoded before marking masks existed gets the same masks the encoder now writes, re-planned from its
    seed without the VAE; a wrong seed is refused rather than silently mis-masked."""
    from videossm_core.demo.bundle import DEMO_DIR
    from videossm_core.training.data import encode_memory_episodes
    from videossm_core.training.vae_training import load_trained_vae

    vae = load_trained_vae(str(DEMO_DIR / "vae.safetensors"))
    new = encode_memory_episodes(vae, 2, 24, 64, 64, seed=11)
    assert new.marking_masks is not None and new.marking_masks.shape == new.masks.shape
    assert new.marking_masks.any() and not (new.marking_masks.bool() & ~new.masks.bool()).any()
    new.save(tmp_path / "e.safetensors")
    assert torch.equal(EpisodeDataset.load(tmp_path / "e.safetensors").marking_masks, new.marking_masks)
    old = EpisodeDataset(new.latents, new.masks, new.schedules, new.events)
    assert torch.equal(old.with_marking_masks(11, 64, 64, 4).marking_masks, new.marking_masks)
    with pytest.raises(ValueError, match="re-plan"):
        old.with_marking_masks(12, 64, 64, 4)


def test_teacher_forced_recall_reads_the_marking_of_the_revisit_chunks(monkeypatch):
    """The probe samples the chunks from a revisit on after the true past and reads their marking. With a sampler
    that returns the true chunks it reads A's marking at every revisit; with one that returns the 2 chunks before the
    revisit (scene B, whose marking is never A's) at none: the frames it reads are the revisit's."""
    from videossm_core.demo.bundle import DEMO_DIR, load_demo_bundle
    from videossm_core.training.data import encode_memory_episodes
    from videossm_core.training.recall import teacher_forced_recall

    bundle = load_demo_bundle(directory=DEMO_DIR)
    data = encode_memory_episodes(bundle.vae, 3, 66, 64, 64, seed=7000)
    assert sum(e["kind"] == "revisit" for ev in data.events for e in ev) >= 2

    def sampler(offset):
        def run_chunks(self, state, num_chunks, noise_fn, exit_steps, grad=True):
            start = state.next_frame
            ep = next(i for i in range(len(data)) if torch.equal(probe_latents[0], data.latents[i, :, :3].float()))
            out = data.latents[ep:ep + 1, :, start + offset:start + offset + 3].float()
            self._call(state, out, 0.0, start)
            state.next_frame = start + 3
            return out
        return run_chunks

    probe_latents = []
    real_call = SelfRollout._call

    def spy(self, state, x, t, start):
        if start == 0:
            probe_latents[:] = [x[0]]
        return real_call(self, state, x, t, start)

    monkeypatch.setattr(SelfRollout, "_call", spy)
    args = (bundle.model, bundle.stream_config, bundle.sampling_config,
            TextConditioner(bundle.text_encoder, bundle.model.config.text_len), bundle.vae, data)
    for offset, expected in ((0, True), (-6, False)):
        monkeypatch.setattr(SelfRollout, "run_chunks", sampler(offset))
        rows = teacher_forced_recall(*args)
        assert rows and all(r["kind"] == "revisit" for r in rows)
        assert [r["hit"] for r in rows] == [expected] * len(rows), rows


def test_base_params_and_retention_frames_pick_what_trains_and_how_long_the_memory_keeps(tmp_path):
    """--base-params trains only the named non-memory weights (here the memory's addressing: the self-attention's q
    and k); --retention-frames re-sets the decay so a state keeps half its content after that many frames."""
    from videossm_core.model.delta_rule import compute_gates
    from videossm_core.training.stage2 import memory_param

    student = make_tiny_model(seed=1, active_memory=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    train_recall(_cfg(tmp_path, base_params=("self_attn.q.", "self_attn.k."), retention_frames=100, steps=1),
                 DistEnv(), student=student, conditioner=_conditioner(), data=_episodes(),
                 log=LossLog(tmp_path, DistEnv(), "log", quiet=True))
    after = student.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    base_moved = {k for k in moved if not memory_param(k)}
    assert base_moved and all(".self_attn.q." in k or ".self_attn.k." in k for k in base_moved), base_moved
    fresh = make_tiny_model(seed=1, active_memory=True)
    from videossm_core.training.recall import set_memory_half_life

    set_memory_half_life(fresh, 100)
    m = fresh.blocks[0].self_attn.memory
    g, _ = compute_gates(m.alpha_proj.bias.expand(1, 1, -1), m.beta_proj.bias.expand(1, 1, -1), m.A_log)
    per_frame = g * fresh.config.memory.init_tokens_per_frame
    assert torch.allclose(torch.exp(100 * per_frame), torch.full_like(per_frame, 0.5), atol=1e-4)
