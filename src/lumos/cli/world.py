"""``lumos world``: render procedural-world samples to GIF/PNG files for a look."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lumos import validate
from lumos.atomic import atomic_path, write_text
from lumos.data.world import SPLITS, ProceduralWorld
from lumos.errors import LumosError
from lumos.evaluation.analyser import analyse, score


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "world",
        help="render procedural-world samples to GIF/PNG",
        description="Write samples world[0..N-1] of the procedural captioned-video world: one "
        "animated GIF per video (PNG per image), sheet.png with every frame of every sample "
        "in a row, and captions.txt (file name, tab, caption). With --analyse, also print "
        "what the analyser reads off each sample and whether it matches the scene.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument(
        "--n", type=validate.int_arg(1, 100_000), default=8, help="number of samples (default 8)"
    )
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--size", default="64x64", help="HxW canvas in pixels (default 64x64)")
    p.add_argument(
        "--frames",
        type=validate.int_arg(1, 257),
        default=9,
        help="RGB frames per video (default 9)",
    )
    p.add_argument(
        "--image-fraction", type=validate.float_arg(0, 1), default=0.0, help="share of images"
    )
    p.add_argument("--seed", type=validate.SEED_ARG, default=0)
    p.add_argument(
        "--scale", type=validate.int_arg(1, 64), default=4, help="nearest-neighbour upscaling"
    )
    p.add_argument(
        "--fps", type=validate.float_arg(0, 100, lo_open=True), default=4.0, help="GIF frame rate"
    )
    p.add_argument("--analyse", action="store_true", help="run the analyser on each sample")
    p.set_defaults(func=run)


def _canvas(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LumosError(f"--size {text!r} is not HxW, e.g. 64x96") from None
    for name, value in (("height", height), ("width", width)):
        validate.integer(f"--size {name}", value, 1, 4096)
    return height, width


def run(args: argparse.Namespace) -> int:
    height, width = _canvas(args.size)
    validate.output_path(args.out, "dir", what="--out")
    world = ProceduralWorld(
        args.split, height, width, args.frames, args.seed, args.image_fraction, length=args.n
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LumosError(f"cannot create output directory {args.out}: {err}") from None
    lines, rows = [], []
    for i in range(args.n):
        sample = world[i]
        big = sample.frames.repeat(args.scale, 1).repeat(args.scale, 2)
        images = [Image.fromarray(f) for f in big]
        name = f"{i:04d}.{'gif' if len(images) > 1 else 'png'}"
        with atomic_path(args.out / name) as tmp:
            if len(images) > 1:
                images[0].save(
                    tmp,
                    save_all=True,
                    append_images=images[1:],
                    duration=int(1000 / args.fps),
                    loop=0,
                )
            else:
                images[0].save(tmp)
        lines.append(f"{name}\t{sample.caption}")
        print(f"{name}  {sample.caption}")
        if args.analyse:
            result = analyse(sample.frames)
            seen = ", ".join(
                f"{o.size} {o.color} {o.shape} {o.motion or ''}".strip() for o in result.objects
            )
            print(f"      analyser: {seen or 'nothing'} on {result.background}")
            print(f"      score: {score(result, sample.scene)}")
        gap = np.full((big.shape[1], 2, 3), 255, np.uint8)
        row = np.concatenate([x for f in big for x in (f, gap)], axis=1)
        rows.append(row)
    sheet_width = max(r.shape[1] for r in rows)
    sheet = np.concatenate(
        [
            np.pad(r, ((0, 2), (0, sheet_width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows
        ]
    )
    with atomic_path(args.out / "sheet.png") as tmp:
        Image.fromarray(sheet).save(tmp)
    write_text(args.out / "captions.txt", "\n".join(lines) + "\n")
    print(f"wrote {args.n} samples, sheet.png and captions.txt to {args.out}")
    return 0
