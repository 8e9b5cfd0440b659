"""Assemble the released Lumos-1 files into one self-contained pipeline directory.

``convert_official`` takes the official checkpoint (Chameleon-layout ``config.json`` and
safetensors, sharded or not), Lumos-1's ``text_tokenizer.json`` (or Chameleon's
``tokenizer.json``) and NVIDIA's Cosmos-Tokenizer-DV4x8x8 directory (``.jit`` files), checks
that they belong together, and writes::

    OUT/transformer/        config.json + the safetensors files (optionally re-cast)
    OUT/text_tokenizer/     tokenizer.json (valid for Hugging Face ``tokenizers``)
    OUT/visual_tokenizer/   native Cosmos weights (config.json + model.safetensors)
    OUT/pipeline.json       the official sampling defaults (docs/design.md, "Generation")

Every inconsistency is a one-line error before anything appears at OUT (the directory is
built under a temporary name and renamed at the end).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lumos.data.buckets import PRESET_MAX_GRIDS, PRESETS, resolution_buckets
from lumos.errors import LumosError
from lumos.generation.pipeline import PipelineDefaults
from lumos.model.checkpoint import IGNORED_PREFIXES, read_config, weight_files
from lumos.model.transformer import LumosModel
from lumos.tokenizers.cosmos_convert import atomic_directory, convert_cosmos
from lumos.tokenizers.official_text import build_official_text_tokenizer

INDEX_NAME = "model.safetensors.index.json"


def official_defaults(resolution: str = "256p") -> PipelineDefaults:
    """The official sampling defaults (docs/design.md, "Generation") at a resolution preset: 50 steps,
    guidance 15 (video) / 16 (image), history mask ratio 0.7, 12 fps x 2 s = 25 frames."""
    if resolution not in PRESETS:
        raise LumosError(f"unknown resolution {resolution!r}; choose one of {sorted(PRESETS)}")
    width, height = PRESETS[resolution]
    fps, duration = 12, 2
    return PipelineDefaults(
        fps=fps,
        duration=duration,
        height=height,
        width=width,
        num_frames=1 + fps * duration,
        num_inference_steps=50,
        guidance_scale=15.0,
        image_guidance_scale=16.0,
        history_mask_ratio=0.7,
        resolution_buckets=[list(b) for b in resolution_buckets(PRESET_MAX_GRIDS[resolution])],
    )


def _check_transformer(path: Path) -> None:
    """Keys and shapes of the checkpoint against its config (headers only, no tensor data)."""
    config = read_config(path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LumosModel(config).state_dict().items()}
    found: dict[str, tuple[int, ...]] = {}
    for file in weight_files(path):
        try:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if not key.startswith(IGNORED_PREFIXES):
                        found[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as err:
            raise LumosError(f"cannot read weights {file}: {err}") from None
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise LumosError(
            f"checkpoint {path} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise LumosError(
                f"checkpoint {path}: {key} has shape {found[key]}, its config implies {shape}"
            )


def _copy_transformer(src: Path, dst: Path, dtype: torch.dtype | None) -> None:
    """Re-save the checkpoint one file at a time (bundled VQ keys dropped, floats cast to
    ``dtype`` if given); a sharded checkpoint stays sharded under the same file names."""
    dst.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weight_map, total = {}, 0
    for file in weight_files(src):
        state = {
            k: v for k, v in load_file(str(file)).items() if not k.startswith(IGNORED_PREFIXES)
        }
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(dst / file.name), metadata={"format": "pt"})
        weight_map |= {k: file.name for k in state}
        total += sum(v.numel() * v.element_size() for v in state.values())
        del state
    if (src / INDEX_NAME).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def convert_official(
    checkpoint: str | Path,
    text_tokenizer: str | Path,
    cosmos: str | Path,
    out: str | Path,
    allow_torchscript: bool = False,
    dtype: torch.dtype | None = None,
    resolution: str = "256p",
    check_cosmos: bool = True,
) -> Path:
    """Write the pipeline directory ``out`` (must not exist) from the released files; returns it.

    ``dtype`` re-casts the transformer and the visual tokenizer weights (default: as released).
    ``allow_torchscript`` is required: the Cosmos ``.jit`` files are loaded (once) to take
    their weights.
    """
    checkpoint, cosmos, out = Path(checkpoint), Path(cosmos), Path(out)
    if out.exists():
        raise LumosError(f"output {out} already exists; choose a new directory")
    if not allow_torchscript:
        raise LumosError(
            f"converting {cosmos} loads its TorchScript files, which runs code from them; if you "
            "trust their source, pass --trust-torchscript"
        )
    defaults = official_defaults(resolution)
    vocab = read_config(checkpoint).vocab
    _check_transformer(checkpoint)
    text = build_official_text_tokenizer(text_tokenizer, vocab)
    with atomic_directory(out) as tmp:
        visual = convert_cosmos(
            cosmos,
            tmp / "visual_tokenizer",
            allow_torchscript=True,
            dtype=dtype,
            check=check_cosmos,
        )
        if visual.codebook_size != vocab.codebook_size:
            start, stop = vocab.visual_range
            raise LumosError(
                f"the checkpoint's vocabulary has {vocab.codebook_size} visual ids "
                f"[{start}, {stop}) but the Cosmos tokenizer has {visual.codebook_size} codes; "
                f"an official Lumos-1 checkpoint has vocab_size "
                f"{vocab.visual_offset + visual.codebook_size}"
            )
        text.save(tmp / "text_tokenizer")
        _copy_transformer(checkpoint, tmp / "transformer", dtype)
        (tmp / "pipeline.json").write_text(
            json.dumps(dataclasses.asdict(defaults), indent=1) + "\n"
        )
    return out
