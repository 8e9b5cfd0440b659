"""``lumos convert-cosmos`` and ``lumos convert-official``: turn the released files into
directories lumos loads without running TorchScript."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lumos import validate
from lumos.data.buckets import PRESETS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-cosmos",
        help="convert NVIDIA's Cosmos-Tokenizer-DV4x8x8 (.jit) to a native tokenizer directory",
        description="Load encoder.jit and decoder.jit from SRC once (TorchScript runs code: "
        "--trust-torchscript is required), check the native network against them on a small "
        "probe, and write OUT/config.json + OUT/model.safetensors.",
    )
    p.add_argument("src", type=Path, help="directory with encoder.jit and decoder.jit")
    p.add_argument("out", type=Path, help="new output directory")
    _common(p)
    p.set_defaults(func=run_cosmos)

    p = sub.add_parser(
        "convert-official",
        help="assemble the released Lumos-1 files into one pipeline directory",
        description="Check that the official checkpoint, text tokenizer and Cosmos tokenizer "
        "belong together and write a self-contained pipeline directory (transformer, "
        "text_tokenizer, visual_tokenizer, pipeline.json with the official defaults) for "
        "`lumos generate --checkpoint OUT`.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="official Lumos-1 checkpoint dir")
    p.add_argument(
        "--text-tokenizer",
        type=Path,
        required=True,
        help="Lumos-1's text_tokenizer.json, or Chameleon's tokenizer.json",
    )
    p.add_argument(
        "--cosmos", type=Path, required=True, help="Cosmos-Tokenizer-DV4x8x8 dir (.jit files)"
    )
    p.add_argument("--out", type=Path, required=True, help="new pipeline directory")
    p.add_argument(
        "--resolution",
        choices=sorted(PRESETS),
        default="256p",
        help="resolution preset of the checkpoint: default size and buckets (default 256p)",
    )
    _common(p)
    p.set_defaults(func=run_official)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-torchscript",
        action="store_true",
        help="allow loading the .jit files (runs code from them; only for files you trust)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="store the weights in this precision (default: as released)",
    )
    p.add_argument(
        "--skip-check",
        action="store_true",
        help="do not compare the converted Cosmos network with the TorchScript on a probe",
    )


def run_cosmos(args: argparse.Namespace) -> int:
    from lumos.tokenizers.cosmos_convert import convert_cosmos

    validate.output_path(args.out, "dir", [args.src], "out")
    tok = convert_cosmos(
        args.src,
        args.out,
        allow_torchscript=args.trust_torchscript,
        dtype=DTYPES.get(args.dtype),
        check=not args.skip_check,
    )
    cfg = tok.config
    print(
        f"wrote {args.out}: Cosmos tokenizer, channels {cfg.channels} x {cfg.channels_mult}, "
        f"{tok.codebook_size} codes, {tok.temporal_compression}x{tok.spatial_compression}x"
        f"{tok.spatial_compression} compression"
    )
    return 0


def run_official(args: argparse.Namespace) -> int:
    from lumos.generation.official import convert_official

    inputs = [args.checkpoint, args.text_tokenizer, args.cosmos]
    validate.output_path(args.out, "dir", inputs, "--out")
    out = convert_official(
        args.checkpoint,
        args.text_tokenizer,
        args.cosmos,
        args.out,
        allow_torchscript=args.trust_torchscript,
        dtype=DTYPES.get(args.dtype),
        resolution=args.resolution,
        check_cosmos=not args.skip_check,
    )
    print(f'wrote pipeline {out}; generate with: lumos generate "..." --checkpoint {out}')
    return 0
