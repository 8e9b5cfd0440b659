"""Training throughput and peak GPU memory of the 1B geometry with split-SDPA attention (one call
per frame run and sample group) against FlexAttention (one call per layer), in one run (issue 19).

The trainer of the ``lumos-1b-stage2-joint-256p`` preset (bf16 autocast on fp32 weights,
activation checkpointing, fused AdamW, one process) trains on synthetic video batches: 7 latent
frames at 256 x 448 px (32 x 56 latent tokens plus a NEWLINE column), ``--batch`` samples with
different text lengths (8-32 tokens), about 13 k tokens each. Per attention mode: ``--warmup``
steps (FlexAttention compiles in the first), then ``--steps`` timed optimiser steps. Reported:
tokens per second (input tokens, padding excluded), milliseconds per step, peak GPU memory
(``torch.cuda.max_memory_allocated`` over the timed steps) and the ratios against split.
Without CUDA it prints that it was not run.

    python benchmarks/bench_flex_attention.py [--batch 4] [--warmup 2] [--steps 5] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import torch

GiB = 1024**3


def measure(mode: str, args: argparse.Namespace, out: str) -> dict:
    from lumos.training.config import load_config
    from lumos.training.train import Trainer

    overrides = [
        f"attention={mode}",
        f"compile={'true' if args.compile else 'false'}",
        "data.source=synthetic",
        "data.image_ratio=0",
        "data.shards=[]",
        "model.init_from=null",
        f"micro_batch_size={args.batch}",
        "validate_every=0",
        "checkpoint_every=0",
        "tensorboard=false",
        f"output_dir={out}",
    ]
    trainer = Trainer(load_config(preset="lumos-1b-stage2-joint-256p", overrides=overrides))
    for _ in range(args.warmup):
        trainer.train_step()
        trainer.step += 1
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        tokens += trainer.train_step()["tokens"]
        trainer.step += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    row = {
        "tokens_per_s": tokens / elapsed,
        "ms_per_step": 1000 * elapsed / args.steps,
        "peak": torch.cuda.max_memory_allocated(),
        "tokens_per_step": tokens / args.steps,
    }
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="video samples per step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also compile each layer")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA not available: not run")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("split", "flex"):
            results[mode] = measure(mode, args, f"{tmp}/{mode}")
    ref = results["split"]
    print(
        f"{'attention':<10}{'tokens/step':>12}{'tokens/s':>11}{'ms/step':>9}{'peak GiB':>10}"
        f"{'speed x':>9}{'memory x':>10}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<10}{r['tokens_per_step']:>12.0f}{r['tokens_per_s']:>11.0f}"
            f"{r['ms_per_step']:>9.0f}{r['peak'] / GiB:>10.2f}"
            f"{r['tokens_per_s'] / ref['tokens_per_s']:>9.2f}{r['peak'] / ref['peak']:>10.2f}"
        )


if __name__ == "__main__":
    main()
