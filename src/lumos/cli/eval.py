"""``lumos eval``: prompt-following accuracy on the procedural world, judged by the analyser."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lumos.cli.generate import add_sampling_args, sampling_kwargs
from lumos.errors import LumosError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate prompt following (colour, shape, motion) on the procedural world",
        description="Generate for held-in / held-out text-to-video, text-to-image and "
        "image-to-video prompts, judge each output with the analyser, and write a JSON report "
        "and a contact sheet.",
    )
    p.add_argument("--checkpoint", type=Path, help="pipeline directory (default: shipped model)")
    p.add_argument("--random-init", action="store_true", help="evaluate an untrained model")
    p.add_argument("--n", type=int, default=100, help="prompts per group (default 100)")
    p.add_argument("--groups", default="t2v_heldin,t2v_heldout,t2i,i2v_heldout")
    p.add_argument(
        "--max-objects", type=int, choices=[1, 2], default=1, help="objects per prompt (default 1)"
    )
    p.add_argument("--frames", type=int, help="RGB frames (default: the model's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("eval"), help="output directory")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumos.evaluation.evaluate import (
        GROUPS,
        MAX_CASES,
        build_cases,
        contact_sheet,
        evaluate,
        format_table,
        write_report,
    )
    from lumos.generation.pipeline import LumosPipeline

    groups = tuple(g for g in args.groups.split(",") if g)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise LumosError(f"unknown groups {unknown}; choose from {','.join(GROUPS)}")
    if not 1 <= args.n <= MAX_CASES or args.batch_size < 1 or args.seed < 0:
        raise LumosError(f"--n must be in 1..{MAX_CASES}, --batch-size >= 1 and --seed >= 0")
    pipe = (
        LumosPipeline.random_init(args.seed)
        if args.random_init
        else LumosPipeline.from_pretrained(args.checkpoint)
    )
    d = pipe.defaults
    frames, height, width = (
        args.frames or d.num_frames,
        args.height or d.height,
        args.width or d.width,
    )
    pipe.latent_shape(frames, height, width)
    sampling = sampling_kwargs(args, d)
    cases = build_cases(args.n, height, width, frames, args.seed, args.max_objects, groups)
    bar = tqdm(total=len(cases), desc="evaluating", unit="prompt", disable=not sys.stderr.isatty())
    start = time.perf_counter()
    report, videos = evaluate(
        pipe,
        cases,
        frames,
        height,
        width,
        args.batch_size,
        progress=bar.update,
        **sampling,
    )
    bar.close()
    report["settings"] = {
        "checkpoint": "random-init" if args.random_init else str(args.checkpoint or "default"),
        "n_per_group": args.n,
        "max_objects": args.max_objects,
        "frames": frames,
        "height": height,
        "width": width,
        **sampling,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(format_table(report))
    print(write_report(report, args.out / "report.json"))
    print(contact_sheet(cases, videos, args.out / "contact_sheet.png"))
    return 0
