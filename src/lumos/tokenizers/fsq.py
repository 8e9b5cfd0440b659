"""Finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the ``len(levels)`` channels of a latent vector is bounded and rounded to one of
``levels[i]`` values; the code book is the product grid, ``prod(levels)`` codes, with no
learned parameters. Codes are normalised to [-1, 1]. Index layout (docs/design.md,
"Tokenizers", as in Cosmos): ``index = sum_i d_i * prod(levels[:i])`` where ``d_i`` in [0, levels[i]) is the
digit of channel i, so the first channel varies fastest.

Odd levels L give the symmetric integer grid {-(L-1)/2 .. (L-1)/2}; even levels give
{-L/2 .. L/2 - 1}, obtained by shifting the bounded value by half a step before rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lumos.errors import LumosError


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through (identity) gradient."""
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """FSQ quantiser over the last dimension of its input (``dim == len(levels)`` channels)."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(n) for n in levels]
        if not levels or any(n < 2 for n in levels):
            raise LumosError(f"FSQ levels must be a non-empty list of integers >= 2; got {levels}")
        self.levels = levels
        self.eps = eps
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding gives exactly ``levels[i]`` integer values per channel."""
        levels = self._levels.to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise ``z`` [..., dim] to normalised codes in [-1, 1] (straight-through gradient)."""
        half_width = (self._levels // 2).to(z.dtype)
        return round_ste(self.bound(z)) / half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes [..., dim] -> int64 indices [...] in [0, codebook_size)."""
        half_width = self._levels // 2
        digits = torch.round(codes * half_width).to(torch.int64) + half_width
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Int indices [...] -> normalised float32 codes [..., dim]."""
        digits = (indices.to(torch.int64).unsqueeze(-1) // self._basis) % self._levels
        half_width = self._levels // 2
        return (digits - half_width).to(torch.float32) / half_width.to(torch.float32)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"
