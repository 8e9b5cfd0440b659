"""``lumos generate``: text-to-video, text-to-image and image-to-video from the command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from lumos.errors import LumosError

if TYPE_CHECKING:
    from lumos.generation.pipeline import PipelineDefaults


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate videos or images from prompts",
        description="Generate a video (or image) per prompt and print the written paths. "
        "Defaults come from the model's pipeline.json.",
    )
    p.add_argument("prompts", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument(
        "--out",
        type=Path,
        help="output file (one prompt) or directory (several); default outputs/<prompt>.<format>",
    )
    p.add_argument("--format", choices=["mp4", "gif", "png"], help="default: from --out, else mp4")
    p.add_argument("--frames", type=int, help="RGB frames, 1 + 4k (1 = text-to-image)")
    p.add_argument("--t2i", action="store_true", help="text-to-image (same as --frames 1)")
    p.add_argument("--height", type=int, help="pixels, a multiple of 8")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (default 0)")
    p.add_argument("--image", type=Path, help="first frame for image-to-video (png, jpg, video)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="pipeline or model directory (default: the model shipped with lumos)",
    )
    p.add_argument("--text-tokenizer", type=Path, help="tokenizer.json for a bare model dir")
    p.add_argument("--visual-tokenizer", type=Path, help="visual tokenizer dir for a bare model")
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow loading a Cosmos TorchScript tokenizer (runs its code)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="use an untrained, randomly initialised tiny model (output is noise)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: the model's setting)")
    p.add_argument("--fps", type=int, help="frame rate of the written file (default: model's)")
    p.set_defaults(func=run)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Decoding options shared by ``lumos generate`` and ``lumos eval`` (see ``sampling_kwargs``)."""
    g = p.add_argument_group("sampling (defaults: the model's pipeline.json, else as shown)")
    g.add_argument("--steps", type=int, help="mask-decoding steps per latent frame")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--history-mask-ratio", type=float, help="history masking ratio in [0, 1)")
    g.add_argument(
        "--temperature", type=float, default=1.0, help="noise on the keep-confidences (1)"
    )
    g.add_argument(
        "--sample-temperature", type=float, default=1.0, help="token softmax temperature (1)"
    )
    g.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (all)")


def sampling_kwargs(args: argparse.Namespace, defaults: PipelineDefaults) -> dict:
    """The ``LumosPipeline.__call__`` keyword arguments set by :func:`add_sampling_args`, with
    the unset ones taken from the model's ``defaults``."""

    def pick(value, default):
        return default if value is None else value

    return {
        "num_inference_steps": pick(args.steps, defaults.num_inference_steps),
        "guidance_scale": pick(args.guidance, defaults.guidance_scale),
        "history_mask_ratio": pick(args.history_mask_ratio, defaults.history_mask_ratio),
        "temperature": args.temperature,
        "sample_temperature": args.sample_temperature,
        "top_k": args.top_k,
    }


def slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "video"


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        if not args.prompts_file.is_file():
            raise LumosError(f"prompts file {args.prompts_file} does not exist")
        prompts += [ln.strip() for ln in args.prompts_file.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise LumosError('no prompt given; e.g. lumos generate "a red circle moves to the left"')
    if any(not p.strip() for p in prompts):
        raise LumosError("a prompt is empty; give a sentence describing the video")
    return prompts


def output_paths(args: argparse.Namespace, prompts: list[str], fmt: str) -> list[Path]:
    if args.out is not None and len(prompts) == 1 and args.out.suffix:
        return [args.out]
    folder = args.out if args.out is not None else Path("outputs")
    if folder.suffix:
        raise LumosError(
            f"--out {folder} names a file but there are {len(prompts)} prompts; give a directory"
        )
    names = [
        f"{i:03d}_{slug(p)}.{fmt}" if len(prompts) > 1 else f"{slug(p)}.{fmt}"
        for i, p in enumerate(prompts)
    ]
    return [folder / n for n in names]


def load_pipeline(args: argparse.Namespace):
    from lumos.generation.pipeline import LumosPipeline

    if args.random_init:
        return LumosPipeline.random_init(args.seed)
    return LumosPipeline.from_pretrained(
        args.checkpoint, args.text_tokenizer, args.visual_tokenizer, args.trust_torchscript
    )


def load_image(path: Path, width: int, height: int):
    from lumos.data.video_io import read_video, resize_crop

    frames, _ = read_video(path, max_frames=1)
    return resize_crop(frames[:1], (width, height))[0]


def run(args: argparse.Namespace) -> int:
    from lumos.generation.pipeline import save_frames

    prompts = read_prompts(args)
    fmt = args.format or (
        args.out.suffix.lstrip(".").lower() if args.out and args.out.suffix else "mp4"
    )
    if fmt not in ("mp4", "gif", "png"):
        raise LumosError(f"unsupported output format {fmt!r}; use mp4, gif or png")
    if args.t2i and args.image:
        raise LumosError("--t2i and --image exclude each other")
    paths = output_paths(args, prompts, fmt)
    if args.threads is not None and args.threads < 1:
        raise LumosError(f"--threads must be >= 1, got {args.threads}")
    pipe = load_pipeline(args)
    d = pipe.defaults
    threads = args.threads or d.num_threads
    if threads:
        torch.set_num_threads(threads)
    frames = 1 if args.t2i else (args.frames if args.frames is not None else d.num_frames)
    height = args.height or d.height
    width = args.width or d.width
    pipe.latent_shape(frames, height, width)  # validate before any work
    image = load_image(args.image, width, height) if args.image else None
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(prompts))]
    sampling = sampling_kwargs(args, d)
    steps = sampling["num_inference_steps"]
    latent_frames = pipe.latent_shape(frames, height, width)[0] - (1 if image is not None else 0)
    bar = tqdm(
        total=latent_frames * steps,
        desc="generating",
        unit="step",
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    out = pipe(
        prompts,
        num_frames=frames,
        height=height,
        width=width,
        generator=generators,
        image=image,
        callback=lambda *_: bar.update(1),
        **sampling,
    )
    bar.close()
    if pipe.label:
        print(f"note: generated with a {pipe.label} model", file=sys.stderr)
    for video, path in zip(out.frames, paths, strict=True):
        print(save_frames(video, path, args.fps or out.fps))
    return 0
