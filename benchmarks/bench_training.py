"""Training speed and memory of the AR-DF objective (issue 4 benchmark).

Setting: hidden 256, 4 layers, 4 heads (head_dim 64), intermediate 688, official vocabulary
(129,536), fp32 on CPU, batch 1, AdamW steps; a video of 16 x 28 latent tokens per frame
(468 tokens per latent frame) with as many frames as fit the target length; tube masks,
min rate 0.7, loss chunk 1024.

Part 1, full training steps: each (attention, length) runs in its own process with
``MALLOC_MMAP_THRESHOLD_=65536`` so the resident set follows live tensors. Reported memory:
``act MB`` = peak RSS during the timed steps minus RSS before them (weights, gradients and
AdamW state are already allocated by the warm-up step), i.e. what grows with the length; it
includes a length-independent part (vocabulary-sized gradient buffers, one logits chunk).

Part 2, attention paths only: forward + backward of the decoder stack (``model.hidden``, no
head) with the dense mask and with the split-per-frame runs, alternated in one process, best of
``--repeats``, so machine load affects both alike.

    python benchmarks/bench_training.py [--lengths 1024 2048 4096 8192] [--attention split dense]
        [--steps 2] [--threads 2] [--repeats 3] [--checkpointing] [--skip-steps]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

H, W = 16, 28  # latent tokens per frame (128 x 224 pixels)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(length: int):
    """The benchmark model and one video sequence of about ``length`` tokens."""
    from lumos.model.config import LumosConfig
    from lumos.model.transformer import LumosModel
    from lumos.sequence.layout import build_sequence, tokens_per_frame
    from lumos.sequence.vocab import Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary.official()
    cfg = LumosConfig.benchmark(max_position_embeddings=16384)
    text = list(range(100, 130))
    frames = max(1, (length - len(text) - 8) // tokens_per_frame(H, W))
    codes = torch.randint(0, vocab.codebook_size, (frames, H, W))
    seq = build_sequence(vocab, text, codes, duration=2, fps=max(1, frames))
    return LumosModel(cfg).train(), vocab, seq, frames


def run_one(length: int, attention: str, steps: int, threads: int, checkpointing: bool) -> dict:
    from lumos.training.config import MaskingConfig
    from lumos.training.objective import ARDFObjective, collate

    torch.set_num_threads(threads)
    model, vocab, seq, frames = build(length)
    model.gradient_checkpointing = checkpointing
    objective = ARDFObjective(model, chunk_size=1024, attention=attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    masking = MaskingConfig(text_drop=0.0)
    gen = torch.Generator().manual_seed(0)

    def step() -> float:
        batch = collate([seq], vocab, masking, gen)
        out = objective(batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return float(out.loss)

    step()  # warm-up: allocates gradients and AdamW state
    before = rss_bytes()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = (time.perf_counter() - start) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "length": len(seq),
        "frames": frames,
        "attention": attention,
        "tokens_per_s": len(seq) / elapsed,
        "step_s": elapsed,
        "activation_bytes": max(peak - before, 0),
        "static_bytes": before,
    }


def attention_paths(lengths: list[int], repeats: int, threads: int) -> None:
    """Part 2: decoder-stack forward + backward, dense mask vs split runs, alternated."""
    from lumos.model.attention import SplitFrameAttention
    from lumos.training.config import MaskingConfig
    from lumos.training.objective import collate

    torch.set_num_threads(threads)
    print(f"{'tokens':>6} {'dense s':>8} {'split s':>8} {'speed-up':>8}")
    for length in lengths:
        model, vocab, seq, _ = build(length)
        batch = collate([seq], vocab, MaskingConfig(text_drop=0.0), torch.Generator())
        valid = batch.attention_mask.bool()
        positions, s = model.positions(batch.targets, valid)
        best = {"dense": float("inf"), "split": float("inf")}
        for _ in range(repeats):
            for name in best:
                start = time.perf_counter()
                mask = (
                    model.attention_mask(s, valid)
                    if name == "dense"
                    else SplitFrameAttention(s, valid)
                )
                h, _ = model.hidden(batch.input_ids, positions, mask)
                h.sum().backward()
                best[name] = min(best[name], time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
        speedup = best["dense"] / best["split"]
        print(
            f"{len(seq):>6} {best['dense']:>8.2f} {best['split']:>8.2f} {speedup:>8.2f}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--attention", nargs="+", default=["split", "dense"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="only run part 2")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        length, attention = args.child.split(":")
        print(
            json.dumps(
                run_one(int(length), attention, args.steps, args.threads, args.checkpointing)
            )
        )
        return

    if not args.skip_steps:
        training_steps(args)
    print(f"\nattention paths: decoder stack forward + backward, best of {args.repeats}")
    attention_paths(args.lengths, args.repeats, args.threads)


def training_steps(args: argparse.Namespace) -> None:
    """Part 1: one process per (attention, length)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for attention in args.attention:
        for length in args.lengths:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                f"{length}:{attention}",
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
            ]
            if args.checkpointing:
                cmd.append("--checkpointing")
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"# {attention} {r['length']} tokens: {r['tokens_per_s']:.0f} tok/s",
                file=sys.stderr,
            )

    print(
        f"torch {torch.__version__}, {args.threads} threads, activation checkpointing {args.checkpointing}"
    )
    print(
        f"{'attention':>9} {'tokens':>6} {'frames':>6} {'tok/s':>8} {'step s':>7} {'act MB':>8} {'x len':>6} {'x mem':>6} {'dMB/1k':>7} {'static MB':>9}"
    )
    for attention in args.attention:
        mine = [r for r in rows if r["attention"] == attention]
        base = mine[0]
        for r in mine:
            print(
                f"{attention:>9} {r['length']:>6} {r['frames']:>6} {r['tokens_per_s']:>8.0f} "
                f"{r['step_s']:>7.2f} {r['activation_bytes'] / 2**20:>8.0f} "
                f"{r['length'] / base['length']:>6.2f} "
                f"{r['activation_bytes'] / max(base['activation_bytes'], 1):>6.2f} "
                f"{_slope(r, base):>7} "
                f"{r['static_bytes'] / 2**20:>9.0f}"
            )


def _slope(row: dict, base: dict) -> str:
    """Activation MB added per 1k tokens relative to the shortest length."""
    if row is base:
        return "-"
    added = (row["activation_bytes"] - base["activation_bytes"]) / 2**20
    return f"{1000 * added / (row['length'] - base['length']):.0f}"


if __name__ == "__main__":
    main()
