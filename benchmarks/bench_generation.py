"""Generation speed and memory, side by side with the official loop (issue 12).

Configurations (``--config``):

* ``bench`` (default): hidden 256, 4 layers, 4 heads, intermediate 688, official vocabulary
  (129,536), fp32, 2 threads; 3 latent frames of 16 x 16 tokens, 8 steps, guidance 3, history mask
  0.7, a 64-token prompt. With ``LUMOS_PEER`` set (see ``../shared/official-harness/README.md``)
  the unmodified official loop runs on the same configuration, alternating with lumos for
  ``--rounds`` rounds; the table reports medians and the official/lumos ratio of the same run.
* ``1b-width``: the ``lumos_1b`` geometry (hidden 2048, 32 heads, 8 KV heads, intermediate 8192)
  with 2 layers, random fp32 weights, 448 x 256 px (32 x 56 tokens), 13 frames (4 latent), 4 steps,
  guidance 3. ``--compare-rev REV`` also runs the lumos of git revision REV (a worktree) on it.
* ``gpu``: the 1B geometry (16 layers) with random bf16 weights on CUDA, 448 x 256, 25 frames
  (7 latent), 50 steps, guidance 15: s per video and per latent frame, peak GPU memory, and the
  SDPA kernel that ran. Prints that it was not run when no CUDA device is present.

Each variant runs in its own process (peak RSS is its own), loading the model from a checkpoint
as a user would. ``GFLOP/s`` is the variant's FLOPs (counted by ``FlopCounterMode`` on a repeat
run) over its wall time; ``of peak`` divides it by the best fp32 1024^3 matmul rate (ATen's default or
oneDNN's) measured in the same process.

    python benchmarks/bench_generation.py [--config bench|1b-width|gpu] [--rounds 3]
        [--compile] [--compare-rev REV]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "official-harness"
SETTINGS = {  # config -> (latent frames, h, w, steps, guidance)
    "bench": (3, 16, 16, 8, 3.0),
    "1b-width": (4, 32, 56, 4, 3.0),
    "gpu": (7, 32, 56, 50, 15.0),
}


def model_config(name: str):
    from lumos import LumosConfig

    if name == "bench":
        return LumosConfig.benchmark()
    if name == "1b-width":
        return LumosConfig.lumos_1b(num_hidden_layers=2)
    return LumosConfig.lumos_1b()


@torch.no_grad()
def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """The best fp32 rate of an n x n x n product here: ATen's default matmul (MKL on x86) or
    oneDNN's (what lumos's linears use for eager CPU inference), whichever is faster."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = [lambda: a @ b]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    rates = []
    for kernel in kernels:
        kernel()
        t = time.perf_counter()
        for _ in range(reps):
            kernel()
        rates.append(2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return max(rates)


def sdpa_kernels(fn) -> list[str]:
    """Names of the SDPA kernels ``fn()`` runs."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key})


def run_variant(args) -> dict:
    """One lumos measurement, in this (fresh) process."""
    from torch.utils.flop_counter import FlopCounterMode

    from lumos import LumosModel
    from lumos.generation.generate import GenerationConfig, generate

    frames, h, w, steps, guidance = SETTINGS[args.config]
    gpu = args.config == "gpu"
    device = "cuda" if gpu else "cpu"
    torch.set_num_threads(2)
    if gpu:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LumosModel(model_config("gpu")).to(torch.bfloat16).eval()
    else:
        model = LumosModel.from_pretrained(args.checkpoint)  # as a user would: from a checkpoint
    prompt = [list(range(100, 164))]  # a 64-token prompt, as the official harness uses
    cfg = GenerationConfig(num_steps=steps, guidance_scale=guidance, history_mask_ratio=0.7)
    kw = {"compile": True} if args.compile else {}

    def once():
        generate(model, prompt, frames, h, w, 1, 8, None, cfg, torch.Generator(device), **kw)
        if gpu:
            torch.cuda.synchronize()

    if args.compile or gpu:
        once()  # compile / warm up outside the timing
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    once()
    seconds = time.perf_counter() - t
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the FLOP count
    import lumos

    result = {"seconds_per_frame": seconds / frames, "seconds": seconds, "peak_rss": peak_rss}
    result["source"] = lumos.__file__
    if gpu:
        result["peak_gpu_memory"] = torch.cuda.max_memory_allocated()
        result["sdpa"] = sdpa_kernels(once)
        return result
    counter = FlopCounterMode(display=False)
    # FLOPs of the eager run (a dispatch mode cannot run compiled code), through F.linear: the
    # counter has no formula for oneDNN's linear op, which eager CPU inference runs otherwise.
    with counter, torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
        generate(model, prompt, frames, h, w, 1, 8, None, cfg, torch.Generator(device))
    result["gflops_per_s"] = counter.get_total_flops() / seconds / 1e9
    result["matmul_gflops_per_s"] = matmul_gflops()
    result["sdpa"] = sdpa_kernels(once) if args.config == "bench" else []
    return result


def run_official(rounds_dir: str) -> dict:
    peer = os.environ["LUMOS_PEER"]
    out = Path(rounds_dir) / "official.json"
    cmd = [f"{peer}/venv/bin/python", "bench_generate.py", "--tokens", "16", "--frames", "3",
           "--steps", "8", "--cfg", "3.0", "--quiet", "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=HARNESS, check=True, capture_output=True, env={**os.environ})
    r = json.loads(out.read_text())
    return {
        "seconds_per_frame": r["mean_s_per_frame"],
        "peak_rss": r["peak_rss_mb(ru_maxrss)"] * 2**20,
    }


def run_lumos(args, checkpoint: str, src: Path | None = None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        "--config",
        args.config,
        "--checkpoint",
        checkpoint,
    ]
    cmd += ["--compile"] if args.compile else []
    env = dict(os.environ)
    if src is not None:  # an older lumos: its sources first on the path
        env["PYTHONPATH"] = f"{src / 'src'}:{env.get('PYTHONPATH', '')}"
        cmd[1] = str(Path(__file__))
    out = subprocess.check_output(cmd, env=env).decode().strip().splitlines()[-1]
    return json.loads(out)


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=list(SETTINGS), default="bench")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (bench)")
    p.add_argument("--compile", action="store_true", help="lumos with compile=True")
    p.add_argument("--compare-rev", help="also run the lumos of this git revision")
    p.add_argument("--variant", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    frames, h, w, steps, guidance = SETTINGS[args.config]
    print(
        f"{args.config}: {frames} latent frames of {h}x{w} tokens, {steps} steps, guidance "
        f"{guidance}, history mask 0.7, {'bf16 CUDA' if args.config == 'gpu' else 'fp32, 2 threads'}"
    )
    if args.config == "gpu":
        if not torch.cuda.is_available():
            print("not run: no CUDA device on this machine")
            return
        r = run_lumos(args, "")
        print(
            f"s/video {r['seconds']:.1f}  s/latent frame {r['seconds_per_frame']:.2f}  "
            f"peak GPU memory {r['peak_gpu_memory'] / 2**30:.2f} GiB  SDPA {r['sdpa']}"
        )
        return
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        from lumos import LumosModel

        LumosModel(model_config(args.config)).save_pretrained(f"{tmp}/model")
        worktree = None
        if args.compare_rev:
            worktree = Path(tmp) / "old"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                            str(worktree), args.compare_rev], check=True)  # fmt: skip
        peer = args.config == "bench" and "LUMOS_PEER" in os.environ
        try:
            for _ in range(args.rounds if peer or worktree else 1):
                if peer:
                    results.setdefault("official", []).append(run_official(tmp))
                results.setdefault("lumos", []).append(run_lumos(args, f"{tmp}/model"))
                if worktree:
                    name = f"lumos @ {args.compare_rev}"
                    results.setdefault(name, []).append(run_lumos(args, f"{tmp}/model", worktree))
        finally:
            if worktree:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(worktree)], check=False)  # fmt: skip
    base_name = "official" if "official" in results else None
    print(f"{'variant':<24}{'s/frame':>9}{'peak RSS':>10}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'official/this':>15}{'RSS ratio':>10}")  # fmt: skip
    for name, rows in results.items():
        s, rss = median(rows, "seconds_per_frame"), median(rows, "peak_rss")
        flops = f"{median(rows, 'gflops_per_s'):>9.1f}" if "gflops_per_s" in rows[0] else " " * 9
        frac = (
            f"{median(rows, 'gflops_per_s') / median(rows, 'matmul_gflops_per_s'):>9.0%}"
            if "gflops_per_s" in rows[0] else " " * 9
        )  # fmt: skip
        if base_name:
            base = results[base_name]
            ratio = f"{median(base, 'seconds_per_frame') / s:>14.1f}x"
            mem = f"{median(base, 'peak_rss') / rss:>9.2f}x"
        else:
            ratio, mem = f"{'-':>15}", f"{'-':>10}"
        print(f"{name:<24}{s:>9.2f}{rss / 1e9:>9.2f}G{flops}{frac}{ratio}{mem}")
    if "lumos" in results:
        print(f"lumos SDPA kernels: {results['lumos'][0].get('sdpa') or 'n/a'}")
    for name, rows in results.items():
        if "source" in rows[0]:
            print(f"{name}: {rows[0]['source']}")
    print(f"rounds: {len(results.get('lumos', []))} (medians)"
          + (", official and lumos alternating" if base_name else ""))  # fmt: skip


if __name__ == "__main__":
    main()
