"""Generation speed and memory (issue 2 benchmark).

Setting: hidden 256, 4 layers, 4 heads, intermediate 688, official vocabulary (129,536), fp32,
2 threads; 3 latent frames of 16 x 16 tokens, 8 steps, guidance 3, history mask 0.7.
Each variant runs in its own process so peak RSS is its own. The baseline measured in the same run
is our reference path without KV cache (every step recomputes the whole sequence); the official
implementation's figures on this machine (19 s per latent frame, 1.6 GB peak RSS at 16 x 16;
70 s per frame at 32 x 32) are printed beside them for comparison.

    python benchmarks/bench_generation.py [--size 16] [--frames 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch

OFFICIAL = {16: (19.0, 1.6e9), 32: (70.0, None)}


def build_model():
    from lumos import LumosConfig, LumosModel

    return LumosModel(LumosConfig.benchmark()).eval()


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def run_variant(args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from lumos import LumosModel
    from lumos.generation.generate import GenerationConfig, generate

    torch.set_num_threads(2)
    model = LumosModel.from_pretrained(args.checkpoint)  # as a user would: from a checkpoint
    prompt = [list(range(100, 160))]  # a 60-token prompt
    cfg = GenerationConfig(
        num_steps=args.steps,
        guidance_scale=3.0,
        history_mask_ratio=0.7,
        use_cache=args.variant == "cached",
    )

    def once():
        return generate(
            model,
            prompt,
            args.frames,
            args.size,
            args.size,
            duration=1,
            fps=8,
            config=cfg,
            generator=torch.Generator().manual_seed(0),
        )

    t = time.perf_counter()
    once()
    seconds = time.perf_counter() - t
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the FLOP count
    counter = FlopCounterMode(display=False)
    with counter:
        once()
    return {
        "seconds_per_frame": seconds / args.frames,
        "peak_rss": peak_rss,
        "model_gflops": counter.get_total_flops() / 1e9,
        "achieved_gflops_per_s": counter.get_total_flops() / seconds / 1e9,
        "matmul_gflops_per_s": matmul_gflops(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16, help="latent tokens per frame side")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--variant", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--skip-baseline", action="store_true", help="only run the cached path")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    variants = ["cached"] if args.skip_baseline else ["uncached", "cached"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        build_model().save_pretrained(tmp)
        for v in variants:
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                v,
                "--size",
                str(args.size),
                "--frames",
                str(args.frames),
                "--steps",
                str(args.steps),
                "--checkpoint",
                tmp,
            ]
            out = subprocess.check_output(cmd).decode().strip().splitlines()[-1]
            results[v] = json.loads(out)
    official_s, official_rss = OFFICIAL.get(args.size, (None, None))
    print(
        f"generation: {args.frames} latent frames of {args.size}x{args.size} tokens, "
        f"{args.steps} steps, guidance 3, history mask 0.7, fp32, 2 threads"
    )
    print(
        f"{'variant':<22}{'s/frame':>9}{'peak RSS':>11}{'GFLOP/s':>9}{'matmul GFLOP/s':>16}"
        f"{'speed-up':>10}{'mem ratio':>10}"
    )
    base = results.get("uncached")
    for name, r in results.items():
        ratios = "".join(
            f"{base[key] / r[key]:>9.1f}x" if base else f"{'-':>10}"
            for key in ("seconds_per_frame", "peak_rss")
        )
        print(
            f"{'lumos ' + name:<22}{r['seconds_per_frame']:>9.2f}{r['peak_rss'] / 1e9:>10.2f}G"
            f"{r['achieved_gflops_per_s']:>9.1f}{r['matmul_gflops_per_s']:>16.1f}{ratios}"
        )
    if official_s:
        c = results["cached"]
        rss = f"{official_rss / 1e9:.2f}G" if official_rss else "n/a"
        print(f"{'official (reported)':<22}{official_s:>9.2f}{rss:>11}")
        line = f"lumos cached vs official: {official_s / c['seconds_per_frame']:.1f}x faster"
        if official_rss:
            line += f", {official_rss / c['peak_rss']:.1f}x less peak memory"
        print(line)


if __name__ == "__main__":
    main()
