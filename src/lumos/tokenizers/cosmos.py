"""Adapter for NVIDIA Cosmos-Tokenizer-DV4x8x8, the visual tokenizer of the official Lumos-1.

The user's directory holds the TorchScript files ``encoder.jit`` and ``decoder.jit`` as
published. ``encoder(video)`` returns ``(indices, codes)`` with int indices [B, t, h, w];
``decoder(indices)`` returns RGB video in [-1, 1]. FSQ levels [8, 8, 8, 5, 5, 5] give
64,000 codes; compression is 4x in time and 8x in space (docs/design.md, "Tokenizers").

Loading TorchScript runs code stored in the file, so it needs an explicit opt-in.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lumos.errors import LumosError
from lumos.tokenizers.visual import VisualTokenizer

COSMOS_FSQ_LEVELS = (8, 8, 8, 5, 5, 5)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file on the CPU (runs code from the file: callers need the user's
    explicit opt-in)."""
    if not path.is_file():
        raise LumosError(
            f"Cosmos tokenizer file {path} is missing; the directory must hold encoder.jit and "
            "decoder.jit from Cosmos-Tokenizer-DV4x8x8"
        )
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LumosError(f"cannot load TorchScript file {path}: {first_line}") from err


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    """dtype of the module's first floating parameter (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class CosmosTokenizer(VisualTokenizer):
    """Cosmos-Tokenizer-DV4x8x8 from a directory with ``encoder.jit`` and ``decoder.jit``.

    ``allow_torchscript=True`` is required: TorchScript files execute code when run, so
    only load files from a source you trust. Inputs are cast to the dtype of the stored
    weights (bfloat16 in the published files); outputs are float32.
    """

    codebook_size = math.prod(COSMOS_FSQ_LEVELS)  # 64,000
    temporal_compression = 4
    spatial_compression = 8

    def __init__(self, path: str | Path, allow_torchscript: bool = False) -> None:
        super().__init__()
        path = Path(path)
        if not allow_torchscript:
            raise LumosError(
                f"{path} is a Cosmos tokenizer stored as TorchScript (encoder.jit/decoder.jit), "
                "which executes code when loaded; if you trust its source, opt in with "
                "--trust-torchscript (CLI) or allow_torchscript=True (Python)"
            )
        if not path.is_dir():
            raise LumosError(f"Cosmos tokenizer directory {path} does not exist")
        self.path = path
        self.encoder = load_torchscript(path / "encoder.jit")
        self.decoder = load_torchscript(path / "decoder.jit")

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        out = self.encoder(video.to(_float_dtype(self.encoder)))
        if isinstance(out, torch.Tensor):
            raise LumosError(
                f"{self.path / 'encoder.jit'} returned one tensor, i.e. it is a continuous "
                "tokenizer; a discrete one (Cosmos-Tokenizer-DV4x8x8) returning "
                "(indices, codes) is needed"
            )
        indices = out[0]
        expected = (video.shape[0], *self.latent_shape(*video.shape[2:]))
        if tuple(indices.shape) != expected or indices.is_floating_point():
            raise LumosError(
                f"{self.path / 'encoder.jit'} returned indices {indices.dtype} "
                f"{list(indices.shape)} for input {list(video.shape)}; expected integer "
                f"{list(expected)}: is this Cosmos-Tokenizer-DV4x8x8?"
            )
        return indices

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        video = self.decoder(indices)
        expected = (indices.shape[0], 3, *self.pixel_shape(*indices.shape[1:]))
        if not isinstance(video, torch.Tensor) or tuple(video.shape) != expected:
            got = list(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise LumosError(
                f"{self.path / 'decoder.jit'} returned {got} for indices "
                f"{list(indices.shape)}; expected {list(expected)}: is this "
                "Cosmos-Tokenizer-DV4x8x8?"
            )
        return video.float()
