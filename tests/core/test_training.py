"""The training pipeline at tiny size: every stage lowers its loss on a fixed batch, a 2-process gloo run
matches a 1-process run, a resumed run continues the same loss curve, and the demo export loads."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from videossm_core.config import get_preset
from videossm_core.demo.bundle import demo_files_present, load_demo_bundle
from videossm_core.model.transformer import CausalWanModel
from videossm_core.state import StreamState
from videossm_core.text import DemoTextEncoder
from videossm_core.training.checkpointing import LossLog, load_generator, save_generator
from videossm_core.training.data import LatentDataset, TextConditioner, WorldPrompts
from videossm_core.training.distributed import DistEnv
from videossm_core.training.rollout import RolloutConfig, SelfRollout
from videossm_core.training.stage1 import Stage1Config, sampling_config, stream_config, train_stage1
from videossm_core.training.stage2 import Stage2Config, train_stage2
from videossm_core.training.teacher import TeacherTrainConfig, train_teacher
from videossm_core.training.vae_training import VAETrainConfig, train_vae
from videossm_core.vae import load_vae, small_vae_config

from .tiny import make_tiny_model

TINY = get_preset("tiny")
# Chunks of 3, a sink of 3 and a 6-frame window: 9-frame windows evict (and write memory) at chunk 3.
TINY_STREAM = dict(chunk_frames=3, sink_frames=3, window_frames=6, position_mode="unbounded",
                   router_horizon_frames=24)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conditioner() -> TextConditioner:
    return TextConditioner(DemoTextEncoder(text_len=TINY.text_len, text_dim=TINY.text_dim, seed=0).eval(), TINY.text_len)


def _dataset(n: int = 6, frames: int = 12) -> LatentDataset:
    """Structured fake latents: a per-prompt pattern plus a little noise (what a teacher can fit)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [WorldPrompts().prompt(0, 0, i) for i in range(n)]
    base = torch.randn(n, TINY.in_dim, 1, 4, 4, generator=gen)
    latents = base.expand(-1, -1, frames, -1, -1) + 0.1 * torch.randn(n, TINY.in_dim, frames, 4, 4, generator=gen)
    return LatentDataset(latents.contiguous(), prompts, 16, 32, 32)


def _stage1_cfg(workdir, **kw) -> Stage1Config:
    base = dict(workdir=str(workdir), steps=4, batch_size=2, lr=1e-3, critic_lr=1e-3, latent_frames=9,
                latent_size=(4, 4), stream=dict(TINY_STREAM), ode_pairs=2, ode_steps=4, ode_lr=2e-3,
                ode_solver_steps=4, critic_ratio=1, warmup=0, min_lr_ratio=1.0, checkpoint_every=0, log_every=1)
    base.update(kw)
    return Stage1Config(**base)


def _stage2_cfg(workdir, **kw) -> Stage2Config:
    base = dict(workdir=str(workdir), steps=4, batch_size=2, lr=1e-3, critic_lr=1e-3, latent_frames=6,
                latent_size=(4, 4), stream=dict(TINY_STREAM), rollout_frames=18, router_horizon_frames=24,
                switch_prob=0.5, critic_ratio=1, warmup=0, min_lr_ratio=1.0, base_lr_scale=0.3, checkpoint_every=0, log_every=1)
    base.update(kw)
    return Stage2Config(**base)


def _quiet_log(workdir, name="log") -> LossLog:
    return LossLog(workdir, DistEnv(), name, quiet=True)


# ---------------------------------------------------------------------------------------------- each stage

def test_vae_training_lowers_loss_and_stores_latent_statistics(tmp_path):
    cfg = VAETrainConfig(workdir=str(tmp_path), steps=6, batch_size=2, lr=2e-3, warmup=0, frames=5, height=16,
                         width=16, crop=None, fixed_batch=True, stats_clips=2, eval_clips=0, checkpoint_every=0,
                         log_every=1, vae_config=small_vae_config(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1]))
    summary = train_vae(cfg, DistEnv(), _quiet_log(tmp_path))
    assert summary["losses"][-1] < summary["losses"][0]
    vae = load_vae(tmp_path / "vae.safetensors")
    assert vae.z_dim == 4 and not torch.allclose(vae.latents_std, torch.ones(4))  # measured, not identity


def test_decoder_tune_lowers_loss_and_leaves_the_latent_space_alone(tmp_path):
    """``vae-decoder``: only ``post_quant_conv`` and the decoder learn, so the encoder, its latent statistics
    (what a teacher trained on the old latents relies on) and therefore every latent stay as they were."""
    from videossm_core.training.vae_training import DecoderTuneConfig, tune_decoder
    from videossm_core.vae import build_vae, save_vae

    small = small_vae_config(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1])
    save_vae(build_vae(small), tmp_path / "base.safetensors")
    before = load_vae(tmp_path / "base.safetensors")
    cfg = DecoderTuneConfig(workdir=str(tmp_path / "tuned"), vae=str(tmp_path / "base.safetensors"), steps=6,
                            batch_size=2, lr=2e-3, warmup=0, min_lr_ratio=1.0, frames=5, height=16, width=16,
                            crop=None, fixed_batch=True, eval_clips=0, checkpoint_every=0, log_every=1)
    summary = tune_decoder(cfg, DistEnv(), _quiet_log(tmp_path / "tuned"))
    assert summary["losses"][-1] < summary["losses"][0]
    after = load_vae(tmp_path / "tuned" / "vae.safetensors")
    old, new = before.model.state_dict(), after.model.state_dict()
    changed = {k.split(".")[0] for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"decoder", "post_quant_conv"}
    assert torch.equal(before.latents_mean, after.latents_mean) and torch.equal(before.latents_std, after.latents_std)


def test_teacher_lowers_loss_on_a_fixed_batch(tmp_path):
    cfg = TeacherTrainConfig(workdir=str(tmp_path), steps=10, batch_size=2, lr=2e-3, warmup=0, min_lr_ratio=1.0,
                             latent_frames=9, fixed_batch=True, checkpoint_every=0, log_every=1, eval_clips=0)
    summary = train_teacher(cfg, DistEnv(), dataset=_dataset(), model_config=TINY, log=_quiet_log(tmp_path))
    assert summary["losses"][-1] < 0.8 * summary["losses"][0]
    teacher = load_generator(tmp_path / "teacher.safetensors")
    assert teacher.config == TINY
    DemoTextEncoder.load(tmp_path / "text_encoder.safetensors")


def test_teacher_recovered_from_a_generator_starts_from_its_weights_and_keeps_its_text_encoder(tmp_path):
    """``--init GENERATOR --init-text-encoder FILE``: the teacher starts from the generator's weights and reads
    prompts with that generator's text encoder, unchanged, so it can teach that generator again."""
    from videossm_core.training.cli import build_parser, teacher_config

    args = build_parser().parse_args(["teacher", "--workdir", "w", "--vae", "v", "--init", "g.safetensors",
                                      "--init-text-encoder", "t.safetensors"])
    assert (teacher_config(args).init, teacher_config(args).init_text_encoder) == ("g.safetensors", "t.safetensors")

    generator, encoder = make_tiny_model(seed=5), DemoTextEncoder(text_len=TINY.text_len, text_dim=TINY.text_dim, seed=7)
    save_generator(generator, tmp_path / "generator.safetensors")
    encoder.save(tmp_path / "encoder.safetensors")

    def run(workdir, lr):
        cfg = TeacherTrainConfig(workdir=str(workdir), steps=6, batch_size=2, lr=lr, warmup=0, min_lr_ratio=1.0,
                                 latent_frames=9, fixed_batch=True, checkpoint_every=0, log_every=1, eval_clips=0,
                                 init=str(tmp_path / "generator.safetensors"),
                                 init_text_encoder=str(tmp_path / "encoder.safetensors"))
        return train_teacher(cfg, DistEnv(), dataset=_dataset(), log=_quiet_log(workdir))

    run(tmp_path / "still", lr=0.0)  # nothing trained: the teacher is the generator itself
    still = load_generator(tmp_path / "still" / "teacher.safetensors").state_dict()
    assert all(torch.equal(still[k], v) for k, v in generator.state_dict().items())

    summary = run(tmp_path / "trained", lr=2e-3)
    assert summary["losses"][-1] < summary["losses"][0]
    trained = load_generator(tmp_path / "trained" / "teacher.safetensors").state_dict()
    assert not torch.equal(trained["blocks.0.self_attn.q.weight"], generator.state_dict()["blocks.0.self_attn.q.weight"])
    kept = DemoTextEncoder.load(tmp_path / "trained" / "text_encoder.safetensors").state_dict()
    assert all(torch.equal(kept[k], v) for k, v in encoder.state_dict().items())


def test_stage1_ode_warm_start_and_dmd_lower_their_losses(tmp_path):
    cfg = _stage1_cfg(tmp_path, fixed_batch=True, steps=5, ode_steps=5)
    summary = train_stage1(cfg, DistEnv(), teacher=make_tiny_model(seed=1), conditioner=_conditioner(),
                           log=_quiet_log(tmp_path))
    ode, critic = summary["history"]["ode"], summary["history"]["critic"]
    assert ode[-1] < ode[0]
    assert critic[-1] < critic[0]
    records = [r for r in LossLog.read(tmp_path / "log.jsonl") if "dmd_gap" in r]
    assert records[-1]["dmd_gap"] < records[0]["dmd_gap"]  # the student's windows move toward the teacher
    assert load_generator(tmp_path / "student.safetensors").config == TINY


def test_stage2_lowers_its_losses_and_trains_the_memory(tmp_path):
    teacher = make_tiny_model(seed=1)
    student = make_tiny_model(seed=1)
    before = {k: v.clone() for k, v in student.memory_parameters().items()}
    cfg = _stage2_cfg(tmp_path, fixed_batch=True, steps=5, latent_frames=9)
    summary = train_stage2(cfg, DistEnv(), teacher=teacher, student=student, critic=make_tiny_model(seed=1),
                           conditioner=_conditioner(), log=_quiet_log(tmp_path))
    critic = summary["history"]["critic"]
    assert critic[-1] < critic[0]
    records = [r for r in LossLog.read(tmp_path / "log.jsonl") if "dmd_gap" in r]
    assert records[-1]["dmd_gap"] < records[0]["dmd_gap"]
    after = student.memory_parameters()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # the read path and the write gates (reached through the re-done eviction write) both learn
    assert any("out_gate" in k for k in changed) and any("alpha_proj" in k for k in changed), changed


def test_critic_warmup_trains_the_critic_alone_before_the_first_generator_update(tmp_path):
    """``--critic-warmup N``: the first N DMD steps move only the critic; then the generator every
    ``critic_ratio``-th step, as without a warm-up."""
    from videossm_core.training.cli import build_parser, distill_config

    for stage in ("stage1", "stage2"):
        args = build_parser().parse_args([stage, "--workdir", "w", "--teacher", "t", "--student", "s",
                                          "--critic-warmup", "5"])
        assert distill_config(Stage2Config if stage == "stage2" else Stage1Config, args).critic_warmup == 5
    cfg = _stage2_cfg(tmp_path, critic_warmup=3, critic_ratio=2)
    assert [s for s in range(10) if cfg.generator_due(s)] == [3, 5, 7, 9]
    assert [s for s in range(6) if _stage2_cfg(tmp_path).generator_due(s)] == [0, 1, 2, 3, 4, 5]

    def run(workdir, steps):
        student, critic = make_tiny_model(seed=1), make_tiny_model(seed=1)
        before = {k: v.clone() for k, v in student.state_dict().items()}
        critic_before = {k: v.clone() for k, v in critic.state_dict().items()}
        summary = train_stage2(_stage2_cfg(workdir, steps=steps, critic_warmup=2), DistEnv(),
                               teacher=make_tiny_model(seed=1), student=student, critic=critic,
                               conditioner=_conditioner(), log=_quiet_log(workdir))
        moved = lambda model, old: any(not torch.equal(old[k], v) for k, v in model.state_dict().items())
        return summary, moved(student, before), moved(critic, critic_before)

    summary, student_moved, critic_moved = run(tmp_path / "warm", steps=2)
    assert (student_moved, critic_moved) == (False, True) and summary["history"]["dmd"] == []
    summary, student_moved, _ = run(tmp_path / "then", steps=3)
    assert student_moved and len(summary["history"]["dmd"]) == 1


def test_stage2_router_horizon_is_the_rollout_length_unless_given(tmp_path, monkeypatch):
    """Stage 2 trains the router against T = the rollout's length (``--router-horizon-frames`` overrides) and stores
    that T with the student (its MemoryConfig, in the saved file), where generation takes it from."""
    from videossm_core.checkpoints import load_model
    from videossm_core.training import stage2 as stage2_module
    from videossm_core.training.cli import build_parser, distill_config

    seen = []

    class Recording(stage2_module.SelfRollout):
        def __init__(self, model, config):
            seen.append(config.stream.router_horizon_frames)
            super().__init__(model, config)

    monkeypatch.setattr(stage2_module, "SelfRollout", Recording)
    stored = []
    for workdir, horizon in (("own", None), ("given", 240)):
        student = make_tiny_model(seed=1)
        train_stage2(_stage2_cfg(tmp_path / workdir, steps=1, rollout_frames=18, router_horizon_frames=horizon),
                     DistEnv(), teacher=make_tiny_model(seed=1), student=student,
                     critic=make_tiny_model(seed=1), conditioner=_conditioner(), log=_quiet_log(tmp_path / workdir))
        saved = load_model(str(tmp_path / workdir / "student.safetensors"))
        stored.append((student.config.memory.router_horizon_frames, saved.config.memory.router_horizon_frames))
    assert seen == [18, 240]
    assert stored == [(18, 18), (240, 240)]
    args = build_parser().parse_args(["stage2", "--workdir", "w", "--teacher", "t", "--student", "s",
                                      "--router-horizon-frames", "240"])
    assert distill_config(Stage2Config, args).router_horizon_frames == 240


# The demo's window: a chunk is evicted 3 chunks after it is written, always after the end of its 2-chunk window.
DEMO_LIKE_STREAM = dict(TINY_STREAM, window_frames=12)
WRITE_SIDE = ("alpha_proj.weight", "alpha_proj.bias", "beta_proj.weight", "beta_proj.bias", "A_log")


def test_stage2_trains_the_write_side_of_the_memory(tmp_path):
    """Windows of 2 chunks on the demo's window: the first evictions (chunk 4 evicts chunk 1, chunk 5 chunk 2) come in
    step 3, with gates cached in steps 1 and 2. Only a memory graph carried across windows lets step 3 move W_alpha,
    W_beta, A_log and the gate biases; cut at every window (as before) they stay exactly as they were."""
    student = make_tiny_model(seed=1, active_memory=True)  # a read that depends on the memory: gradient reaches it
    before = {k: v.clone() for k, v in student.memory_parameters().items()}
    cfg = _stage2_cfg(tmp_path, steps=3, latent_frames=6, stream=dict(DEMO_LIKE_STREAM), switch_prob=0.0,
                      rollout_frames=60, base_lr_scale=0.0)
    train_stage2(cfg, DistEnv(), teacher=make_tiny_model(seed=1), student=student, critic=make_tiny_model(seed=1),
                 conditioner=_conditioner(), log=_quiet_log(tmp_path))
    after = student.memory_parameters()
    for name in WRITE_SIDE:
        keys = [k for k in before if k.endswith(f"self_attn.memory.{name}")]
        assert len(keys) == TINY.num_layers
        assert all(not torch.equal(before[k], after[k]) for k in keys), name


def test_gradient_wrt_A_log_through_an_eviction_matches_finite_differences():
    """A loss on a chunk whose first call evicts a chunk cached two windows earlier (graph carried by
    ``detach_state(keep_memory_graph=True)``): autograd's d loss / d A_log equals a central difference. float32 (the
    memory's state and gates are float32 by design), so the tolerance is a few percent."""
    from videossm_core.config import SamplingConfig, StreamConfig

    model = make_tiny_model(seed=3, active_memory=True)
    memory = model.blocks[0].self_attn.memory
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.memory.A_log.fill_(2.0)  # a strong decay: the loss clearly depends on it
    stream = StreamConfig(**DEMO_LIKE_STREAM, memory_update="chunkwise")
    rollout = SelfRollout(model, RolloutConfig(stream, SamplingConfig(denoising_steps=(1000.0, 500.0)),
                                               train_memory=True))
    context = _conditioner()(["a red circle bouncing on a dark background"])
    gen = torch.Generator().manual_seed(0)
    noise = {key: torch.randn(1, TINY.in_dim, 3, 4, 4, generator=gen) for key in [(c, k) for c in range(5)
                                                                                   for k in range(2)]}
    weights = torch.randn(1, TINY.in_dim, 3, 4, 4, generator=gen)

    def loss(keep_memory_graph=True):
        state = rollout.new_state(1, context)
        for _ in range(2):  # chunks 0-3: chunk 1's gates are cached in the first window; nothing evicted yet
            rollout.run_chunks(state, 2, lambda c, k: noise[(c, k)], [1, 1], grad=False)
            SelfRollout.detach_state(state, keep_memory_graph=keep_memory_graph)
        # Chunk 4 exits at its first call, which evicts chunk 1 into the memory and reads it: the loss depends on
        # A_log only through that write (and its cached gates), the path autograd follows.
        x0 = rollout.run_chunks(state, 1, lambda c, k: noise[(c, k)], [0], grad=True)
        assert state.counters["evicted_frames"] == 3
        return (x0.double() * weights).sum()

    loss().backward()
    autograd = memory.A_log.grad.clone()
    assert autograd.abs().max() > 0
    eps = 1e-2
    numeric = torch.zeros_like(autograd)
    with torch.no_grad():
        for head in range(len(numeric)):
            values = []
            for sign in (1, -1):
                memory.A_log[head] += sign * eps
                values.append(float(loss()))
                memory.A_log[head] -= sign * eps
            numeric[head] = (values[0] - values[1]) / (2 * eps)
    torch.testing.assert_close(autograd, numeric, rtol=3e-2, atol=1e-4 * float(numeric.abs().max()))
    model.zero_grad(set_to_none=True)
    loss(keep_memory_graph=False).backward()  # the graph cut at every window: the gradient is lost
    assert memory.A_log.grad is None or not memory.A_log.grad.any()


# ---------------------------------------------------------------------------------------------- guidance interval

def _prompt_flow(x, timestep, context):
    """A toy flow model: ``x`` plus the context's mean, so cond (ones) and uncond (zeros) differ by 1."""
    return x + context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


def test_interval_guidance_guides_only_at_or_below_its_noise_level():
    from videossm_core.training.teacher import guided_flow, interval_guidance

    sigma = torch.tensor([0.3, 0.8, 0.81, 0.99])
    assert interval_guidance(4.0, sigma, 0.8).tolist() == [4.0, 4.0, 1.0, 1.0]
    assert interval_guidance(4.0, sigma, None).tolist() == [4.0] * 4
    x = torch.zeros(2, 1, 1, 1, 1)
    cond, uncond = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
    flow = guided_flow(_prompt_flow, x, torch.zeros(2, 1), cond, uncond, torch.tensor([4.0, 1.0]))
    assert flow.flatten().tolist() == [4.0, 1.0]  # v_u + g (v_c - v_u) per sample; g = 1 is the cond flow


def test_sample_ode_applies_guidance_only_inside_the_interval():
    from videossm_core.training.teacher import sample_ode

    noise = torch.zeros(1, 1, 1, 1, 1)
    cond, uncond = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    sigmas = [1.0, 0.75, 0.5, 0.0]
    everywhere, _ = sample_ode(_prompt_flow, noise, cond, uncond, 3.0, sigmas)
    below_06, _ = sample_ode(_prompt_flow, noise, cond, uncond, 3.0, sigmas, guidance_max_sigma=0.6)

    def euler(scales):  # the same Euler steps by hand, one guidance scale per step
        x = 0.0
        for s, s_next, g in zip(sigmas[:-1], sigmas[1:], scales):
            x = x + (s_next - s) * (x + g)
        return x

    assert float(everywhere) == pytest.approx(euler([3.0, 3.0, 3.0]))
    assert float(below_06) == pytest.approx(euler([1.0, 1.0, 3.0]))  # only the step from sigma 0.5 is guided


def test_dmd_real_score_is_guided_only_for_samples_inside_the_interval():
    """Per sample: a window whose DMD noise level is above ``guidance_max_sigma`` gets the unguided real
    score's gradient, one at or below it the guided one's."""
    from videossm_core.training.dmd import DMDConfig, dmd_loss, dmd_sigma

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 2, 3, 2, 2, generator=gen)
    cond, uncond = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
    critic = lambda x, t, c: 0.5 * x  # noqa: E731 - any fixed fake score
    indices, step = [3, 4], 7

    def grad(**kw):
        x = x0.clone().requires_grad_(True)
        loss, _ = dmd_loss(x, _prompt_flow, critic, cond, uncond, DMDConfig(**kw), 0, step, indices)
        loss.backward()
        return x.grad

    sigma = dmd_sigma(DMDConfig(), 0, step, indices, "dmd-timestep")
    assert sigma[0] != sigma[1]
    low = int(torch.argmin(sigma))
    between = float(sigma.mean())
    guided, unguided = grad(guidance=4.0), grad(guidance=1.0)
    assert not torch.allclose(guided, unguided)
    mixed = grad(guidance=4.0, guidance_max_sigma=between)
    assert torch.allclose(mixed[low], guided[low]) and torch.allclose(mixed[1 - low], unguided[1 - low])
    assert torch.allclose(grad(guidance=4.0, guidance_max_sigma=1.0), guided)


def test_dmd_trainer_updates_the_critic_every_step_and_the_generator_only_when_due():
    """Stages 1 and 2 share ``DMDTrainer``: a generator step moves both models, a critic-only step moves the
    critic alone and logs the latest generator update's numbers again beside its own critic loss."""
    from videossm_core.training.dmd import DMDConfig, DMDTrainer

    base = torch.randn(2, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    scale, critic_weight = torch.nn.Parameter(torch.ones(())), torch.nn.Parameter(torch.full((), 0.5))
    trainer = DMDTrainer(_prompt_flow, lambda x, t, c: critic_weight * x, DMDConfig(), DistEnv(), 1.0,
                         torch.optim.SGD([scale], lr=0.1), [scale], torch.optim.SGD([critic_weight], lr=0.1),
                         [critic_weight])
    cond, uncond = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)

    first = trainer.step(scale * base, cond, uncond, 0, 0, [0, 1], update_generator=True)
    scale_after, critic_after = scale.item(), critic_weight.item()
    assert scale_after != 1.0 and critic_after != 0.5
    assert set(first) == {"dmd_loss", "dmd_gap", "dmd_sigma", "grad_norm", "critic_loss"}

    with torch.no_grad():
        rollout = scale * base
    second = trainer.step(rollout, cond, uncond, 0, 1, [0, 1], update_generator=False)
    assert scale.item() == scale_after and critic_weight.item() != critic_after
    assert {k: v for k, v in second.items() if k != "critic_loss"} == \
        {k: v for k, v in first.items() if k != "critic_loss"}
    assert second["critic_loss"] != first["critic_loss"]


def test_guidance_max_sigma_reaches_the_dmd_of_stages_1_and_2(tmp_path, monkeypatch):
    from videossm_core.training import dmd as dmd_module
    from videossm_core.training.cli import build_parser, distill_config

    base = ["--workdir", str(tmp_path), "--teacher", "t"]
    args = build_parser().parse_args(["stage2", *base, "--student", "s"])
    assert distill_config(Stage2Config, args).guidance_max_sigma is None
    for stage, config_cls in ((["stage1"], Stage1Config), (["stage2", "--student", "s"], Stage2Config)):
        args = build_parser().parse_args([*stage, *base, "--guidance-max-sigma", "0.8"])
        assert distill_config(config_cls, args).guidance_max_sigma == 0.8

    seen = []
    real = dmd_module.dmd_loss
    monkeypatch.setattr(dmd_module, "dmd_loss", lambda x0, t, c, *a: seen.append(a[2]) or real(x0, t, c, *a))
    train_stage2(_stage2_cfg(tmp_path, steps=1, guidance_max_sigma=0.8), DistEnv(), teacher=make_tiny_model(seed=1),
                 student=make_tiny_model(seed=1), critic=make_tiny_model(seed=1), conditioner=_conditioner(),
                 log=_quiet_log(tmp_path))
    assert [cfg.guidance_max_sigma for cfg in seen] == [0.8]


def test_eviction_write_redone_with_grad_matches_the_models_own_write():
    model = make_tiny_model(seed=3, active_memory=True)
    stream = stream_config(Stage2Config(stream=dict(TINY_STREAM)), memory=True)
    rollout = SelfRollout(model, RolloutConfig(stream, sampling_config(Stage2Config()), train_memory=True))
    context = torch.randn(1, TINY.text_len, TINY.text_dim)

    def noise(chunk, k):
        return torch.randn(1, TINY.in_dim, 3, 4, 4, generator=torch.Generator().manual_seed(100 * chunk + k))

    with torch.no_grad():
        reference = rollout.new_state(1, context)
        rollout.run_chunks(reference, 4, noise, [3] * 4, grad=False)
    trained = rollout.new_state(1, context)
    out = rollout.run_chunks(trained, 4, noise, [3] * 4, grad=True)  # exit at the last step: first calls are no_grad
    for ref, got in zip(reference.branches["cond"].layers, trained.branches["cond"].layers):
        assert torch.allclose(ref.memory, got.memory, atol=1e-6)
        assert got.memory.requires_grad  # the loss can reach the gates through the state
    out.sum().backward()
    assert any(blk.self_attn.memory.alpha_proj.weight.grad is not None
               and blk.self_attn.memory.alpha_proj.weight.grad.abs().sum() > 0 for blk in model.blocks)


# ---------------------------------------------------------------------------------------------- distributed

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(workdir, env: DistEnv) -> dict:
    """Teacher, stage 1 and stage 2 for 2-3 steps each; returns final parameters and losses."""
    torch.set_num_threads(1)
    teacher_summary = train_teacher(
        TeacherTrainConfig(workdir=os.path.join(workdir, "teacher"), steps=2, batch_size=2, lr=1e-3, warmup=0,
                           latent_frames=9, checkpoint_every=0, log_every=1, eval_clips=0),
        env, dataset=_dataset(), model_config=TINY, log=LossLog(os.path.join(workdir, "teacher"), env, "log", quiet=True))
    teacher = make_tiny_model(seed=1)
    s1 = train_stage1(_stage1_cfg(os.path.join(workdir, "s1"), steps=2, ode_steps=1), env, teacher=teacher,
                      conditioner=_conditioner(), log=LossLog(os.path.join(workdir, "s1"), env, "log", quiet=True))
    student = make_tiny_model(seed=1)
    s2 = train_stage2(_stage2_cfg(os.path.join(workdir, "s2"), steps=3), env, teacher=teacher, student=student,
                      critic=make_tiny_model(seed=1), conditioner=_conditioner(),
                      log=LossLog(os.path.join(workdir, "s2"), env, "log", quiet=True))
    return {"teacher": teacher_summary["losses"], "s1": s1["history"], "s2": s2["history"],
            "student": {k: v.clone() for k, v in student.state_dict().items()}}


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from videossm_core.training.distributed import init_distributed, shutdown

    env = init_distributed("gloo")
    result = _run_all(workdir, env)
    if rank == 0:  # through a file: tensors sent over a queue die with the process that sent them
        torch.save(result, os.path.join(workdir, "result.pt"))
    shutdown(env)


def test_two_process_gloo_run_matches_one_process_run(tmp_path):
    assert "WORLD_SIZE" not in os.environ
    single = _run_all(str(tmp_path / "single"), DistEnv())
    (tmp_path / "double").mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "double")), nprocs=2, join=True)
    double = torch.load(tmp_path / "double" / "result.pt", weights_only=False)
    assert double["teacher"] == pytest.approx(single["teacher"], rel=1e-4, abs=1e-6)
    for stage in ("s1", "s2"):
        for key, values in single[stage].items():
            assert double[stage][key] == pytest.approx(values, rel=1e-4, abs=1e-6), (stage, key)
    # Parameters: float32 rounding differs with the per-process batch, and Adam's first steps
    # (update ~ lr * g / |g|) amplify it for the rare near-zero gradient, by up to a fraction of one step
    # (lr = 1e-3; how much depends on the CPU's kernels). A correct data-parallel run agrees to 1e-5 almost
    # everywhere and nowhere by half a step; a wrong one is off by whole steps nearly everywhere. (A small tensor
    # may have a couple of such elements: the memory's gates also get gradient through a switch's re-cache.)
    for key, value in single["student"].items():
        diff = (double["student"][key] - value).abs()
        assert diff.max() < 5e-4, key
        assert int((diff > 1e-5).sum()) <= max(2, diff.numel() // 100), key


# ---------------------------------------------------------------------------------------------- resume

def _stage2_run(workdir, stop_after: int | None = None) -> dict:
    teacher = make_tiny_model(seed=1)
    cfg = _stage2_cfg(workdir, steps=6, checkpoint_every=2, switch_prob=0.7, min_lr_ratio=0.1, stop_after=stop_after)
    return train_stage2(cfg, DistEnv(),
                        teacher=teacher, student=make_tiny_model(seed=1), critic=make_tiny_model(seed=1),
                        conditioner=_conditioner(), log=_quiet_log(workdir))


def test_resume_continues_the_same_loss_curve(tmp_path):
    full = _stage2_run(tmp_path / "full")
    _stage2_run(tmp_path / "resumed", stop_after=3)  # "interrupted" after step 3 (checkpoints at 2 and 3)
    resumed = _stage2_run(tmp_path / "resumed")  # a new process would do exactly this
    assert resumed["history"]["critic"] == pytest.approx(full["history"]["critic"][3:], rel=1e-6)
    assert resumed["history"]["dmd"] == pytest.approx(full["history"]["dmd"][len(full["history"]["dmd"]) - len(resumed["history"]["dmd"]):], rel=1e-6)
    log = LossLog.read(tmp_path / "resumed" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 7))  # one continuous curve in the log file
    assert [r["critic_loss"] for r in log] == pytest.approx([r["critic_loss"] for r in LossLog.read(tmp_path / "full" / "log.jsonl")], rel=1e-6)
    switched = [r["switched"] for r in log]
    assert any(switched)  # the carried long rollout really switched prompts


def test_teacher_resume_continues_the_same_loss_curve(tmp_path):
    def run(workdir, stop_after=None):
        cfg = TeacherTrainConfig(workdir=str(workdir), steps=4, batch_size=2, lr=1e-3, warmup=1, latent_frames=9,
                                 checkpoint_every=3, log_every=1, eval_clips=0, stop_after=stop_after)
        return train_teacher(cfg, DistEnv(), dataset=_dataset(), model_config=TINY, log=_quiet_log(workdir))

    full = run(tmp_path / "full")
    run(tmp_path / "resumed", stop_after=2)
    assert not (tmp_path / "resumed" / "teacher.safetensors").exists()  # a slice writes no final weights
    resumed = run(tmp_path / "resumed")
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-6)
    assert load_generator(tmp_path / "resumed" / "teacher.safetensors").state_dict().keys()


def test_teacher_continued_from_another_run_carries_on_its_schedule_on_its_own_clips(tmp_path):
    """``--continue-from``: a new run starts at the other run's newest checkpoint (weights, optimizer, EMA, step):
    on the same clips its losses are that run's own continuation; on other clips it trains on those."""
    def run(workdir, steps, dataset, continue_from=None):
        cfg = TeacherTrainConfig(workdir=str(workdir), steps=steps, batch_size=2, lr=1e-3, warmup=1, latent_frames=9,
                                 checkpoint_every=2, log_every=1, eval_clips=0,
                                 continue_from=str(continue_from) if continue_from else None)
        return train_teacher(cfg, DistEnv(), dataset=dataset, model_config=TINY, log=_quiet_log(workdir))

    from videossm_core.training.cli import build_parser, teacher_config

    args = build_parser().parse_args(["teacher", "--workdir", "w", "--vae", "v", "--continue-from", "runs/first"])
    assert teacher_config(args).continue_from == "runs/first"

    full = run(tmp_path / "full", 4, _dataset())
    run(tmp_path / "first", 2, _dataset())
    same_clips = run(tmp_path / "same", 4, _dataset(), continue_from=tmp_path / "first")
    assert same_clips["losses"] == pytest.approx(full["losses"][2:], rel=1e-6)
    other_clips = run(tmp_path / "other", 4, _dataset(n=5), continue_from=tmp_path / "first")
    assert len(other_clips["losses"]) == 2 and other_clips["losses"] != pytest.approx(same_clips["losses"], rel=1e-3)
    assert (tmp_path / "first" / "checkpoints" / "step_00000002").is_dir()  # the source run is left as it was
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run(tmp_path / "orphan", 4, _dataset(), continue_from=tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------- export

def test_export_writes_a_loadable_demo_bundle(tmp_path):
    from videossm_core.training.export import export_demo
    from videossm_core.vae import build_vae, save_vae

    model = make_tiny_model(seed=2)
    save_generator(model, tmp_path / "run" / "student.safetensors")
    save_vae(build_vae(small_vae_config(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1])), tmp_path / "vae.safetensors")
    DemoTextEncoder(text_len=TINY.text_len, text_dim=TINY.text_dim).save(tmp_path / "text_encoder.safetensors")
    out = export_demo(tmp_path / "run", tmp_path / "vae.safetensors", tmp_path / "text_encoder.safetensors",
                      tmp_path / "weights")
    assert demo_files_present(tmp_path / "weights") and out["total_mb"] < 25
    bundle = load_demo_bundle(directory=tmp_path / "weights")
    assert bundle.stream_config.position_mode == "unbounded" and bundle.fps == 16
    for key, value in model.state_dict().items():  # fp16 storage, fp32 model
        assert torch.allclose(bundle.model.state_dict()[key], value, atol=2e-3, rtol=1e-3)
    state = StreamState.new(bundle.model.config, bundle.stream_config, bundle.sampling_config)
    assert state.memory_active


def test_teacher_object_weighting_masks_the_object_at_latent_resolution():
    """``--object-weight``: the latent mask covers exactly the latent pixels the object's video pixels fall
    in (per latent frame: frame 0 alone, then groups of 4), and a uniform weight leaves the loss unchanged."""
    from videossm_core.training.data import latent_object_masks, world_batch
    from videossm_core.training.teacher import flow_matching_loss

    latent_frames, stride = 3, 4
    masks = latent_object_masks(2, latent_frames, 32, 32, seed=7, dilate=0, spatial_stride=stride)
    assert masks.shape == (2, 1, latent_frames, 32 // stride, 32 // stride) and masks.dtype == torch.uint8
    _, _, video = world_batch(7, 0, [1], 1 + 4 * (latent_frames - 1), 32, 32, with_masks=True)  # clip 1
    video = video[0, 0] > 0  # [T, H, W]
    for f, frames in enumerate([video[:1], *video[1:].split(4)]):
        cells = frames.any(0).unflatten(0, (-1, stride)).unflatten(2, (-1, stride)).any(3).any(1)
        assert torch.equal(masks[1, 0, f].bool(), cells)
    assert 0 < masks.float().mean() < 0.5  # the object is small: weighting it changes the balance
    grown = latent_object_masks(2, latent_frames, 32, 32, seed=7, dilate=1, spatial_stride=stride)
    assert (grown >= masks).all() and grown.sum() > masks.sum()

    x0, noise = torch.randn(2, 4, latent_frames, 8, 8), torch.randn(2, 4, latent_frames, 8, 8)
    sigma = torch.tensor([0.3, 0.8])

    def forward(x_t, timestep, context):
        return x_t * 0.5

    plain = flow_matching_loss(forward, x0, None, sigma, noise)
    assert torch.allclose(flow_matching_loss(forward, x0, None, sigma, noise, torch.full((1,), 3.0)), plain)
    weighted = flow_matching_loss(forward, x0, None, sigma, noise, 1.0 + 4.0 * masks.float())
    assert not torch.allclose(weighted, plain)


def test_teacher_shift_reaches_the_config_and_sets_the_training_noise_levels(tmp_path, monkeypatch):
    """``teacher --shift``: the option reaches the config, and the teacher draws its per-clip noise levels
    as ``shifted_sigma(u, shift)`` of the same uniform draws (a lower shift trains at lower noise)."""
    from videossm_core.training import teacher as teacher_module
    from videossm_core.training.cli import build_parser, teacher_config

    base = ["teacher", "--workdir", str(tmp_path), "--vae", "unused"]
    assert teacher_config(build_parser().parse_args(base)).shift == 5.0  # Wan's shift by default
    assert teacher_config(build_parser().parse_args(base + ["--shift", "1.5"])).shift == 1.5

    seen: dict[float, torch.Tensor] = {}
    real_loss = teacher_module.flow_matching_loss

    def spy(forward, x0, context, sigma, noise, weight=None):
        seen.setdefault(shift, sigma.clone())
        return real_loss(forward, x0, context, sigma, noise, weight)

    monkeypatch.setattr(teacher_module, "flow_matching_loss", spy)
    for shift in (1.0, 5.0):
        cfg = TeacherTrainConfig(workdir=str(tmp_path / str(shift)), steps=1, batch_size=4, lr=1e-3, warmup=0,
                                 latent_frames=9, shift=shift, checkpoint_every=0, log_every=1, eval_clips=0)
        train_teacher(cfg, DistEnv(), dataset=_dataset(), model_config=TINY, log=_quiet_log(tmp_path / str(shift)))
    u = seen[1.0]  # shift 1 leaves the uniform draws as they are
    assert torch.allclose(seen[5.0], teacher_module.shifted_sigma(u, 5.0))
    assert (seen[5.0] > u).all()


def test_evaluate_teacher_command_reports_which_shape_the_teacher_draws_for_each_prompt(tmp_path):
    """``evaluate-teacher``: samples a finished teacher run, decodes, and reports the accuracies and the
    prompted-vs-drawn shape table over the same clips (one entry per clip, the diagonal is the accuracy),
    plus the word-swap probe on the run's cached latents."""
    import json
    from collections import Counter

    from videossm_core.demo import world
    from videossm_core.training.cli import main
    from videossm_core.vae import build_vae, save_vae

    cfg = TeacherTrainConfig(workdir=str(tmp_path / "teacher"), steps=2, batch_size=2, lr=1e-3, warmup=0,
                             latent_frames=9, checkpoint_every=0, log_every=1, eval_clips=0)
    train_teacher(cfg, DistEnv(), dataset=_dataset(), model_config=TINY, log=_quiet_log(tmp_path))
    _dataset().save(tmp_path / "teacher" / "latents.safetensors")  # where a real run keeps its latent cache
    save_vae(build_vae(small_vae_config(base_dim=8, z_dim=TINY.in_dim, dim_mult=[1, 1, 1, 1])),
             tmp_path / "vae.safetensors")
    out = tmp_path / "teacher_eval.json"
    assert main(["evaluate-teacher", "--teacher", str(tmp_path / "teacher"), "--vae", str(tmp_path / "vae.safetensors"),
                 "--clips", "5", "--frames", "3", "--steps", "2", "--seed", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    table = results["drawn_shape_by_prompted_shape"]
    prompted = Counter(world.parse_prompt(WorldPrompts().prompt(3, 0, i)).shape for i in range(5))
    assert {shape: sum(row.values()) for shape, row in table.items()} == dict(prompted)
    assert results["shape_accuracy"] == pytest.approx(sum(row.get(s, 0) for s, row in table.items()) / 5)
    assert set(results) == {"colour_accuracy", "shape_accuracy", "background_accuracy", "drawn_shape_by_prompted_shape",
                            "object_area_vs_world", "objects_cut_by_frame_edge", "world_objects_cut_by_frame_edge",
                            "loss_rise_when_word_swapped"}
    assert results["world_objects_cut_by_frame_edge"] == 0.0  # the world's renders of the same prompts
    assert set(results["loss_rise_when_word_swapped"]) == {"colour", "shape", "motion", "background", "whole prompt"}


def test_a_teacher_run_is_measured_from_its_newest_checkpoint_while_it_trains(tmp_path):
    """``load_teacher_snapshot`` reads the EMA weights of a run's newest checkpoint: for a finished run they
    are exactly what ``teacher.safetensors`` and ``text_encoder.safetensors`` hold; a run stopped part way
    (no output files yet) is measured by ``evaluate-teacher`` from its checkpoint; a checkpoint whose
    weights do not fit says so."""
    import json

    from videossm_core.training.cli import main
    from videossm_core.training.teacher import load_teacher_snapshot
    from videossm_core.vae import build_vae, save_vae

    common = dict(batch_size=2, lr=1e-3, warmup=0, latent_frames=9, checkpoint_every=1, log_every=1, eval_clips=0)
    done = tmp_path / "done"
    train_teacher(TeacherTrainConfig(workdir=str(done), steps=2, **common), DistEnv(), dataset=_dataset(),
                  model_config=TINY, log=_quiet_log(done))
    model, text_encoder, step = load_teacher_snapshot(done)
    assert step == 2
    for snapshot, saved in ((model, load_generator(done / "teacher.safetensors")),
                            (text_encoder, DemoTextEncoder.load(done / "text_encoder.safetensors"))):
        assert snapshot.state_dict().keys() == saved.state_dict().keys()
        assert all(torch.equal(v, saved.state_dict()[k]) for k, v in snapshot.state_dict().items())
    raw = torch.load(done / "checkpoints" / "step_00000002" / "train.pt", weights_only=True)["model"]
    assert any(not torch.equal(v, raw[k]) for k, v in model.state_dict().items())  # the EMA, not the live weights

    running = tmp_path / "running"
    train_teacher(TeacherTrainConfig(workdir=str(running), steps=6, stop_after=3, **common), DistEnv(),
                  dataset=_dataset(), model_config=TINY, log=_quiet_log(running))
    assert not (running / "teacher.safetensors").exists()
    assert load_teacher_snapshot(running)[2] == 3
    _dataset().save(running / "latents.safetensors")
    save_vae(build_vae(small_vae_config(base_dim=8, z_dim=TINY.in_dim, dim_mult=[1, 1, 1, 1])),
             tmp_path / "vae.safetensors")
    out = tmp_path / "eval.json"
    assert main(["evaluate-teacher", "--teacher", str(running), "--vae", str(tmp_path / "vae.safetensors"),
                 "--clips", "2", "--frames", "3", "--steps", "2", "--swap-clips", "0", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"colour_accuracy", "shape_accuracy", "background_accuracy",
                                                "drawn_shape_by_prompted_shape", "object_area_vs_world",
                                                "objects_cut_by_frame_edge", "world_objects_cut_by_frame_edge"}

    ckpt = running / "checkpoints" / "step_00000003" / "train.pt"
    shared = torch.load(ckpt, weights_only=True)
    del shared["model_config"]  # as in checkpoints written before it was stored: rebuilt from the preset
    torch.save(shared, ckpt)
    with pytest.raises(ValueError, match="do not fit"):  # the run's preset ("demo") is not the tiny model
        load_teacher_snapshot(running)
    with pytest.raises(FileNotFoundError, match="no complete teacher checkpoint"):
        load_teacher_snapshot(tmp_path / "nothing")


def test_word_swap_sensitivity_swaps_one_kind_of_word_at_a_time():
    """The probe behind ``evaluate-teacher``'s ``loss_rise_when_word_swapped``: a teacher that reads only the
    colour word loses accuracy when colours are swapped and exactly none when any other word is."""
    from videossm_core.demo import world
    from videossm_core.training.evaluate import word_swap_sensitivity

    colours = list(world.COLOURS)
    prompts = [WorldPrompts().prompt(0, 0, i) for i in range(6)]
    latents = torch.randn(6, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    def encode(texts):  # [B, 1, 1]: the colour's index (empty prompt: -1), nothing else of the prompt
        return torch.tensor([[[float(colours.index(world.parse_prompt(t).colour)) if t else -1.0]] for t in texts])

    def forward(x_t, timestep, context):  # knows x0 when the colour index is the clip's; the flow is then
        truth = torch.tensor([colours.index(world.parse_prompt(p).colour) for p in prompts], dtype=torch.float32)
        right = (context[:, 0, 0] == truth).float().view(-1, 1, 1, 1, 1)
        sigma = (timestep[:, :1] / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_t - right * latents) / sigma + 0.1  # eps - x0 (+ 0.1: a small error even when right)

    rise = word_swap_sensitivity(forward, encode, latents, prompts, sigma=0.5)
    assert set(rise) == {"colour", "shape", "motion", "background", "whole prompt"}
    assert rise["colour"] > 0.5 and rise["whole prompt"] > 0.5
    assert rise["shape"] == rise["motion"] == rise["background"] == 0.0


def test_evaluate_vae_reports_which_shape_each_original_shape_comes_back_as():
    """``evaluate_vae``'s ``shape_by_original_shape``: one entry per measured frame, keyed by the shape read
    from the original; its diagonal is the shape accuracy."""
    from videossm_core.training.vae_training import evaluate_vae
    from videossm_core.vae import build_vae

    vae = build_vae(small_vae_config(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1]))
    result = evaluate_vae(vae, num_clips=2, height=32, width=32, num_frames=9, frame_stride=2)
    table = result["shape_by_original_shape"]
    frames = sum(sum(row.values()) for row in table.values())
    assert frames > 0 and set(table) <= {"circle", "square", "triangle", "diamond", "ring"}
    assert result["shape_accuracy"] == pytest.approx(sum(row.get(s, 0) for s, row in table.items()) / frames)


def test_demo_patch2_preset_is_the_demo_model_with_four_times_the_tokens():
    """``demo-patch2`` (what bench_teacher_patch.py compares with ``demo``): the same model but 2x2 latent
    patches, so a 16x16 latent frame is 64 tokens, and its memory gates are set up for 64 tokens a frame."""
    import dataclasses

    demo, fine = get_preset("demo"), get_preset("demo-patch2")
    assert fine.patch_size == (1, 2, 2) and fine.memory.init_tokens_per_frame == 64
    assert dataclasses.replace(fine, patch_size=demo.patch_size, memory=demo.memory) == demo
    model = CausalWanModel(fine)
    x = torch.randn(1, 16, 3, 16, 16)
    assert model.patch_embedding(x).shape == (1, fine.dim, 3, 8, 8)
    context = torch.zeros(1, fine.text_len, fine.text_dim)
    with torch.no_grad():
        out = model(x, torch.full((1, 3), 500.0), context)
    assert out.shape == x.shape


def test_teacher_markings_train_on_the_marked_world(tmp_path, monkeypatch):
    """``teacher --markings``: the latent cache is encoded from the marked world's clips (what recall tuning's teacher
    must know), the same clips the unmarked cache has but for each scene's band."""
    import numpy as np

    from videossm_core.demo import world
    from videossm_core.training import teacher as teacher_mod
    from videossm_core.training.cli import build_parser, teacher_config

    args = build_parser().parse_args(["teacher", "--workdir", "w", "--vae", "v", "--markings"])
    assert teacher_config(args).markings is True

    seen = []

    class Recorder:
        spatial_stride, device, dtype = 4, torch.device("cpu"), torch.float32

        def encode(self, frames):
            seen.append(frames)
            return frames[:, :1, ::4, ::4, ::4].repeat(1, 16, 1, 1, 1)

    monkeypatch.setattr("videossm_core.training.vae_training.load_trained_vae", lambda path: Recorder())
    for markings in (False, True):
        cfg = TeacherTrainConfig(workdir=str(tmp_path / str(markings)), vae="v", clips=2, clip_latent_frames=3,
                                 height=32, width=32, markings=markings, object_weight=1.0)
        teacher_mod._load_dataset(cfg, DistEnv())
    plain, marked = (((f[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for f in seen)
    readings = [[world.measure_frame(fr).marking for fr in clip] for clip in (plain, marked)]
    assert not any(readings[0]) and sum(m is not None for m in readings[1]) >= 0.8 * len(readings[1])
