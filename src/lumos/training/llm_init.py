"""Initialising a Lumos model from a text-only Llama-style LLM checkpoint.

The LLM directory is Hugging Face style (``config.json`` with ``model_type`` llama/mistral and
safetensors weights named ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``, ``model.norm``,
``lm_head``; a missing ``lm_head`` means tied embeddings). Its text ids must be the first ids
of the Lumos vocabulary (``vocab_size <= vocabulary.visual_offset``).

What is new and how it starts:

* Vocabulary rows beyond the LLM's (special tokens it lacks and the whole visual codebook), in
  both the embedding and the head, are drawn from a normal distribution with the mean and
  per-dimension standard deviation of the LLM's own rows, so new tokens start "average": their
  embeddings have the usual scale and their initial logits sit among the text logits instead
  of dominating or vanishing.
* QK-norm (absent from Llama) starts as plain per-head LayerNorm (weight 1, bias 0). This
  rescales queries and keys, so the attention pattern of the LLM is not preserved exactly;
  training adapts it.
* RoPE: the LLM's ``rope_theta`` is kept (override with ``model.overrides.rope_theta``);
  frequency rescaling (``rope_scaling``, e.g. Llama 3's) is dropped with a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from lumos.errors import LumosError
from lumos.model.checkpoint import read_state_dict
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.vocab import Vocabulary

SUPPORTED_TYPES = ("llama", "mistral")
LAYER_KEYS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


def read_llm_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise LumosError(f"{path} has no config.json; is it a Hugging Face LLM directory?")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise LumosError(f"{file} is not valid JSON ({err})") from None
    if data.get("model_type") not in SUPPORTED_TYPES:
        raise LumosError(
            f"{path}: model_type {data.get('model_type')!r} is not a Llama-style LLM "
            f"({', '.join(SUPPORTED_TYPES)})"
        )
    if data.get("attention_bias") or data.get("mlp_bias"):
        raise LumosError(f"{path}: the LLM uses biases, which Lumos layers do not have")
    return data


def _extend(rows: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """``rows`` [n, d] followed by ``total - n`` rows ~ N(mean, std) of ``rows`` per dimension."""
    n, d = rows.shape
    mean, std = rows.float().mean(0), rows.float().std(0)
    new = mean + std * torch.randn(total - n, d, generator=generator)
    return torch.cat([rows.float(), new]).to(rows.dtype)


def init_from_llm(
    path: str | Path,
    vocabulary: Vocabulary,
    overrides: dict | None = None,
    seed: int = 0,
) -> LumosModel:
    """A LumosModel with the LLM's transformer weights and an extended vocabulary."""
    path = Path(path)
    if not path.is_dir():
        raise LumosError(f"LLM directory {path} does not exist")
    llm = read_llm_config(path)
    n_text = int(llm["vocab_size"])
    if n_text > vocabulary.visual_offset:
        raise LumosError(
            f"the LLM has {n_text} token ids but the vocabulary's visual ids start at "
            f"{vocabulary.visual_offset}; use a vocabulary whose text part covers the LLM's"
        )
    if llm.get("rope_scaling"):
        warnings.warn("the LLM's rope_scaling is not supported and is dropped", stacklevel=2)
    cfg = LumosConfig(
        vocab_size=vocabulary.size,
        hidden_size=int(llm["hidden_size"]),
        intermediate_size=int(llm["intermediate_size"]),
        num_hidden_layers=int(llm["num_hidden_layers"]),
        num_attention_heads=int(llm["num_attention_heads"]),
        num_key_value_heads=int(llm.get("num_key_value_heads", llm["num_attention_heads"])),
        rope_theta=float(llm.get("rope_theta", 10000.0)),
        rms_norm_eps=float(llm.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=int(llm.get("max_position_embeddings", 4096)),
        vocabulary=vocabulary.to_dict(),
        **(overrides or {}),
    )
    if cfg.head_dim != int(llm.get("head_dim", cfg.head_dim)):
        raise LumosError(f"{path}: head_dim differs from hidden_size / num_attention_heads")
    state = read_state_dict(path)
    wanted = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{k}" for i in range(cfg.num_hidden_layers) for k in LAYER_KEYS
    ]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise LumosError(f"{path} lacks {len(missing)} Llama weights (e.g. {missing[:3]})")
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    if state["model.embed_tokens.weight"].shape[0] != n_text or head.shape[0] != n_text:
        raise LumosError(f"{path}: embedding rows differ from config vocab_size {n_text}")

    model = LumosModel(cfg)
    generator = torch.Generator().manual_seed(seed)
    new = {k: state[k] for k in wanted}
    new["model.embed_tokens.weight"] = _extend(
        state["model.embed_tokens.weight"], cfg.vocab_size, generator
    )
    new["lm_head.weight"] = _extend(head, cfg.vocab_size, generator)
    current = model.state_dict()
    for k, v in new.items():
        if v.shape != current[k].shape:
            raise LumosError(
                f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(current[k].shape)}"
            )
    model.load_state_dict(new, strict=False)  # QK-norm keeps its identity initialisation
    return model
