"""``lumos tokenize``: pre-tokenise a manifest or the procedural world into token shards.

On several GPUs or machines, launch it with torchrun (``torchrun --nnodes N --nproc-per-node G
-m lumos.cli.main tokenize ...``): each rank takes its share of the shards and runs the visual
tokenizer on its GPU (see :func:`lumos.data.pretokenize.pretokenize`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lumos import validate
from lumos.data.buckets import PRESET_MAX_GRIDS, parse_size, resolution_buckets
from lumos.data.pretokenize import (
    DEFAULT_ENCODE_BATCH,
    DEFAULT_SAMPLES_PER_SHARD,
    ManifestSource,
    WorldSource,
    make_job,
    pretokenize,
)
from lumos.errors import LumosError
from lumos.tokenizers.visual import DEFAULT_VISUAL_TOKENIZER_DIR
from lumos.training.distributed import (
    DistContext,
    init_distributed,
    resolve_precision,
    shutdown_distributed,
)

DEFAULT_TEXT_TOKENIZER = DEFAULT_VISUAL_TOKENIZER_DIR.parent / "text_tokenizer"
MANIFEST_FPS, WORLD_FPS = 12, 4  # defaults: 25 frames = 2 s at 12 fps; 9 frames = 2 s at 4 fps
MANIFEST_FRAMES, WORLD_FRAMES = 25, 9
MAX_FAILURES_SHOWN = 10
SIDE = validate.int_arg(1, 4096)  # pixels


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="pre-tokenise videos/images (manifest) or the procedural world into token shards",
        description="Encode every sample with the visual and text tokenizers into Parquet "
        "shards plus OUT/index.json for training. Resumable (rerun the same command), "
        "parallel (--workers), on several GPUs or machines under torchrun (each rank takes "
        "its share of the shards), or split by hand (--shard i/N). Unreadable inputs are "
        "skipped and listed in OUT/summary.json.",
    )
    p.add_argument(
        "manifest",
        nargs="?",
        type=Path,
        help="CSV (header with path,caption[,id]) or JSONL manifest; relative paths are "
        "resolved against its directory",
    )
    p.add_argument("--world", metavar="SPLIT", help="use the procedural world (train or heldout)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--count", type=validate.int_arg(1, 10**8), help="world: number of samples")
    p.add_argument("--height", type=SIDE, default=64, help="world: frame height in pixels")
    p.add_argument("--width", type=SIDE, default=64, help="world: frame width in pixels")
    p.add_argument(
        "--image-fraction",
        type=validate.float_arg(0, 1),
        default=0.0,
        help="world: share of images in [0, 1]",
    )
    p.add_argument("--seed", type=validate.SEED_ARG, default=0, help="world: seed")
    p.add_argument(
        "--frames",
        type=validate.int_arg(1, 257),
        help=f"RGB frames per video, 1 + 4k (default {MANIFEST_FRAMES}; world {WORLD_FRAMES})",
    )
    p.add_argument(
        "--fps",
        type=validate.int_arg(1, 240),
        help=f"video frame rate; frames - 1 must be a multiple (default {MANIFEST_FPS}; world "
        f"{WORLD_FPS})",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", help="manifest: fixed size WxH in pixels or a preset (256p ...)")
    size.add_argument(
        "--buckets",
        help="manifest: resolution buckets with the grid budget of a preset (256p, 384p, 480p) "
        "or a number of 32x32 grids; each input gets the bucket closest in aspect (default 256p)",
    )
    p.add_argument(
        "--visual-tokenizer",
        type=Path,
        default=DEFAULT_VISUAL_TOKENIZER_DIR,
        help="visual tokenizer directory (default: the shipped one)",
    )
    p.add_argument(
        "--text-tokenizer",
        type=Path,
        default=DEFAULT_TEXT_TOKENIZER,
        help="tokenizer.json or its directory (default: the shipped one)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the visual tokenizer runs; auto: the GPU (under torchrun the rank's, "
        "cuda:LOCAL_RANK) when CUDA is present, else the CPU",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="visual tokenizer precision; auto: bf16 on GPUs, fp32 on the CPU (our own small "
        "tokenizer always runs in fp32); part of the settings, like the device type",
    )
    p.add_argument(
        "--workers",
        type=validate.int_arg(1, 256),
        default=1,
        help="processes per rank, each owning whole shards (on a GPU each holds a tokenizer)",
    )
    p.add_argument(
        "--shard",
        default="0/1",
        help="i/N: do the shards j with j %% N == i (under torchrun the ranks split that part)",
    )
    p.add_argument(
        "--samples-per-shard",
        type=validate.int_arg(1, 10**7),
        default=DEFAULT_SAMPLES_PER_SHARD,
    )
    p.add_argument(
        "--encode-batch",
        type=validate.int_arg(1, 4096),
        default=DEFAULT_ENCODE_BATCH,
        help="clips per visual-tokenizer call (part of the settings: keep it when resuming)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise LumosError(f"--shard {text!r}: use i/N, e.g. 0/4") from None
    if not 0 <= i < n <= 10**6:
        raise LumosError(f"--shard {text!r}: need 0 <= i < N <= 1000000, e.g. 0/4")
    return i, n


def _source(args: argparse.Namespace) -> WorldSource | ManifestSource:
    if (args.manifest is None) == (args.world is None):
        raise LumosError("give either a manifest path or --world SPLIT")
    if args.world is not None:
        if args.count is None:
            raise LumosError("--world needs --count N (number of samples)")
        frames = WORLD_FRAMES if args.frames is None else args.frames
        fps = WORLD_FPS if args.fps is None else args.fps
        return WorldSource(
            args.world,
            args.count,
            args.height,
            args.width,
            frames,
            fps,
            args.image_fraction,
            args.seed,
        )
    frames = MANIFEST_FRAMES if args.frames is None else args.frames
    fps = MANIFEST_FPS if args.fps is None else args.fps
    if args.size is not None:
        return ManifestSource.open(args.manifest, frames, fps, size=parse_size(args.size))
    budget = "256p" if args.buckets is None else args.buckets
    grids = PRESET_MAX_GRIDS.get(budget.lower()) or (int(budget) if budget.isdigit() else None)
    if not grids:
        raise LumosError(f"--buckets {budget!r}: use {', '.join(PRESET_MAX_GRIDS)} or a number")
    return ManifestSource.open(args.manifest, frames, fps, buckets=resolution_buckets(grids))


def _device(choice: str, ctx: DistContext) -> torch.device:
    """The visual tokenizer's device for ``--device`` (``ctx.device`` is the rank's GPU when
    CUDA is present)."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and ctx.device.type != "cuda":
        raise LumosError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return ctx.device


def run(args: argparse.Namespace) -> int:
    part = _part(args.shard)
    inputs = [args.manifest, args.visual_tokenizer, args.text_tokenizer]
    validate.output_path(args.out, "dir", inputs, "--out")
    source = _source(args)
    ctx = init_distributed()  # one process unless under torchrun
    try:
        device = _device(args.device, ctx)
        job, toks = make_job(
            source,
            args.out,
            args.visual_tokenizer,
            args.text_tokenizer,
            args.samples_per_shard,
            args.encode_batch,
            device,
            resolve_precision(args.precision, device),
        )
        s = pretokenize(job, toks, args.workers, part, progress=not args.quiet)
    finally:
        shutdown_distributed()
    if not ctx.is_main:
        return 0
    rate = f" ({s['samples_per_second']:.1f} samples/s)" if s["samples_per_second"] else ""
    ranks = f" by {s['processes']} processes" if s["processes"] > 1 else ""
    encoding = f"{job.encoding['encode_device']} {job.encoding['encode_dtype']}"
    print(
        f"shards {s['part']}: {s['shards_tokenized']} tokenized, {s['shards_skipped']} already "
        f"done, of {s['shards_total']} in total; {s['samples_tokenized']} inputs read in "
        f"{s['seconds']:.1f} s{rate}{ranks}; visual tokenizer on {encoding}"
    )
    print(f"{s['samples']} samples written, {s['failed']} inputs failed")
    for f in s["failures"][:MAX_FAILURES_SHOWN]:
        print(f"  failed: {f['key']}: {f['error']}")
    if s["failed"] > MAX_FAILURES_SHOWN:
        print(f"  ... {s['failed'] - MAX_FAILURES_SHOWN} more")
    print(f"summary: {s['summary_path']}")
    if s["index_written"]:
        print(f"index: {job.out_dir / 'index.json'}")
    else:
        print("index not written yet: other shards are missing (run the other --shard parts)")
    return 0
