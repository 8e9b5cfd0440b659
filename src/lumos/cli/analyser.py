"""``python -m lumos.cli.analyser``: accuracy (%) of the world analyser
(:mod:`lumos.evaluation.analyser`) on clean and degraded (blur, noise, JPEG, colour shift)
renders of the procedural world, per attribute and condition."""

from __future__ import annotations

import argparse
import sys
import time

from lumos.errors import LumosError
from lumos.evaluation.analyser import CONDITIONS, evaluate_world


def _parse_canvas(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LumosError(f"canvas {text!r} is not HxW, e.g. 64x96") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lumos.cli.analyser",
        description="Accuracy (%) of the world analyser on clean and degraded renders.",
    )
    parser.add_argument("--n", type=int, default=1000, help="samples per condition")
    parser.add_argument("--canvases", default="64x64,64x96,48x80", help="HxW list")
    parser.add_argument("--frames", type=int, default=9, help="frames per video sample")
    parser.add_argument(
        "--conditions", default=",".join(CONDITIONS), help=f"subset of {','.join(CONDITIONS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        canvases = [_parse_canvas(c) for c in args.canvases.split(",")]
        conditions = args.conditions.split(",")
        for c in conditions:
            if c not in CONDITIONS:
                raise LumosError(f"unknown condition {c!r}; use some of {','.join(CONDITIONS)}")
        keys = ["count", "color", "shape", "size", "motion", "position", "background", "all"]
        print(f"{'condition':<10}" + "".join(f"{k:>11}" for k in keys) + f"{'psnr':>7}{'sec':>6}")
        for name in conditions:
            start = time.perf_counter()
            acc = evaluate_world(
                args.n,
                canvases,
                num_frames=args.frames,
                degradation=CONDITIONS[name],
                seed=args.seed,
            )
            row = f"{name:<10}" + "".join(f"{100 * acc[k]:>11.2f}" for k in keys)
            row += f"{acc.get('psnr', float('inf')):>7.1f}{time.perf_counter() - start:>6.0f}"
            print(row, flush=True)
    except LumosError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
