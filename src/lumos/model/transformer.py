"""The Lumos-1 decoder: a Chameleon/Llama transformer with QK-norm and MM-RoPE (docs/design.md,
"MM-RoPE" and "Frame-causal attention").

Module names match the official checkpoint keys (``model.layers.{i}.self_attn.q_proj`` ...), so
state dicts load without renaming. ``LumosModel(input_ids)`` derives positions and the
frame-causal mask from the ids; generation passes positions, a KV cache and no dense mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lumos.model.attention import AttentionMask
from lumos.model.checkpoint import read_config, read_weights, save_checkpoint
from lumos.model.config import ROPE_TYPES, LumosConfig
from lumos.model.kv_cache import KVCache
from lumos.model.linear import Linear
from lumos.model.rope import apply_rope, rope_cos_sin, slot_axes
from lumos.sequence.structure import frame_causal_mask, rope_positions, token_structure


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class QKNorm(nn.Module):
    """Per-head LayerNorm over head_dim without inner affine, then a ``[1, head_dim]``
    weight and bias shared by all heads (official ``model_parallel_size`` = 1)."""

    def __init__(self, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, head_dim))
        self.bias = nn.Parameter(torch.zeros(1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., head_dim]
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return x * self.weight[0] + self.bias[0]


class Attention(nn.Module):
    def __init__(self, cfg: LumosConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        d = cfg.hidden_size
        self.q_proj = Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = Linear(self.n_heads * self.head_dim, d, bias=False)
        self.q_norm = QKNorm(self.head_dim)
        self.k_norm = QKNorm(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        cache: KVCache | None = None,
        layer: int = 0,
        cache_start: int = 0,
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, cache_start, k, v)
        gqa = self.n_kv != self.n_heads
        if callable(mask):  # an attention function, e.g. training's per-frame split attention
            out = mask(q, k, v, gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, cfg: LumosConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LumosConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        cache: KVCache | None = None,
        layer: int = 0,
        cache_start: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, cache_start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: LumosConfig) -> None:
        super().__init__()
        # Initialised by LumosModel._init_weights (passing _weight skips nn.Embedding's own
        # init, whose meta-device kernel costs ~80 MB of memory the first time it runs).
        weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class LumosOutput:
    logits: torch.Tensor | None  # [B, L, vocab_size]
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings, each layer, final norm


class LumosModel(nn.Module):
    """Lumos-1 decoder with an untied LM head."""

    def __init__(self, cfg: LumosConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vocab = cfg.vocab
        self.model = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        allocation, self.rope_scaled = ROPE_TYPES[cfg.rope_type]
        self.register_buffer("rope_axes", slot_axes(cfg.head_dim, allocation), persistent=False)
        self.apply(self._init_weights)
        # Checkpoints carry activation checkpointing decisions per block (set by training).
        self.gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)) and not module.weight.is_meta:
            nn.init.normal_(module.weight, std=self.config.initializer_range)

    def init_buffers(self) -> None:
        """Rebuild the non-persistent buffers (absent from state dicts), e.g. after loading
        weights into a model built on the meta device."""
        allocation, _ = ROPE_TYPES[self.config.rope_type]
        self.rope_axes = slot_axes(self.config.head_dim, allocation)

    # ---- structure from ids ---------------------------------------------------------------
    def positions(self, input_ids: torch.Tensor, valid: torch.Tensor | None = None):
        """Position streams [B, 3, L] and the token structure derived from the ids."""
        s = token_structure(input_ids, self.vocab, valid)
        if self.config.rope_type == "1d":
            return s.index[:, None].expand(-1, 3, -1), s
        cfg = self.config
        scale_t, scale_hw = (cfg.rope_scale_t, cfg.rope_scale_hw) if self.rope_scaled else (1, 1)
        return rope_positions(s, scale_t, scale_hw), s

    def attention_mask(self, s, valid: torch.Tensor | None) -> torch.Tensor:
        """Dense boolean mask [B, 1, L, L] for a full sequence (frame-causal or causal)."""
        if self.config.frame_bidirectional:
            return frame_causal_mask(s, valid)
        return frame_causal_mask(replace(s, frame=torch.full_like(s.frame, -1)), valid)

    # ---- forward --------------------------------------------------------------------------
    def hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: AttentionMask,
        cache: KVCache | None = None,
        cache_start: int = 0,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Final-norm hidden states [B, L, d]. ``mask`` is a boolean attention mask broadcastable
        to [B, heads, L, keys] (None = attend to everything, e.g. a frame over its cache), or a
        callable ``attend(q, k, v, enable_gqa)`` that replaces SDPA (training's split attention)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, self.rope_axes, self.config.rope_theta, x.dtype)
        states = [x] if output_hidden_states else None
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, mask, None, i, 0, use_reentrant=False
                )
            else:
                x = layer(x, cos, sin, mask, cache, i, cache_start)
            if states is not None and i < len(self.model.layers) - 1:
                states.append(x)
        x = self.model.norm(x)
        if states is not None:
            states.append(x)
        return x, (tuple(states) if states is not None else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> LumosOutput:
        """Full-sequence forward. ``input_ids`` [B, L]; ``attention_mask`` [B, L] (1 = token,
        0 = padding) as in Hugging Face. Positions and the frame-causal mask come from the ids."""
        valid = None if attention_mask is None else attention_mask.bool()
        positions, s = self.positions(input_ids, valid)
        mask = self.attention_mask(s, valid)
        h, states = self.hidden(
            input_ids, positions, mask, output_hidden_states=output_hidden_states
        )
        return LumosOutput(self.lm_head(h), states)

    @property
    def visual_head(self) -> torch.Tensor:
        """The head's rows over the visual codebook, [codebook_size, hidden] (a view)."""
        start, stop = self.vocab.visual_range
        return self.lm_head.weight[start:stop]

    def visual_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the visual slice of the vocabulary only: [..., codebook_size]."""
        return F.linear(h, self.visual_head)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        cfg = self.config
        return KVCache(
            cfg.num_hidden_layers,
            batch_size,
            max_len,
            cfg.num_key_value_heads,
            cfg.head_dim,
            p.dtype,
            p.device,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        mmap: bool = True,
    ) -> LumosModel:
        """Load a checkpoint directory (official Lumos-1 or lumos format); mismatches are
        one-line errors. Built on the meta device, then the checkpoint's tensors are assigned;
        with ``mmap`` (CPU only) they stay memory-mapped until written to or converted."""
        path = Path(path)
        cfg = read_config(path)
        with torch.device("meta"):
            model = cls(cfg)
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        model.load_state_dict(read_weights(path, shapes, dtype, device, mmap), assign=True)
        model.init_buffers()
        return model.to(device).eval()

    @classmethod
    def on_meta(cls, path: str | os.PathLike) -> LumosModel:
        """The model of a checkpoint directory on the ``meta`` device: its config and shapes,
        no weights read (for planning)."""
        with torch.device("meta"):
            return cls(read_config(Path(path))).eval()

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Save config.json + model.safetensors; ``dtype`` optionally changes the stored precision."""
        save_checkpoint(path, self.config.to_dict(), self.state_dict(), dtype)
