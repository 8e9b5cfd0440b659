"""Long videos at flat cost (issue 14): peak RSS and seconds per latent frame by clip length.

The shipped pipeline streams ``--frames`` RGB frames (default 33, 65, 129) of one prompt with
the sliding window (``window``: the trained 9 frames) and, as the baseline measured in the same
run, with a window as long as the clip (the whole clip in one context: positions run past the
trained range, the cache grows). Each run is a fresh process; peak RSS is the growth of the
process's peak over its RSS before loading (``VmHWM`` after a reset). Time per latent frame is
the wall time of generating and decoding over the generated latent frames; ``first frame`` is the
time until the stream's first frame.

    python benchmarks/bench_long_video.py [--frames 33 65 129]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from rss import reset_peak, status_bytes


def run_case(frames: int, full: bool) -> dict:
    from lumos.generation.pipeline import LumosPipeline

    torch.set_num_threads(2)
    before = reset_peak()
    pipe = LumosPipeline.from_pretrained()
    t0 = time.perf_counter()
    first = None
    n = 0
    for _chunk in pipe.stream(
        "a blue square moves to the right", num_frames=frames,
        window=frames if full else None, generator=torch.Generator().manual_seed(0),
    ):  # fmt: skip
        first = first or time.perf_counter() - t0
        n += 1
    total = time.perf_counter() - t0
    return {"s_per_frame": total / n, "first": first, "total": total,
            "peak": status_bytes("VmHWM") - before}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[33, 65, 129])
    p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(int(args.case[0]), args.case[1] == "full")))
        return
    rows = {}
    for frames in args.frames:
        for policy in ("window", "full"):
            out = subprocess.check_output([sys.executable, __file__, "--case", str(frames), policy])
            rows[frames, policy] = json.loads(out.decode().strip().splitlines()[-1])
    base = args.frames[0]
    print(f"{'frames':>7}{'policy':>8}{'s/latent frame':>16}{'first frame s':>15}"
          f"{'peak MB':>9}{'time vs ' + str(base):>12}{'memory vs ' + str(base):>14}")  # fmt: skip
    for (frames, policy), r in rows.items():
        b = rows[base, policy]
        print(f"{frames:>7}{policy:>8}{r['s_per_frame']:>16.3f}{r['first']:>15.2f}"
              f"{r['peak'] / 2**20:>9.0f}{r['s_per_frame'] / b['s_per_frame']:>11.2f}x"
              f"{r['peak'] / b['peak']:>13.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
