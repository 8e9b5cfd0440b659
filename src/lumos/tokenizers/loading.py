"""Load a visual tokenizer directory, whichever implementation it holds.

This module sits above the implementations (:mod:`lumos.tokenizers.visual` defines the
interface and imports none of them). Recognised directories:

* ours: ``config.json`` (``model_type`` ``lumos_causal_video_tokenizer``) + ``model.safetensors``
  (:mod:`lumos.tokenizers.causal_video`);
* native Cosmos: ``config.json`` (``model_type`` ``cosmos_discrete_video_tokenizer``) +
  ``model.safetensors``, written by ``lumos convert-cosmos`` (:mod:`lumos.tokenizers.cosmos_native`);
  never runs TorchScript;
* NVIDIA's released Cosmos-Tokenizer-DV4x8x8 (``encoder.jit`` + ``decoder.jit``, whatever else
  lies beside them): an error that says to convert it, unless ``allow_torchscript`` opts in to
  running the TorchScript (:mod:`lumos.tokenizers.cosmos`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lumos.errors import LumosError
from lumos.tokenizers import causal_video, cosmos_native
from lumos.tokenizers.cosmos import CosmosTokenizer
from lumos.tokenizers.visual import VisualTokenizer


def _model_type(config: Path) -> object:
    try:
        raw = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LumosError(f"cannot read {config}: {err}") from None
    return raw.get("model_type") if isinstance(raw, dict) else None


def load_visual_tokenizer(
    path: str | Path,
    allow_torchscript: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VisualTokenizer:
    """Load the tokenizer in directory ``path`` onto ``device`` (default CPU) in ``dtype``
    (default float32; our own small tokenizer always runs in float32). ``allow_torchscript``
    lets a released Cosmos directory (``.jit`` files) run as TorchScript, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise LumosError(f"visual tokenizer directory {path} does not exist")
    if not path.is_dir():
        raise LumosError(
            f"{path} is a file; pass the directory holding the tokenizer "
            "(config.json + model.safetensors)"
        )
    has_jit = (path / "encoder.jit").exists() or (path / "decoder.jit").exists()
    weights, config = path / causal_video.WEIGHTS_NAME, path / causal_video.CONFIG_NAME
    if has_jit and not weights.exists():
        if not allow_torchscript:
            raise LumosError(
                f"{path} is NVIDIA's Cosmos tokenizer as TorchScript (.jit files); convert it once "
                f"with `lumos convert-cosmos {path} OUT_DIR --trust-torchscript` and use OUT_DIR "
                "(or, trusting its source, run the TorchScript with --trust-torchscript / "
                "allow_torchscript=True)"
            )
        return CosmosTokenizer(path, allow_torchscript=True).eval()
    if not config.exists() and not weights.exists():
        raise LumosError(
            f"{path} is not a visual tokenizer directory: expected config.json + "
            "model.safetensors (lumos train-tokenizer or lumos convert-cosmos) or NVIDIA's "
            "Cosmos-Tokenizer-DV4x8x8 (encoder.jit + decoder.jit)"
        )
    if config.is_file() and _model_type(config) == cosmos_native.MODEL_TYPE:
        return cosmos_native.CosmosVideoTokenizer.from_pretrained(path, device, dtype)
    tokenizer = causal_video.CausalVideoTokenizer.from_pretrained(path)
    return tokenizer.to(device or "cpu").eval()
