"""LoRA adapters for the Lumos decoder, with PEFT (``pip install lumos[lora]``).

An adapter directory is PEFT's own layout (``peft.PeftModel.from_pretrained`` loads it onto a
:class:`LumosModel` too)::

    adapter_config.json         PEFT LoraConfig: r, lora_alpha, lora_dropout, target_modules,
                                base_model_name_or_path (the model trained from, if any)
    adapter_model.safetensors   per adapted projection of every block, e.g.
                                base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
                                [rank, in] and ...lora_B.weight [out, rank]

An adapted projection computes ``W x + (alpha / rank) * B A x``. :func:`apply_lora` injects
fresh adapters in place (``A`` random, ``B`` zero, so the model's function is unchanged) and
freezes every other weight: the :class:`LumosModel` object stays the module that is trained,
wrapped by DDP/FSDP and checkpointed, its projections now PEFT LoRA layers that keep the
original ``nn.Linear`` as ``base_layer``. :func:`load_adapter` injects a saved adapter for
inference (unmerged); :func:`merge` folds it into the weights and gives back a plain model.

PEFT is imported only when a function here runs, so lumos works without it.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lumos.atomic import atomic_dir
from lumos.errors import LumosError
from lumos.model.transformer import LumosModel
from lumos.training.config import LORA_TARGETS, LoraConfig
from lumos.training.sources import sample_seed

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file names
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError as err:  # absent, or installed but broken (e.g. a transformers mismatch)
        raise LumosError(
            f"LoRA needs PEFT, which did not import ({err}); pip install 'lumos[lora]'"
        ) from None
    return peft


def peft_config(cfg: LoraConfig):
    """PEFT's ``LoraConfig`` for ``cfg``."""
    return _peft().LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
    )


def apply_lora(model: LumosModel, cfg: LoraConfig, base: str | None = None) -> PeftModel:
    """Inject fresh adapters (rank ``cfg.rank`` > 0) into ``model`` in place and freeze every
    other weight. ``A`` is drawn from torch's global generator, ``B`` is zero (on a ``meta``
    model: nothing is drawn; :func:`init_adapters` gives the values once it has storage).
    Returns PEFT's wrapper, needed to save the adapter; keep training ``model`` itself."""
    if cfg.rank <= 0:
        raise LumosError(f"lora.rank must be positive to add adapters, got {cfg.rank}")
    adapted = _peft().get_peft_model(model, peft_config(cfg))
    # Set afterwards: get_peft_model overwrites it with the (absent) model.name_or_path.
    adapted.peft_config["default"].base_model_name_or_path = base
    return adapted


@torch.no_grad()
def init_adapters(model: nn.Module, seed: int) -> None:
    """Values for adapters injected on the ``meta`` device, once the model has storage (after
    ``to_empty``, possibly sharded): ``A`` as PEFT draws it (Kaiming-uniform with
    ``a = sqrt(5)``, i.e. uniform in +-1/sqrt(in)) from a generator of its own seeded by
    ``(seed, parameter name)``, ``B`` zero. Each process writes only the rows it holds, so the
    values do not depend on the number of processes."""
    from lumos.training.sharded_load import local_rows

    for name, param in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            local, start, stop = local_rows(param)
            if ".lora_B." in name:
                local.zero_()
                continue
            gen = torch.Generator().manual_seed(sample_seed(seed, zlib.crc32(name.encode()), 0))
            full = nn.init.kaiming_uniform_(torch.empty(param.shape), a=math.sqrt(5), generator=gen)
            local.copy_(full[start:stop])


def _base_prefix(adapted: PeftModel) -> str:
    """The key prefix of the Lumos model inside PEFT's wrapper (``base_model.model.``)."""
    base = adapted.get_base_model()
    return next(name for name, m in adapted.named_modules() if m is base) + "."


def adapter_state(
    adapted: PeftModel, model_state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter tensors in PEFT's key names, from ``model_state`` (keys of the Lumos model,
    e.g. gathered from FSDP shards; may hold only the trainable tensors) or from the model."""
    peft = _peft()
    if model_state is not None:
        prefix = _base_prefix(adapted)
        model_state = {prefix + k: v for k, v in model_state.items()}
    # No embedding layers are adapted (saying so skips PEFT's check of a transformers config).
    return peft.get_peft_model_state_dict(
        adapted, state_dict=model_state, save_embedding_layers=False
    )


def save_adapter(
    adapted: PeftModel, path: str | os.PathLike, model_state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the adapter directory ``path`` (replaced whole, atomically): config and
    safetensors weights (from ``model_state`` if given, see :func:`adapter_state`)."""
    state = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in adapter_state(adapted, model_state).items()
    }
    with atomic_dir(path) as tmp:
        adapted.peft_config["default"].save_pretrained(tmp)
        save_file(state, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return Path(path)


def read_adapter_config(path: str | os.PathLike):
    """PEFT's ``LoraConfig`` of an adapter directory, checked: a LoRA adapter of the decoder
    projections that :func:`load_adapter` can apply."""
    path = Path(path)
    if not path.is_dir():
        raise LumosError(f"adapter {path} is not a directory (give the adapter directory)")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            raise LumosError(f"adapter {path} has no {name}; is it a LoRA adapter directory?")
    peft = _peft()
    try:
        config = peft.PeftConfig.from_pretrained(str(path))
    except Exception as err:  # malformed JSON, unknown fields, wrong types
        raise LumosError(f"{path / ADAPTER_CONFIG} is not a valid PEFT config ({err})") from None
    if not isinstance(config, peft.LoraConfig):
        raise LumosError(f"adapter {path} is a {config.peft_type} adapter; lumos applies LoRA only")
    targets = config.target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    if not targets or not set(targets) <= set(LORA_TARGETS):
        raise LumosError(
            f"adapter {path} adapts {targets}; lumos applies adapters to {list(LORA_TARGETS)}"
        )
    return config


def load_adapter(model: LumosModel, path: str | os.PathLike) -> PeftModel:
    """Inject the adapter saved in ``path`` into ``model`` in place (unmerged, frozen, on the
    model's device; PEFT keeps the adapter in float32 under a bfloat16/float16 model). An
    adapter trained for another geometry is a one-line error. Returns PEFT's wrapper."""
    path = Path(path)
    config = read_adapter_config(path)
    config.inference_mode = True
    try:
        weights = load_file(path / ADAPTER_WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise LumosError(
            f"{path / ADAPTER_WEIGHTS} is not a readable safetensors file ({err})"
        ) from None
    peft = _peft()
    base, config.base_model_name_or_path = config.base_model_name_or_path, None
    adapted = peft.get_peft_model(model, config)  # (it would replace a recorded base by None)
    config.base_model_name_or_path = base
    expected = adapter_state(adapted)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        found = [
            (n, keys) for n, keys in (("missing", missing), ("unexpected", unexpected)) if keys
        ]
        detail = "; ".join(f"{len(keys)} tensor(s) {n}, e.g. {keys[0]}" for n, keys in found)
        raise LumosError(f"adapter {path} was trained for another model ({detail})")
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise LumosError(
                f"adapter {path} was trained for another model: {k} is {list(v.shape)}, "
                f"this model needs {list(expected[k].shape)}"
            )
    peft.set_peft_model_state_dict(adapted, weights)
    return adapted


def merge(adapted: PeftModel) -> LumosModel:
    """Fold the adapter into the weights (``W + (alpha / rank) B A``, in the weights' dtype):
    the plain :class:`LumosModel` (the same object, its LoRA layers replaced)."""
    return adapted.merge_and_unload()


def trained_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a (DDP/FSDP-wrapped) module, whole and on the CPU, frozen ones
    left out (collective under FSDP: every process calls it; complete on every process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(module, options=options)


def trainable_count(module: nn.Module) -> int:
    """Parameters that are trained (all of them without adapters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
