"""A preallocated key/value cache for generation (gpt-fast style), and mask-free attention over it.

Tokens are written at explicit slots ``[start, start + n)``; attention reads ``[0, start + n)``.
Rolling back is free: a later write at the same ``start`` overwrites the slots (docs/design.md,
"Generation").

Rows of a generation batch are left-padded to a common prefix length. Instead of a key-padding
mask (which on CUDA rules out the flash kernel and, with grouped-query attention, makes SDPA
materialise the scores), rows that share a padding length sit next to each other in the batch and
form a :class:`RowGroup`; :class:`RowGroupAttention` runs one unmasked SDPA call per group over
that group's own key slice ``[key_start, end)``. The padding slots are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len

    def update(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` [B, kv_heads, n, d] at ``[start, start+n)``; return keys/values
        for ``[0, start+n)``."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; writing up to {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


@dataclass(frozen=True)
class RowGroup:
    """Batch rows ``[row_start, row_stop)`` whose real tokens start at cache slot ``key_start``
    (their left padding fills ``[0, key_start)``)."""

    row_start: int
    row_stop: int
    key_start: int


@dataclass(frozen=True)
class RowGroupAttention:
    """An attention function (``model/attention.py``'s protocol) for left-padded rows over a
    cache: each group attends to keys ``[key_start, end)`` only, with no mask.

    ``causal=False``: the queries are the last ``L`` slots and see every key of their group (a
    frame over its history). ``causal=True``: the queries are the slots ``[0, L)`` = all keys (the
    prompt prefill); a group's padding queries get zeros, which nothing reads."""

    groups: tuple[RowGroup, ...]
    causal: bool = False

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool
    ) -> torch.Tensor:
        if self.causal and q.shape[2] != k.shape[2]:
            raise ValueError("causal row-group attention runs over the whole cache from slot 0")
        outs = []
        for g in self.groups:
            rows = slice(g.row_start, g.row_stop)
            kg, vg = k[rows, :, g.key_start :], v[rows, :, g.key_start :]
            if not self.causal:
                outs.append(F.scaled_dot_product_attention(q[rows], kg, vg, enable_gqa=enable_gqa))
                continue
            out = F.scaled_dot_product_attention(
                q[rows, :, g.key_start :], kg, vg, is_causal=True, enable_gqa=enable_gqa
            )
            outs.append(F.pad(out, (0, 0, g.key_start, 0)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)
