"""Rotary position embeddings: 1-D RoPE, contiguous 3-D RoPE / M-RoPE, and MM-RoPE
(docs/design.md, "MM-RoPE").

Rotate-half convention: frequency slot ``j`` in ``[0, d/2)`` has ``inv_freq_j = theta^(-2j/d)``
and rotates channels ``j`` and ``j + d/2`` together. Each slot reads one of three position
streams (t, h, w); the allocation decides which.
"""

from __future__ import annotations

import torch


def slot_axes(head_dim: int, allocation: str) -> torch.Tensor:
    """Which stream (0 = t, 1 = h, 2 = w) each of the ``head_dim/2`` frequency slots reads.

    ``distributed`` (MM-RoPE): by ``j mod 16``: {0-3} -> t, {4,5,8,9,12,13} -> h, rest -> w.
    ``contiguous`` (3-D RoPE, M-RoPE): the first 2/8 of the slots (highest frequencies) -> t,
    the next 3/8 -> h, the last 3/8 -> w. ``1d``: every slot reads t (= the global index).
    """
    half = head_dim // 2
    j = torch.arange(half, device="cpu")  # explicit: also when built under a meta device
    if allocation == "distributed":
        r = j % 16
        axes = torch.full((half,), 2, dtype=torch.long, device="cpu")
        axes[r < 4] = 0
        axes[(r >= 4) & (r % 4 < 2)] = 1
        return axes
    if allocation == "contiguous":
        t_end, h_end = half * 2 // 8, half * 5 // 8
        return torch.where(j < t_end, 0, torch.where(j < h_end, 1, 2))
    if allocation == "1d":
        return torch.zeros(half, dtype=torch.long, device="cpu")
    raise ValueError(f"unknown RoPE allocation {allocation!r}")


def rope_cos_sin(
    positions: torch.Tensor, axes: torch.Tensor, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, L, head_dim] for position streams ``positions`` [B, 3, L] (fp32 math)."""
    half = axes.numel()
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, device=positions.device).float() / half))
    slot_pos = positions.float().permute(0, 2, 1)[..., axes.to(positions.device)]  # [B, L, d/2]
    freqs = slot_pos * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, heads, L, d] with cos/sin [B, L, d]."""
    cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin
