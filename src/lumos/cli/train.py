"""``lumos train``: train or fine-tune a Lumos model with the AR-DF objective.

Single process: ``lumos train --preset tiny-cpu-joint``. Data parallel:
``torchrun --nproc-per-node 8 -m lumos.cli.main train --preset lumos-1b-stage1-t2i-256p``.
A run resumes from the newest checkpoint in its output directory unless ``--no-resume``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from lumos.errors import LumosError
from lumos.training.config import PRESETS, describe_preset, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (AR-DF objective; DDP/FSDP2 under torchrun)",
        description="Train a Lumos model from a preset and/or a YAML config. Writes "
        "OUTPUT/metrics.jsonl, OUTPUT/tensorboard, OUTPUT/checkpoints/step-*/ and the final "
        "weights in OUTPUT/model (load with LumosModel.from_pretrained), or with lora.rank > 0 "
        "only the adapter in OUTPUT/adapter (lumos generate --adapter, lumos merge-adapter).",
    )
    p.add_argument("--preset", help="a named recipe (see --list-presets)")
    p.add_argument("--config", help="YAML file; its sections refine the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set optim.lr=3e-4 --set data.image_ratio=0.5",
    )
    p.add_argument("--output", help="output directory (same as --set output_dir=...)")
    p.add_argument("--steps", type=int, help="total optimiser steps (same as --set steps=...)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name in PRESETS:
            print(f"{name:30s} {describe_preset(name)}")
        return 0
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output_dir={args.output}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    cfg = load_config(args.config, args.preset, overrides)
    if args.print_config:
        print(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False), end="")
        return 0
    from lumos.training.checkpointing import list_checkpoints
    from lumos.training.train import train

    if args.no_resume and list_checkpoints(Path(cfg.output_dir) / "checkpoints"):
        raise LumosError(
            f"{cfg.output_dir} holds checkpoints of an earlier run that --no-resume would replace; "
            "choose another --output (or delete that directory first)"
        )
    train(cfg, resume=not args.no_resume)
    return 0
