"""Speed of the MaskGIT sampling head (``MaskGITScheduler.sample``): the head matmul over the
codebook, the softmax and the two-level inverse CDF, on the positions one latent frame scores.

Configurations (``--config``): ``bench``, the benchmark model's head (hidden 256, codebook 64,000)
on a 16 x 16 frame in 8 steps (the positions still masked before each step, 1,424 in all);
``1b-width``, the ``lumos_1b`` head (hidden 2048) on the first step of a 32 x 56 frame (1,792
positions). Random head weights (std 0.02, the model's init) and hidden states, fp32, one prompt.

Variants, alternating for ``--rounds`` rounds (medians; ratio against the first): the codebook in
one piece or streamed in ``vocab_chunk`` pieces, the matmul through ``F.linear`` (ATen's default,
MKL on x86) or oneDNN (``lumos.model.linear.linear``, the default for eager fp32 inference on
an x86 CPU).

    python benchmarks/bench_sampling.py [--config bench|1b-width] [--rounds 7] [--threads 2]
        [--vocab-chunks 4096 8192]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lumos import LumosConfig
from lumos.generation.scheduler import MaskGITScheduler, unmask_schedule
from lumos.model.linear import ONEDNN_LINEAR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["bench", "1b-width"], default="bench")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-chunks", type=int, nargs="+", default=[4096])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    if args.config == "bench":
        d, positions = LumosConfig.benchmark().hidden_size, [256, *unmask_schedule(256, 8)[:-1]]
    else:
        d, positions = LumosConfig.lumos_1b().hidden_size, [32 * 56]
    V = LumosConfig.benchmark().vocab.codebook_size
    head = torch.randn(V, d, generator=g) * 0.02
    inputs = [(torch.randn(1, n, d, generator=g), torch.rand(1, n, generator=g)) for n in positions]

    def variant(vocab_chunk: int, onednn: bool):
        sched = MaskGITScheduler(vocab_chunk=vocab_chunk)

        def run() -> None:
            with torch.backends.mkldnn.flags(enabled=onednn, allow_tf32=None):
                for hidden, u in inputs:
                    sched.sample(hidden, head, u)

        return run

    onednn_ok = ONEDNN_LINEAR
    variants = {"one piece, F.linear": variant(V, False)}
    if onednn_ok:
        variants["one piece, oneDNN"] = variant(V, True)
    for c in args.vocab_chunks:
        variants[f"pieces of {c}, F.linear"] = variant(c, False)
        if onednn_ok:
            variants[f"pieces of {c}, oneDNN"] = variant(c, True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for run in variants.values():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in variants.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)

    flops = 2 * d * V * sum(positions)
    base = statistics.median(next(iter(times.values())))
    unit = "frame" if args.config == "bench" else "step"
    print(f"{args.config}: hidden {d}, codebook {V}, positions {positions}, {args.threads} threads")
    print(f"{'variant':28s} {'ms/' + unit:>10s} {'head GFLOP/s':>13s} {'speed-up':>9s}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:28s} {m * 1e3:10.1f} {flops / m / 1e9:13.1f} {base / m:8.2f}x")


if __name__ == "__main__":
    main()
