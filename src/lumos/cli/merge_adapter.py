"""``lumos merge-adapter``: fold a LoRA adapter into the weights of the model it was trained on.

``lumos merge-adapter ADAPTER --out DIR [--checkpoint BASE]``. BASE is a pipeline directory
(default: the model shipped with lumos) or a bare model directory; DIR becomes a new directory of
the same kind: the merged transformer (``W + (alpha / rank) B A``, computed in float32, stored in
the base's precision unless ``--dtype``) and, for a pipeline, its text tokenizer, visual tokenizer
and pipeline.json copied as they are. The result loads without PEFT and runs as fast as the base.
Inputs are never written to; DIR must be new or empty, and appears complete or not at all.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from lumos import validate
from lumos.errors import LumosError

PIPELINE_PARTS = ("text_tokenizer", "visual_tokenizer", "pipeline.json")  # copied as they are


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge-adapter",
        help="fold a LoRA adapter into its base model's weights",
        description="Write a new pipeline (or model) directory whose transformer has the LoRA "
        "adapter merged into its weights (needs pip install lumos[lora]).",
    )
    p.add_argument(
        "adapter", type=Path, help="adapter directory (lumos train with lora.rank > 0: OUT/adapter)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="the base the adapter was trained on: a pipeline or model directory (default: the "
        "model shipped with lumos)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="new directory for the merged pipeline or model"
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        help="stored precision of the merged weights (default: the base's)",
    )
    p.set_defaults(func=run)


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The precision a checkpoint stores its floating-point weights in (float32 if mixed)."""
    from lumos.model.checkpoint import safetensors_entries, weight_files

    found = {
        dtype
        for file in weight_files(model_dir)
        for dtype, _, _ in safetensors_entries(file).values()
        if dtype.is_floating_point
    }
    return found.pop() if len(found) == 1 else torch.float32


def run(args: argparse.Namespace) -> int:
    from lumos.atomic import atomic_dir
    from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR, DTYPES
    from lumos.model.transformer import LumosModel
    from lumos.training import lora

    base = args.checkpoint or DEFAULT_PIPELINE_DIR
    if not base.is_dir():
        raise LumosError(f"--checkpoint {base} is not a directory (give a pipeline or model dir)")
    model_dir = base / "transformer" if (base / "transformer").is_dir() else base
    out = validate.output_path(args.out, "dir", [base, model_dir, args.adapter], "--out")
    if out.is_dir() and any(out.iterdir()):
        raise LumosError(f"--out {out} exists and is not empty; give a new directory")
    lora.read_adapter_config(args.adapter)  # before loading the model
    dtype = DTYPES[args.dtype] if args.dtype else stored_dtype(model_dir)

    model = LumosModel.from_pretrained(model_dir, dtype=torch.float32)
    merged = lora.merge(lora.load_adapter(model, args.adapter))
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp / "transformer" if model_dir != base else tmp, dtype=dtype)
        for name in PIPELINE_PARTS if model_dir != base else ():
            part = base / name
            if part.is_dir():
                shutil.copytree(part, tmp / name)
            elif part.is_file():
                shutil.copy2(part, tmp / name)
    print(out)
    return 0
