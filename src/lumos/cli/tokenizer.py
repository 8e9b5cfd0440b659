"""``lumos train-tokenizer`` and ``lumos eval-tokenizer``: our causal video tokenizer on the
procedural world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lumos import validate
from lumos.atomic import write_text
from lumos.data.world import SPLITS
from lumos.errors import LumosError
from lumos.evaluation.tokenizer import evaluate_tokenizer
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.causal_video import CausalVideoTokenizerConfig
from lumos.training.visual_tokenizer import TrainSettings, train_tokenizer


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err
    if not 1 <= len(values) <= 8 or not all(1 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError(f"expected 1 to 8 integers in 1..4096, got {text!r}")
    return values


def _frames_list(text: str) -> int | list[int]:
    """``--frames``: one clip length, or several separated by commas (each step draws one)."""
    values = _int_list(text)
    if not all(v <= 257 for v in values):
        raise argparse.ArgumentTypeError(f"clip lengths are 1..257 RGB frames, got {text!r}")
    return values[0] if len(values) == 1 else values


MAX_STEPS = 10**9
SIDE = validate.int_arg(1, 4096)  # pixels
FRAMES = validate.int_arg(1, 257)  # RGB frames
WIDTH = validate.int_arg(0, 4096)  # channels (0: the part is absent)


def register(subparsers: argparse._SubParsersAction) -> None:
    d, c = TrainSettings(), CausalVideoTokenizerConfig()
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train the causal video tokenizer on the procedural world",
        description="Train our causal FSQ video tokenizer on procedural-world clips. Writes "
        "OUT/config.json + OUT/model.safetensors, checkpoints in OUT/checkpoint, a log in "
        "OUT/train_log.jsonl.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--steps", type=validate.int_arg(1, MAX_STEPS), default=d.steps, help="total optimisation steps")
    p.add_argument("--batch-size", type=validate.int_arg(1, 4096), default=d.batch_size, help="clips per step")
    p.add_argument("--lr", type=validate.float_arg(0, 10, lo_open=True), default=d.lr, help="peak learning rate (AdamW)")
    p.add_argument("--warmup-steps", type=validate.int_arg(0, MAX_STEPS), default=d.warmup_steps)
    p.add_argument("--height", type=SIDE, default=d.height, help="clip height in pixels")
    p.add_argument("--width", type=SIDE, default=d.width, help="clip width in pixels")
    p.add_argument(
        "--frames",
        type=_frames_list,
        default=d.frames,
        help="RGB frames per video clip, 1 + 4k; several separated by commas (e.g. 9,25): each "
        "video step draws one of them",
    )
    p.add_argument(
        "--image-fraction",
        type=validate.float_arg(0, 1),
        default=d.image_fraction,
        help="probability that a step trains on a batch of still images (T=1)",
    )
    p.add_argument(
        "--color-augment-from",
        type=validate.int_arg(0, MAX_STEPS),
        default=d.color_augment_from,
        help="permute each clip's RGB channels at random from this step on (applies on "
        "--resume too)",
    )
    p.add_argument("--seed", type=validate.SEED_ARG, default=d.seed)
    p.add_argument("--checkpoint-every", type=validate.int_arg(1, MAX_STEPS), default=d.checkpoint_every)
    p.add_argument("--log-every", type=validate.int_arg(1, MAX_STEPS), default=d.log_every)
    p.add_argument(
        "--levels",
        type=_int_list,
        default=c.levels,
        help="FSQ levels, e.g. 8,8,8,5 (codebook size = product)",
    )
    p.add_argument(
        "--channels",
        type=_int_list,
        default=c.channels,
        help="widths per resolution stage; spatial compression = patch size * 2^(stages-1)",
    )
    p.add_argument("--patch-size", type=validate.int_arg(1, 64), default=c.patch_size)
    p.add_argument("--encoder-blocks", type=validate.int_arg(0, 64), default=c.encoder_blocks)
    p.add_argument("--decoder-blocks", type=validate.int_arg(0, 64), default=c.decoder_blocks)
    p.add_argument(
        "--refine-channels",
        type=WIDTH,
        default=c.refine_channels,
        help="width of the full-resolution refiner (0: none)",
    )
    p.add_argument("--refine-features", type=WIDTH, default=c.refine_features)
    p.add_argument(
        "--temporal-compression",
        type=int,
        choices=[1, 2, 4, 8],
        default=c.temporal_compression,
        help="4 for video tokenizers, 1 for image-only ones",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        help="start from this trained tokenizer directory (its config and weights; the "
        "architecture options above are then ignored)",
    )
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="with --init-from: train the decoder alone; the encoder and so every clip's codes "
        "stay as they are (a transformer trained on them still fits)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--stop-after",
        type=validate.int_arg(1, MAX_STEPS),
        default=None,
        help="stop (with a checkpoint) after this many steps; --steps still sets the schedule",
    )
    p.add_argument("--threads", type=validate.THREADS_ARG, default=2, help="torch threads")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval-tokenizer",
        help="PSNR / SSIM / analyser accuracy of a visual tokenizer on world clips",
        description="Encode and decode procedural-world clips and report PSNR, SSIM and the "
        "analyser's attribute accuracy on the reconstructions (table + JSON).",
    )
    e.add_argument(
        "path", type=Path, help="tokenizer directory (ours or Cosmos encoder.jit/decoder.jit)"
    )
    e.add_argument("--split", choices=SPLITS, default="heldout", help="world split: train or heldout")
    e.add_argument("--n", type=validate.int_arg(1, 100_000), default=200, help="number of clips")
    e.add_argument("--height", type=SIDE, default=64)
    e.add_argument("--width", type=SIDE, default=64)
    e.add_argument("--frames", type=FRAMES, default=9)
    e.add_argument("--seed", type=validate.SEED_ARG, default=0)
    e.add_argument("--batch-size", type=validate.int_arg(1, 4096), default=8)
    e.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    e.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow loading TorchScript (Cosmos encoder.jit/decoder.jit), which runs code",
    )
    e.add_argument("--threads", type=validate.THREADS_ARG, default=2, help="torch threads")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    validate.output_path(args.out, "dir", [args.init_from], "--out")
    if args.decoder_only and args.init_from is None and not args.resume:
        raise LumosError("--decoder-only trains the decoder of a trained tokenizer; give --init-from DIR")
    torch.set_num_threads(args.threads)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        height=args.height,
        width=args.width,
        frames=args.frames,
        image_fraction=args.image_fraction,
        color_augment_from=args.color_augment_from,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        init_from=None if args.init_from is None else str(args.init_from),
        decoder_only=args.decoder_only,
    )
    config = CausalVideoTokenizerConfig(
        levels=args.levels,
        temporal_compression=args.temporal_compression,
        spatial_compression=args.patch_size * 2 ** (len(args.channels) - 1),
        patch_size=args.patch_size,
        channels=args.channels,
        encoder_blocks=args.encoder_blocks,
        decoder_blocks=args.decoder_blocks,
        refine_channels=args.refine_channels,
        refine_features=args.refine_features,
    )
    train_tokenizer(args.out, settings, config, resume=args.resume, stop_after=args.stop_after)
    print(f"saved tokenizer to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.json is not None:
        validate.output_path(args.json, "file", [args.path], "--json")
    torch.set_num_threads(args.threads)
    tokenizer = load_visual_tokenizer(args.path, allow_torchscript=args.trust_torchscript)
    result = evaluate_tokenizer(
        tokenizer,
        args.split,
        args.n,
        args.height,
        args.width,
        args.frames,
        args.seed,
        args.batch_size,
    )
    rows = [
        ("PSNR (dB)", f"{result['psnr']:.2f}"),
        ("PSNR min (dB)", f"{result['psnr_min']:.2f}"),
        ("SSIM", f"{result['ssim']:.4f}"),
        ("analyser accuracy, reconstructions", f"{result['analyser_accuracy']:.4f}"),
        ("analyser all-correct, reconstructions", f"{result['analyser_all']:.4f}"),
        ("analyser accuracy, originals", f"{result['analyser_accuracy_original']:.4f}"),
        ("analyser all-correct, originals", f"{result['analyser_all_original']:.4f}"),
    ]
    rows += [
        (f"  {k}: recon / original", f"{v:.3f} / {result['analyser_original'][k]:.3f}")
        for k, v in result["analyser"].items()
    ]
    print(
        f"{args.path}: {result['clips']} {result['split']} clips, {args.frames}x{args.height}x{args.width}"
    )
    for name, value in rows:
        print(f"  {name:<40} {value:>14}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        write_text(args.json, text + "\n")
    return 0
