"""A preallocated key/value cache for generation (gpt-fast style).

Tokens are written at explicit slots ``[start, start + n)``; attention reads ``[0, start + n)``.
Rolling back is free: a later write at the same ``start`` overwrites the slots. ``valid``
[B, max_len] marks real (non-padding) slots, so left-padded rows attend to their own tokens only.
"""

from __future__ import annotations

import torch


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
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
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

    def key_padding_mask(self, end: int) -> torch.Tensor | None:
        """[B, 1, 1, end] bool mask of valid keys, or None when every slot is valid."""
        valid = self.valid[:, :end]
        return None if bool(valid.all()) else valid[:, None, None, :]
