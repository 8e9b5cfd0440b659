"""Process groups, DDP / FSDP2 wrapping, mixed precision and gradient-sync control.

Launch data parallel training with ``torchrun --nproc-per-node N``; the environment variables it
sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) select the process group (NCCL on GPUs, gloo on
CPUs). FSDP2 shards every decoder block and then the root (embeddings, final norm, head) with
``fully_shard``, on the model as built on the ``meta`` device, before it has weights (the
trainer then loads or initialises each process's shards: ``training/sharded_load.py``); DDP
wraps the model once it has them. Activation checkpointing is the model's per-block
``gradient_checkpointing``.

Gradient reduction: the loop scales each process's summed loss by ``world_size / global
count`` and both wrappers average gradients over processes, which yields the gradient of the
global mean. gloo has no ``AVG``/``PREMUL_SUM`` reductions for FSDP's reduce-scatter, so on gloo
FSDP is told to reduce with plain sums and divide afterwards (``set_force_sum_reduction_for_comms``).
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lumos.errors import LumosError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place (no-op for one process); returns it."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor


def init_distributed() -> DistContext:
    """Join the process group described by torchrun's environment (one process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local, device)


def shutdown_distributed() -> None:
    """Destroy the process group while the interpreter is fully alive.

    Drop every reference to the objects that use the group (trainer, DDP/FSDP-wrapped model)
    before calling this: wrapped models hold reference cycles, which the collection here frees, so
    the group and its gloo threads go now and not during interpreter shutdown (where tearing them
    down can abort the process after a successful run).
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype: bf16 where the device supports it (``auto``), fp32 on CPUs."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise LumosError(
            "precision bf16 needs a CUDA GPU with bf16 support; use precision fp32 or auto"
        )
    if precision == "auto":
        return torch.bfloat16 if bf16_ok else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_parallel(parallel: str, ctx: DistContext) -> str:
    """``auto``: FSDP when there are several processes, else none."""
    if parallel == "auto":
        return "fsdp" if ctx.distributed else "none"
    if parallel in ("ddp", "fsdp") and not ctx.distributed:
        return "none"
    if parallel == "none" and ctx.distributed:
        raise LumosError(
            "parallel none cannot run under torchrun with several processes; use ddp or fsdp"
        )
    return parallel


def shard(module: nn.Module, blocks: list[nn.Module], dtype: torch.dtype) -> None:
    """Apply FSDP2 to ``module`` in place: each of ``blocks`` (the decoder layers) is sharded on
    its own, then the root (the rest). Works on a model built on the ``meta`` device (only the
    split is recorded; ``to_empty`` then allocates each process's shards), as the trainer uses it
    (docs/design.md, "Loading order"). Parameters stay fp32; ``dtype`` is the compute dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=dtype if dtype != torch.float32 else None, reduce_dtype=torch.float32
    )
    sharded = [fully_shard(block, mp_policy=policy) for block in blocks]
    sharded.append(fully_shard(module, mp_policy=policy))
    if dist.get_backend() == "gloo":
        for m in sharded:
            m.set_force_sum_reduction_for_comms(True)


def replicate(module: nn.Module, parallel: str, ctx: DistContext) -> nn.Module:
    """``module`` (with its weights, on ``ctx.device``) wrapped for ``parallel``: DDP for
    ``ddp``; unchanged for ``none`` and for ``fsdp`` (already sharded by :func:`shard`)."""
    if parallel != "ddp":
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
    )


def autocast(parallel: str, ctx: DistContext, dtype: torch.dtype):
    """bf16 autocast for unsharded models on GPUs (FSDP casts parameters itself); fp32 otherwise."""
    if dtype == torch.float32 or parallel == "fsdp":
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=dtype)


def gradient_sync(module: nn.Module, parallel: str, enabled: bool):
    """Context in which backward passes (do not) reduce gradients across processes; used to
    accumulate micro-batches locally and reduce once on the last."""
    if parallel == "ddp" and not enabled:
        return module.no_sync()
    if parallel == "fsdp":
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()
