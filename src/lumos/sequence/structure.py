"""Per-token structure derived from ids alone, vectorised over a batch.

Everything the model needs besides the ids (MM-RoPE positions, frame spans for the attention
mask) comes from here, so a plain ``model(input_ids)`` call is exact. No per-token Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from lumos.sequence.layout import FRAME_HEADER_LEN
from lumos.sequence.vocab import Vocabulary


@dataclass
class TokenStructure:
    """All tensors are [B, L]. ``index`` is the global sequence index counting valid tokens only
    (left padding does not shift positions). ``frame`` is the latent-frame number of tokens inside a
    frame span (FSTART .. FEND inclusive) and -1 elsewhere. ``content`` marks visual content
    tokens (visual ids, MASK and the NEWLINE column); ``row``/``col`` are their latent grid
    coordinates (NEWLINE has col = w). ``p0`` [B] is the index of each sample's first content
    token (0 when it has none)."""

    index: torch.Tensor
    frame: torch.Tensor
    content: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    p0: torch.Tensor

    def slice(self, start: int, end: int) -> TokenStructure:
        """The structure of sequence positions ``start:end`` (every [B, L] field sliced on dim 1).
        ``p0`` is per sample and kept, so positions computed from the slice equal those of the same
        tokens in the full sequence."""
        per_token = {f.name: getattr(self, f.name)[:, start:end] for f in fields(self) if f.name != "p0"}
        return replace(self, **per_token)


def token_structure(
    ids: torch.Tensor, vocab: Vocabulary, valid: torch.Tensor | None = None
) -> TokenStructure:
    """Structure of ``ids`` [B, L]; ``valid`` [B, L] bool marks non-padding tokens."""
    B, L = ids.shape
    arange = torch.arange(L, device=ids.device).expand(B, L)
    index = arange if valid is None else valid.long().cumsum(1) - 1

    is_fstart = ids == vocab.frame_start
    is_fend = ids == vocab.frame_end
    is_newline = ids == vocab.newline
    starts = is_fstart.long().cumsum(1)
    ends_before = is_fend.long().cumsum(1) - is_fend.long()
    in_span = starts > ends_before
    frame = torch.where(in_span, starts - 1, -1)

    last_fstart = torch.where(is_fstart, arange, -1).cummax(1).values
    content = in_span & (arange - last_fstart >= FRAME_HEADER_LEN) & ~is_fend

    # Rows: newlines seen inside this frame before this token.
    newlines_before = is_newline.long().cumsum(1) - is_newline.long()
    at_start = newlines_before.gather(1, last_fstart.clamp(min=0))
    row = newlines_before - at_start
    # Columns: distance from the last row boundary (previous NEWLINE or the frame header).
    prev_newline = torch.where(is_newline, arange, -1).cummax(1).values
    prev_newline = torch.cat([prev_newline.new_full((B, 1), -1), prev_newline[:, :-1]], dim=1)
    boundary = torch.maximum(prev_newline, last_fstart + FRAME_HEADER_LEN - 1)
    col = arange - boundary - 1

    zeros = torch.zeros_like(index)
    row = torch.where(content, row, zeros)
    col = torch.where(content, col, zeros)
    big = torch.full_like(index, torch.iinfo(torch.long).max)
    p0 = torch.where(content, index, big).min(1).values
    p0 = torch.where(content.any(1), p0, torch.zeros_like(p0))
    return TokenStructure(index, frame, content, row, col, p0)


def rope_positions(s: TokenStructure, scale_t: int = 4, scale_hw: int = 8) -> torch.Tensor:
    """MM-RoPE position streams [B, 3, L] (t, h, w) (docs/design.md, "MM-RoPE").

    Content tokens get ``t = scale_t*frame + P0``, ``h = scale_hw*row + P0``,
    ``w = scale_hw*col + P0``; every other token uses its global index on all three streams.
    Pass scales of 1 for the unscaled ablations.
    """
    p0 = s.p0[:, None]
    t = torch.where(s.content, scale_t * s.frame + p0, s.index)
    h = torch.where(s.content, scale_hw * s.row + p0, s.index)
    w = torch.where(s.content, scale_hw * s.col + p0, s.index)
    return torch.stack([t, h, w], dim=1)


def frame_causal_mask(s: TokenStructure, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dense boolean attention mask [B, 1, L, L], True = may attend (docs/design.md,
    "Frame-causal attention"):
    ``k <= q`` or q and k in the same frame span; padding keys are excluded (a padding
    query attends to itself only, so no row is empty)."""
    B, L = s.frame.shape
    idx = torch.arange(L, device=s.frame.device)
    causal = idx[None, :] <= idx[:, None]
    same_frame = (s.frame[:, :, None] == s.frame[:, None, :]) & (s.frame[:, :, None] >= 0)
    allowed = causal[None] | same_frame
    if valid is not None:
        allowed = allowed & valid[:, None, :]
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=idx.device)[None]
    return allowed[:, None]
