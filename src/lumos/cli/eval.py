"""``lumos eval``: prompt-following accuracy on the procedural world, judged by the analyser."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lumos import validate
from lumos.cli.generate import (
    FRAMES_ARG,
    SIDE_ARG,
    add_adapter_arg,
    add_placement_args,
    add_sampling_args,
    sampling_kwargs,
)
from lumos.errors import LumosError
from lumos.evaluation.evaluate import MAX_CASES

MAX_SEED = 1_000_000  # case seeds grow as seed * MAX_CASES


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
    add_adapter_arg(p)
    p.add_argument(
        "--n",
        type=validate.int_arg(1, MAX_CASES),
        default=100,
        help="prompts per group (default 100)",
    )
    p.add_argument("--groups", default="t2v_heldin,t2v_heldout,t2i,i2v_heldout")
    p.add_argument(
        "--max-objects", type=int, choices=[1, 2], default=1, help="objects per prompt (default 1)"
    )
    p.add_argument("--frames", type=FRAMES_ARG, help="RGB frames (default: the model's)")
    p.add_argument("--height", type=SIDE_ARG, help="pixels (default: the model's)")
    p.add_argument("--width", type=SIDE_ARG, help="pixels (default: the model's)")
    p.add_argument("--batch-size", type=validate.int_arg(1, 1024), default=8)
    p.add_argument("--seed", type=validate.int_arg(0, MAX_SEED), default=0)
    p.add_argument("--out", type=Path, default=Path("eval"), help="output directory")
    add_sampling_args(p)
    add_placement_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumos.evaluation.evaluate import (
        GROUPS,
        build_cases,
        contact_sheet,
        evaluate,
        format_table,
        write_report,
    )
    from lumos.generation.pipeline import LumosPipeline, placement

    groups = tuple(g for g in args.groups.split(",") if g)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise LumosError(f"unknown groups {unknown}; choose from {','.join(GROUPS)}")
    if args.adapter is not None and args.random_init:
        raise LumosError("--adapter applies to a trained model, not to --random-init")
    report_path = validate.output_path(args.out / "report.json", "file", what="--out")
    sheet_path = validate.output_path(args.out / "contact_sheet.png", "file", what="--out")
    pipe = (
        LumosPipeline.random_init(args.seed).to(*placement(args.device, args.dtype))
        if args.random_init
        else LumosPipeline.from_pretrained(
            args.checkpoint, device=args.device, dtype=args.dtype, adapter=args.adapter
        )
    )
    d = pipe.defaults
    size = d.resolve(num_frames=args.frames, height=args.height, width=args.width)
    frames, height, width = size["num_frames"], size["height"], size["width"]
    pipe.latent_shape(frames, height, width)
    sampling = sampling_kwargs(args, d, frames)
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
        "adapter": None if args.adapter is None else str(args.adapter),
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
    print(write_report(report, report_path))
    print(contact_sheet(cases, videos, sheet_path))
    return 0
