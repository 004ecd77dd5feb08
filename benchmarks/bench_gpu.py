"""GPU speed of the full-size model: per-chunk time, frames per second, first chunk, peak VRAM, in one table.

    python benchmarks/bench_gpu.py [--json bench_gpu.json]        # one CUDA GPU; about 5 min on an H100
    python benchmarks/bench_gpu.py --tiny                         # the same code paths, tiny preset, any device

What it measures (all through the real code paths: ``StreamSampler.generate_chunk_inplace`` on a
``StreamState``, then the streaming VAE decoder on the chunk):

- the model: preset ``wan2.1-t2v-1.3b`` with random weights built directly in bf16 on the GPU (its
  output head and memory out-gates randomised too, so every path contributes), 832x480 (latent 60x104,
  1560 tokens per latent frame), 4 denoising steps + the clean pass per chunk of 3 latent frames = 12
  video frames;
- four runs, each a fresh stream: window-only and hybrid (``StreamConfig(memory=False/True)``), eager
  and compiled (``CausalWanModel.compile_streaming()`` where the model has it). Each run generates
  ``--warmup`` chunks (the window fills at chunk 4, so later chunks all evict; compilation happens
  here) and then ``--chunks`` measured ones. Per chunk the device is synchronised before the chunk,
  after the denoising and after the decode (for the timing only: nothing inside a chunk is changed),
  giving ms per chunk for denoising alone and with the decode, and video frames per second;
- time to the first chunk (with compilation in the compiled rows), peak VRAM per run
  (``torch.cuda.max_memory_allocated``, weights included);
- bf16 vs fp32: the same weights in float32, the first chunks of a hybrid stream, relative L2
  deviation of each chunk's latents (chunk 4 is the first with a memory write);
- the memory write of one eviction (3 frames x 1560 tokens, 12 heads of 128): our chunkwise form vs
  fla's kernel (ms, max abs difference, and each against the float64 token loop).

Without a CUDA GPU (and without ``--tiny``) it says so and exits 0. ``--tiny`` runs everything at the
tiny preset with a tiny VAE on whatever device there is (the test suite runs it on the CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VIDEO_FRAMES_PER_CHUNK = 12  # 3 latent frames x 4 (the very first chunk decodes to 9)
T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench_gpu {time.perf_counter() - T0:6.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Setup:
    preset: str
    latent_hw: tuple[int, int]
    vae: str  # "wan2.1" or "tiny"
    dtype_name: str


FULL = Setup("wan2.1-t2v-1.3b", (60, 104), "wan2.1", "bf16")
TINY = Setup("tiny", (8, 8), "tiny", "bf16")


# --------------------------------------------------------------------------------------------------
# building


def build_model(preset: str, device, dtype, seed: int = 0):
    """Random weights materialised directly in ``dtype`` on ``device`` (no float32 copy on the way)."""
    import torch

    from videossm_core.config import get_preset
    from videossm_core.model.transformer import CausalWanModel

    config = get_preset(preset)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CausalWanModel(config)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # Wan's head and our out-gates start at zero; make every path count
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
        for block in model.blocks:
            memory = block.self_attn.memory
            if memory is not None:
                torch.nn.init.normal_(memory.out_gate.weight, std=0.02)
                torch.nn.init.normal_(memory.alpha_proj.weight, std=0.01)
                torch.nn.init.normal_(memory.beta_proj.weight, std=0.01)
    return model.eval().requires_grad_(False)


def build_vae(kind: str, device, dtype):
    from videossm_core.vae import WAN21_VAE_CONFIG, build_vae as _build, small_vae_config

    config = WAN21_VAE_CONFIG if kind == "wan2.1" else small_vae_config(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1])
    return _build(config, seed=0, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# measuring


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def text_conditioning(config):
    import torch

    gen = torch.Generator().manual_seed(1234)
    return torch.randn(1, config.text_len, config.text_dim, generator=gen)


def run_stream(model, vae, memory: bool, setup: Setup, warmup: int, chunks: int, max_seconds: float,
               label: str, hard_stop: float = math.inf, memory_update: str = "auto") -> dict:
    """One fresh stream: ``warmup`` chunks, then up to ``chunks`` measured ones (fewer only if measuring passes
    ``max_seconds`` or the clock passes ``hard_stop``); each chunk denoised, then decoded by the streaming
    VAE decoder."""
    from videossm_core.config import StreamConfig
    from videossm_core.sampling import PromptSegment, StreamSampler
    from videossm_core.state import StreamState

    device = model.device
    stream = StreamConfig(memory=memory, position_mode="unbounded", memory_update=memory_update)
    state = StreamState.new(model.config, stream, seed=0)
    segments = [PromptSegment(0, "benchmark", text_conditioning(model.config))]
    sampler = StreamSampler(model)
    decoder = vae.stream_decoder()
    reset_peak(device)
    denoise, decode, first = [], [], None
    sync(device)
    start = None
    for i in range(warmup + chunks):
        if i == warmup:
            start = time.perf_counter()
        sync(device)
        t0 = time.perf_counter()
        out = sampler.generate_chunk_inplace(state, segments, setup.latent_hw)
        sync(device)
        t1 = time.perf_counter()
        frames = decoder.decode_chunk(out.latents.to(vae.device, vae.dtype))
        sync(device)
        t2 = time.perf_counter()
        if first is None:
            first = (t1 - t0, t2 - t0)
            log(f"{label}: first chunk {first[0] * 1e3:.0f} ms denoising, {first[1] * 1e3:.0f} ms with the decode "
                f"({frames.shape[2]} frames {frames.shape[3]}x{frames.shape[4]})")
        if i >= warmup:
            denoise.append(t1 - t0)
            decode.append(t2 - t1)
            if len(denoise) % 10 == 0:
                log(f"{label}: {len(denoise)}/{chunks} measured chunks, last {(t2 - t0) * 1e3:.0f} ms")
            if time.perf_counter() - start > max_seconds:
                log(f"{label}: stopping after {len(denoise)} measured chunks (measuring passed {max_seconds:.0f} s)")
                break
        if time.perf_counter() > hard_stop:
            log(f"{label}: stopping after {len(denoise)} measured chunks (the benchmark's time budget is spent)")
            break
    if not denoise:
        return {"label": label, "skipped": f"stopped in the warm-up (chunk {i + 1}): the time budget is spent"}
    with_decode = [a + b for a, b in zip(denoise, decode)]
    row = {
        "label": label, "memory": memory, "chunks": len(denoise), "warmup": warmup,
        "denoise_ms": statistics.mean(denoise) * 1e3, "denoise_ms_median": statistics.median(denoise) * 1e3,
        "with_decode_ms": statistics.mean(with_decode) * 1e3,
        "with_decode_ms_median": statistics.median(with_decode) * 1e3,
        "first_chunk_ms": first[0] * 1e3, "first_chunk_with_decode_ms": first[1] * 1e3,
        "peak_vram_gib": peak_gib(device),
        "memory_writes": state.counters["memory_writes"],
    }
    row["denoise_fps"] = VIDEO_FRAMES_PER_CHUNK / (row["denoise_ms"] / 1e3)
    row["with_decode_fps"] = VIDEO_FRAMES_PER_CHUNK / (row["with_decode_ms"] / 1e3)
    return row


def bf16_vs_fp32(model, setup: Setup, chunks: int, memory_update: str = "auto") -> list[float]:
    """Relative L2 deviation of each of the first ``chunks`` chunks' latents (hybrid stream) between the
    model and a float32 copy of the same weights."""
    import torch

    from videossm_core.config import StreamConfig
    from videossm_core.sampling import PromptSegment, StreamSampler
    from videossm_core.state import StreamState

    def latents(m):
        stream = StreamConfig(memory=True, position_mode="unbounded", memory_update=memory_update)
        state = StreamState.new(m.config, stream, seed=0)
        segments = [PromptSegment(0, "benchmark", text_conditioning(m.config))]
        return [out.latents.float().cpu()
                for out in StreamSampler(m).stream_chunks_inplace(state, segments, chunks, setup.latent_hw)]

    low = latents(model)
    model32 = copy.deepcopy(model).to(torch.float32)
    high = latents(model32)
    del model32
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    return [((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(low, high)]


def write_benchmark(model, tokens: int, reps: int) -> dict:
    """One eviction's memory write (3 latent frames of tokens): chunkwise vs fla, timed and compared."""
    import torch

    from videossm_core.model import delta_rule
    from videossm_core.model.reference import gated_delta_write_reference

    config, device = model.config, model.device
    H, D = config.num_heads, config.head_dim
    T = 3 * tokens
    gen = torch.Generator(device=device).manual_seed(0)
    # keys and values as the cache holds them (model dtype), gates from the memory's initial biases plus spread
    k = torch.randn(1, T, H, D, generator=gen, device=device).to(model.dtype)
    v = torch.randn(1, T, H, D, generator=gen, device=device).to(model.dtype)
    alpha = delta_rule.retention_gate_bias(config.memory.init_log_decay_per_token)
    beta_bias = math.log(config.memory.beta_init / (1 - config.memory.beta_init))
    g, beta = delta_rule.compute_gates(alpha + 0.5 * torch.randn(1, T, H, generator=gen, device=device),
                                       beta_bias + 0.5 * torch.randn(1, T, H, generator=gen, device=device),
                                       torch.zeros(H, device=device))
    # start from a state that already holds one eviction, as in a running stream
    state = delta_rule.gated_delta_write(None, delta_rule.l2_normalize(k.float()), v.float(), g, beta,
                                         config.memory.delta_chunk_size)

    def chunkwise():  # what HybridMemory.write runs for "chunkwise"
        return delta_rule.gated_delta_write(state, delta_rule.l2_normalize(k.float()), v.float(), g, beta,
                                            config.memory.delta_chunk_size)

    def fla():
        return delta_rule.fla_gated_delta_write(state, k, v, g, beta)

    def timed(fn) -> tuple[float, object]:
        out = None
        for _ in range(3):  # warm-up (fla: Triton compiles and autotunes here)
            out = fn()
        samples = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e3, out

    result = {"tokens": T, "heads": H, "head_dim": D, "layers": config.num_layers,
              "auto_resolves_to": delta_rule.resolve_memory_update("auto", device)}
    result["chunkwise_ms"], ours = timed(chunkwise)
    truth = gated_delta_write_reference(state.double(), delta_rule.l2_normalize(k.double()), v.double(),
                                        g.double(), beta.double())
    result["state_max_abs"] = truth.abs().max().item()
    result["chunkwise_vs_fp64_max_abs"] = (ours.double() - truth).abs().max().item()
    if device.type == "cuda" and delta_rule.fla_available():
        try:
            result["fla_ms"], theirs = timed(fla)
        except Exception as err:  # noqa: BLE001 - report it beside the chunkwise figures
            traceback.print_exc()
            result["fla_ms"], result["fla_missing"] = None, f"FAILED: {type(err).__name__}: {err}"[:300]
            return result
        result["fla_vs_fp64_max_abs"] = (theirs.double() - truth).abs().max().item()
        result["chunkwise_vs_fla_max_abs"] = (ours - theirs).abs().max().item()
    else:
        result["fla_ms"] = None
        result["fla_missing"] = ("needs CUDA" if device.type != "cuda"
                                 else f"not importable ({delta_rule._fla_probe()[1]}); pip install fla-core")
    return result


# --------------------------------------------------------------------------------------------------
# the table


def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def print_table(report: dict) -> None:
    s = report["setup"]
    print()
    print(f"VideoSSM GPU benchmark: {report['device_name']}, torch {report['torch']}, preset {s['preset']} "
          f"({report['params_b']:.2f} B parameters), {s['dtype']}, {s['width']}x{s['height']} (latent "
          f"{s['latent_hw'][0]}x{s['latent_hw'][1]}, {s['tokens_per_frame']} tokens/frame), chunk = 3 latent frames "
          f"= {VIDEO_FRAMES_PER_CHUNK} video frames, 4 steps + clean pass, VAE {s['vae']} in {s['vae_dtype']}")
    head = (f"{'run':22} {'chunks':>6} {'denoise ms':>10} {'fps':>7} {'+VAE ms':>9} {'fps':>7} "
            f"{'1st chunk ms':>12} {'1st +VAE ms':>11} {'peak GiB':>8}")
    print(head)
    print("-" * len(head))
    for row in report["rows"]:
        if row.get("skipped"):
            print(f"{row['label']:22} {row['skipped']}")
            continue
        print(f"{row['label']:22} {row['chunks']:6d} {row['denoise_ms']:10.1f} {row['denoise_fps']:7.2f} "
              f"{row['with_decode_ms']:9.1f} {row['with_decode_fps']:7.2f} {row['first_chunk_ms']:12.0f} "
              f"{row['first_chunk_with_decode_ms']:11.0f} {fmt(row['peak_vram_gib'], '.2f', 8)}")
    rows = {r["label"]: r for r in report["rows"] if not r.get("skipped")}
    for kind in ("eager", "compiled"):
        w, h = rows.get(f"window-only {kind}"), rows.get(f"hybrid {kind}")
        if w and h:
            print(f"hybrid / window-only ({kind}): denoise {h['denoise_ms'] / w['denoise_ms']:.3f}, "
                  f"with the decode {h['with_decode_ms'] / w['with_decode_ms']:.3f}")
    for memory in ("window-only", "hybrid"):
        e, c = rows.get(f"{memory} eager"), rows.get(f"{memory} compiled")
        if e and c:
            print(f"compiled / eager ({memory}): denoise {c['denoise_ms'] / e['denoise_ms']:.3f}")
    dev = report.get("bf16_vs_fp32")
    if dev:
        print(f"{s['dtype']} vs fp32, same weights, hybrid stream, relative L2 of each chunk's latents: "
              + ", ".join(f"chunk {i}: {d:.2e}" for i, d in enumerate(dev))
              + f" (chunk {len(dev) - 1} is the first with a memory write)" * (len(dev) >= 5))
    w = report.get("write")
    if w:
        line = (f"memory write of one eviction ({w['tokens']} tokens x {w['heads']} heads x {w['head_dim']}, "
                f"float32 state): chunkwise {w['chunkwise_ms']:.2f} ms")
        if w["fla_ms"] is not None:
            line += (f", fla {w['fla_ms']:.2f} ms; max |chunkwise - fla| {w['chunkwise_vs_fla_max_abs']:.2e} "
                     f"(max |state| {w['state_max_abs']:.2e}); vs the fp64 token loop: chunkwise "
                     f"{w['chunkwise_vs_fp64_max_abs']:.2e}, fla {w['fla_vs_fp64_max_abs']:.2e}")
        else:
            line += (f" (vs the fp64 token loop {w['chunkwise_vs_fp64_max_abs']:.2e}, max |state| "
                     f"{w['state_max_abs']:.2e}); fla not run: {w['fla_missing']}")
        print(line)
        print(f"  per chunk that is {w['layers']} writes (one per block); the streams ran memory_update "
              f"'{s['memory_update']}' ('auto' runs '{w['auto_resolves_to']}' here)")
    for note in report.get("notes", []):
        print(f"note: {note}")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny preset and VAE on whatever device there is")
    parser.add_argument("--chunks", type=int, help="measured chunks per run (default 40; --tiny 3)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="chunks before measuring (default 5: the window is full from chunk 4 on)")
    parser.add_argument("--max-seconds-per-run", type=float, default=90.0,
                        help="stop measuring a run after this long (it then reports fewer chunks)")
    parser.add_argument("--budget", type=float, default=470.0,
                        help="seconds for the whole benchmark: runs stop at it and later ones are skipped "
                             "(the table says so); the default fits 8 minutes")
    parser.add_argument("--deviation-chunks", type=int, default=5, help="chunks compared in bf16 and fp32")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs")
    parser.add_argument("--compile-backend", help="torch.compile backend for the compiled runs (default: inductor)")
    parser.add_argument("--memory-update", default="auto", choices=["auto", "chunkwise", "fla", "recurrent"],
                        help="StreamConfig.memory_update of the streams (default auto: fla on CUDA when it imports)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu needs a CUDA GPU (torch.cuda.is_available() is False here); "
              "`python benchmarks/bench_gpu.py --tiny` runs the same code paths at the tiny preset on this machine.")
        return 0
    setup = TINY if args.tiny else FULL
    chunks = args.chunks if args.chunks is not None else (3 if args.tiny else 40)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[setup.dtype_name]
    # fp32 means fp32 (the deviation's reference, the write comparison); bf16 work is unaffected
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return run_benchmark(args, setup, chunks, device, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def run_benchmark(args, setup: Setup, chunks: int, device, dtype) -> int:
    import torch

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    log(f"device {device_name}, torch {torch.__version__}; building {setup.preset} in {setup.dtype_name} on {device}")

    t = time.perf_counter()
    model = build_model(setup.preset, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params / 1e9:.3f} B parameters in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    vae_dtype = dtype if device.type == "cuda" else torch.float32  # CPU bf16 3-D convolutions crawl
    vae = build_vae(setup.vae, device, vae_dtype)
    log(f"VAE ({setup.vae}): {sum(p.numel() for p in vae.model.parameters()) / 1e6:.1f} M parameters "
        f"in {time.perf_counter() - t:.1f} s")

    _, ph, pw = model.config.patch_size
    tokens = (setup.latent_hw[0] // ph) * (setup.latent_hw[1] // pw)
    stride = vae.spatial_stride
    report = {
        "device_name": device_name, "torch": torch.__version__, "params_b": params / 1e9, "notes": [],
        "setup": {"preset": setup.preset, "dtype": setup.dtype_name, "latent_hw": list(setup.latent_hw),
                  "height": setup.latent_hw[0] * stride, "width": setup.latent_hw[1] * stride,
                  "tokens_per_frame": tokens, "vae": setup.vae, "vae_dtype": str(vae_dtype).replace("torch.", ""),
                  "chunks": chunks, "warmup": args.warmup, "memory_update": args.memory_update},
        "rows": [],
    }

    hard_stop = T0 + args.budget

    def past_deadline() -> bool:  # too late to start another run
        return time.perf_counter() > hard_stop - 30

    skipped = f"skipped: the {args.budget:.0f} s budget is (nearly) spent"

    def run(memory: bool, kind: str) -> None:
        label = f"{'hybrid' if memory else 'window-only'} {kind}"
        if past_deadline():
            report["rows"].append({"label": label, "skipped": skipped})
            return
        log(f"{label}: {args.warmup} warm-up + {chunks} chunks")
        try:
            report["rows"].append(run_stream(model, vae, memory, setup, args.warmup, chunks,
                                             args.max_seconds_per_run, label, hard_stop, args.memory_update))
        except Exception as err:  # noqa: BLE001 - one failing run must not cost the others' figures
            traceback.print_exc()
            report["rows"].append({"label": label, "skipped": f"FAILED: {type(err).__name__}: {err}"[:300]})

    run(False, "eager")
    run(True, "eager")

    if past_deadline():
        report["notes"].append(f"bf16 vs fp32 {skipped}")
    elif dtype != torch.float32:
        log(f"bf16 vs fp32 on the first {args.deviation_chunks} chunks")
        try:
            report["bf16_vs_fp32"] = bf16_vs_fp32(model, setup, args.deviation_chunks, args.memory_update)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            report["notes"].append(f"bf16 vs fp32 FAILED: {type(err).__name__}: {err}"[:300])
    log("memory write: chunkwise vs fla")
    try:
        report["write"] = write_benchmark(model, tokens, reps=20 if not args.tiny else 3)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        report["notes"].append(f"memory write benchmark FAILED: {type(err).__name__}: {err}"[:300])

    compile_streaming = getattr(model, "compile_streaming", None)
    if args.no_compile or compile_streaming is None:
        why = ("skipped (--no-compile)" if args.no_compile
               else "compile unavailable: this CausalWanModel has no compile_streaming()")
        for memory in (False, True):
            report["rows"].append({"label": f"{'hybrid' if memory else 'window-only'} compiled", "skipped": why})
    elif past_deadline():
        for memory in (False, True):
            report["rows"].append({"label": f"{'hybrid' if memory else 'window-only'} compiled", "skipped": skipped})
    else:
        options = {} if args.compile_backend is None else {"backend": args.compile_backend}
        log(f"compile_streaming({', '.join(f'{k}={v!r}' for k, v in options.items())})")
        report["setup"]["compile_options"] = options
        try:
            compile_streaming(**options)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            for memory in (False, True):
                report["rows"].append({"label": f"{'hybrid' if memory else 'window-only'} compiled",
                                       "skipped": f"compile_streaming() FAILED: {type(err).__name__}: {err}"[:300]})
        else:
            run(False, "compiled")
            run(True, "compiled")
        try:
            from torch._dynamo.utils import counters

            report["dynamo"] = {k: dict(v) for k, v in counters.items() if k in ("stats", "graph_break")}
            stats = counters.get("stats", {})
            report["notes"].append(f"torch.compile: {stats.get('unique_graphs', 0)} graphs, "
                                   f"{sum(counters.get('graph_break', {}).values())} graph breaks")
        except Exception:  # noqa: BLE001 - only a diagnostic
            pass

    report["total_seconds"] = time.perf_counter() - T0
    print_table(report)
    log(f"done in {report['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
