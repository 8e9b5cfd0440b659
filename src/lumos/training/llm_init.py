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
  of dominating or vanishing. The draws come from generators seeded per ``(seed, weight name,
  block of rows)`` (``lumos.training.sharded_load.normal_rows``), so every process of a
  sharded model draws just its own rows and the values do not depend on the number of
  processes.
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
from lumos.model.checkpoint import TensorEntry, checkpoint_entries
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.vocab import Vocabulary
from lumos.training.sharded_load import (
    WeightSlots,
    iter_rows,
    local_rows,
    normal_rows,
    read_rows,
    weight_slots,
)

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
EXTENDED = ("model.embed_tokens.weight", "lm_head.weight")  # rows beyond the LLM's are new


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


def llm_config(
    path: str | Path, vocabulary: Vocabulary, overrides: dict | None = None
) -> LumosConfig:
    """The Lumos geometry of the LLM in ``path`` with ``vocabulary`` (checked: its text ids
    must fit before the vocabulary's visual ids)."""
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
    return cfg


def _row_stats(entry: TensorEntry) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) standard deviation per dimension of a stored [n, d] tensor's rows,
    read chunk by chunk (float64 sums)."""
    n = entry.shape[0]
    total = torch.zeros(entry.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for _, rows in iter_rows(entry, 0, n):
        total += rows.double().sum(0)
        squares += rows.double().square().sum(0)
    mean = total / n
    var = (squares - n * mean.square()) / max(n - 1, 1)
    return mean.float(), var.clamp(min=0).sqrt().float()


@torch.no_grad()
def load_llm_weights(slots: WeightSlots, cfg: LumosConfig, path: str | Path, seed: int) -> None:
    """Write this process's rows of every weight in ``slots`` (a materialised, possibly
    sharded model of :func:`llm_config` geometry; see ``lumos.training.sharded_load``): the
    LLM's tensors, the new vocabulary rows drawn as the module docstring says (from generators
    seeded per ``(seed, name, block of rows)``), identity QK-norms."""
    path = Path(path)
    entries = checkpoint_entries(path)
    wanted = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{k}" for i in range(cfg.num_hidden_layers) for k in LAYER_KEYS
    ]
    missing = [k for k in wanted if k not in entries]
    if missing:
        raise LumosError(f"{path} lacks {len(missing)} Llama weights (e.g. {missing[:3]})")
    n_text = int(read_llm_config(path)["vocab_size"])
    embed = entries["model.embed_tokens.weight"]
    sources = {k: entries[k] for k in wanted}
    sources["lm_head.weight"] = entries.get("lm_head.weight", embed)  # absent: tied
    if embed.shape[0] != n_text or sources["lm_head.weight"].shape[0] != n_text:
        raise LumosError(f"{path}: embedding rows differ from config vocab_size {n_text}")
    for k, entry in sources.items():
        shape = getattr(*slots[k]).shape
        expected = (n_text, *shape[1:]) if k in EXTENDED else tuple(shape)
        if entry.shape != expected:
            raise LumosError(f"{path}: {k} has shape {entry.shape}, expected {expected}")
    for name, (module, attr) in slots.items():
        param = getattr(module, attr)
        local, start, stop = local_rows(param)
        if name not in sources:  # QK-norm: identity (weight 1, bias 0)
            local.fill_(1.0 if attr == "weight" else 0.0)
            continue
        read_rows(sources[name], start, min(stop, n_text), local)
        if name in EXTENDED and stop > n_text:
            mean, std = _row_stats(sources[name])
            new_shape = (param.shape[0] - n_text, *param.shape[1:])
            first = max(start, n_text)
            for a, z in normal_rows(seed, name, new_shape, first - n_text, stop - n_text):
                row = a + n_text - start
                local[row : row + len(z)].copy_(mean + std * z)


def init_from_llm(
    path: str | Path,
    vocabulary: Vocabulary,
    overrides: dict | None = None,
    seed: int = 0,
) -> LumosModel:
    """A LumosModel on the CPU with the LLM's transformer weights and an extended vocabulary
    (one process; the trainer fills its sharded model with :func:`load_llm_weights`)."""
    cfg = llm_config(path, vocabulary, overrides)
    with torch.device("meta"):
        model = LumosModel(cfg)
    model.to_empty(device="cpu")
    load_llm_weights(weight_slots(model), cfg, path, seed)
    model.init_buffers()
    return model
