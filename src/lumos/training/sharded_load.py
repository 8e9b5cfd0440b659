"""Weights for a model built on the ``meta`` device and sharded before it has any (docs/design.md,
"Loading order").

The training model is built on ``meta``, wrapped with FSDP2 (``fully_shard`` only records how
each parameter is split), given empty storage on its device (``to_empty``), and then every
process writes only the rows of each parameter that it holds:

* :func:`load_weights`: from a checkpoint directory (the official layout or ours, one
  ``model.safetensors`` or a sharded index). Each process reads its rows of each tensor with
  safetensors' lazy API (``safe_open``, ``get_slice(name)[a:b]``), :data:`CHUNK_BYTES` at a
  time, each chunk from a memory map opened for it alone, and copies them into the parameter's
  dtype on its device. No process reads, converts or holds anything else, so host memory is
  the process's own shards plus one chunk.
* :func:`init_weights`: fresh weights (normal with the model's ``initializer_range`` for
  embeddings and projections, ones and zeros for norms), drawn from generators seeded per
  ``(seed, parameter name, block of rows)``: the values do not depend on the number of
  processes or on the device, but they are not those of ``LumosModel(cfg)`` after
  ``torch.manual_seed(seed)`` (that draws one stream through the whole model).

A parameter is a plain tensor (one process, DDP: all rows) or a DTensor sharded on dim 0
(FSDP2's ``Shard(0)``, ``torch.chunk`` sizes, possibly replicated over a second mesh dimension
for HSDP); :func:`local_rows` says which rows this process holds.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lumos.model.checkpoint import TensorEntry, check_shapes, checkpoint_entries
from lumos.training.sources import sample_seed

CHUNK_BYTES = 64 * 2**20  # bytes read from a checkpoint file at a time
INIT_BLOCK = 2**20  # elements per independently seeded block of rows of a fresh tensor


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """This process's part of ``param``: the local tensor (written in place by the loaders) and
    the rows ``[start, stop)`` of the full tensor (dim 0) that it holds."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return param.detach(), 0, param.shape[0]
    local = param.to_local().detach()
    start, stop = 0, param.shape[0]
    for dim, placement in enumerate(param.placements):
        if isinstance(placement, Shard) and placement.dim == 0:
            size = math.ceil((stop - start) / param.device_mesh.size(dim))
            index = param.device_mesh.get_local_rank(dim)
            start, stop = min(start + index * size, stop), min(start + (index + 1) * size, stop)
        elif not isinstance(placement, Replicate):
            raise ValueError(f"cannot load parameters placed as {param.placements}")
    if local.shape[0] != stop - start:
        raise ValueError(f"local shard of {stop - start} rows expected, got {local.shape[0]}")
    return local, start, stop


def iter_rows(entry: TensorEntry, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Rows ``[start, stop)`` of a stored tensor as ``(first row, CPU tensor in the stored
    dtype)`` pieces of at most :data:`CHUNK_BYTES`, read with ``safetensors.safe_open`` and
    ``get_slice``.

    Each piece is a view into a memory map of the file opened for that piece alone: its
    pages count in this process's memory once touched and until the piece is dropped, so a loop
    over the pieces holds one piece of the file at a time, never the whole tensor or file."""
    row_bytes = math.prod(entry.shape[1:]) * entry.dtype.itemsize
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    if stop <= start or row_bytes == 0:
        return
    for a in range(start, stop, step):
        with safe_open(entry.file, framework="pt", device="cpu") as f:
            yield a, f.get_slice(entry.name)[a : min(a + step, stop)]


def read_rows(entry: TensorEntry, start: int, stop: int, out: torch.Tensor) -> None:
    """Copy rows ``[start, stop)`` of a stored tensor into ``out`` (``stop - start`` rows, any
    dtype and device)."""
    for a, rows in iter_rows(entry, start, stop):
        out[a - start : a - start + len(rows)].copy_(rows)


def normal_rows(
    seed: int, name: str, shape: tuple[int, ...], start: int, stop: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Rows ``[start, stop)`` of a standard-normal fp32 tensor of ``shape`` (on the CPU) as
    ``(first row, rows)`` pieces. Blocks of about :data:`INIT_BLOCK` elements each have their
    own generator, seeded by ``(seed, name, block)``, so any split of the rows between
    processes yields the same values."""
    row_numel = math.prod(shape[1:])
    per = max(1, INIT_BLOCK // max(row_numel, 1))
    key = zlib.crc32(name.encode())
    for block in range(start // per, math.ceil(stop / per)):
        a, b = block * per, min((block + 1) * per, shape[0])
        gen = torch.Generator().manual_seed(sample_seed(seed, key, block))
        values = torch.randn(b - a, *shape[1:], generator=gen)
        lo, hi = max(a, start), min(b, stop)
        yield lo, values[lo - a : hi - a]


# ``name -> (owning module, attribute)`` of a model's weights, named as in its checkpoints.
# The parameter is looked up when it is filled, so the slots of a model built on ``meta`` stay
# valid through ``fully_shard`` and ``to_empty`` (which replace the parameter objects) and
# through adapters wrapping a projection (which keep the original module).
WeightSlots = dict[str, tuple[nn.Module, str]]


def weight_slots(model: nn.Module) -> WeightSlots:
    """The slots of every parameter of ``model`` (see :data:`WeightSlots`)."""
    return {
        f"{prefix}.{attr}" if prefix else attr: (module, attr)
        for prefix, module in model.named_modules()
        for attr, _ in module.named_parameters(recurse=False)
    }


@torch.no_grad()
def load_weights(slots: WeightSlots, path: str | Path) -> None:
    """Write this process's rows of every weight in ``slots`` (materialised, possibly sharded)
    from the checkpoint directory ``path``; keys and shapes must match (one-line errors
    otherwise)."""
    path = Path(path)
    entries = checkpoint_entries(path)
    params = {name: getattr(module, attr) for name, (module, attr) in slots.items()}
    check_shapes(
        path, {k: e.shape for k, e in entries.items()}, {k: p.shape for k, p in params.items()}
    )
    for name, param in params.items():
        local, start, stop = local_rows(param)
        read_rows(entries[name], start, stop, local)


@torch.no_grad()
def init_weights(slots: WeightSlots, seed: int, std: float) -> None:
    """Fresh values for this process's rows of every weight in ``slots``: ``N(0, std^2)`` for
    the weights of ``nn.Linear`` and ``nn.Embedding``, 1 for other weights (norm scales), 0 for
    biases (see the module docstring for the draws)."""
    for name, (module, attr) in slots.items():
        param = getattr(module, attr)
        local, start, stop = local_rows(param)
        if isinstance(module, (nn.Linear, nn.Embedding)) and attr == "weight":
            for a, values in normal_rows(seed, name, tuple(param.shape), start, stop):
                local[a - start : a - start + len(values)].copy_(values.mul_(std))
        elif attr == "weight":
            local.fill_(1.0)
        elif attr == "bias":
            local.zero_()
        else:
            raise ValueError(f"no initialisation rule for parameter {name}")
