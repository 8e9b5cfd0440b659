"""Reading and writing model checkpoint files (Hugging Face directory layout).

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or a sharded
``model.safetensors.index.json``. Official Lumos-1 configs (Chameleon) and our own
(``"lumos_format": 1``) are both understood; keys under :data:`IGNORED_PREFIXES` (the official
checkpoints' bundled VQ tokenizer) are dropped on reading. This module only moves tensors and
JSON; building the model from them is ``LumosModel.from_pretrained`` / ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lumos import validate
from lumos.atomic import atomic_dir
from lumos.errors import LumosError
from lumos.model.config import LumosConfig

IGNORED_PREFIXES = ("model.vqmodel.",)  # checkpoint keys that are not part of the model


def read_config(path: str | os.PathLike) -> LumosConfig:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LumosError(f"{path} is a file; give a checkpoint directory (config.json + weights)")
    if not path.is_dir():
        raise LumosError(f"checkpoint directory {path} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LumosError(f"{path} has no config.json; is it a Lumos checkpoint directory?")
    data = validate.read_json_object(cfg_file, "model config")
    try:
        return LumosConfig.from_dict(data)
    except LumosError as err:
        raise LumosError(f"{cfg_file}: {err}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise LumosError(f"{cfg_file} has a value of the wrong type ({err})") from None


def weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError):
            raise LumosError(f"{index} is not a valid safetensors index") from None
        root = path.resolve()
        outside = [
            s for s in shards if not isinstance(s, str) or (root / s).resolve().parent != root
        ]
        if outside:
            raise LumosError(f"{index} names shards outside {path}: {outside[:3]}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise LumosError(f"{path} lacks weight shards {missing} listed in {index.name}")
        return [path / s for s in shards]
    raise LumosError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_entries(file: Path) -> dict[str, tuple[torch.dtype, list[int], int]]:
    """``name -> (dtype, shape, byte offset in the file)`` of a safetensors file, checked
    (every tensor inside the file, aligned, of the size its shape and dtype imply)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        if header_len > size - 8:
            raise ValueError("header length exceeds the file size")
        header = json.loads(f.read(header_len))
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) for k, v in header.items() if k != "__metadata__"
    ):
        raise ValueError("the header is not a JSON object of tensor entries")
    header.pop("__metadata__", None)
    entries = {}
    for name, info in header.items():
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        offset = 8 + header_len + begin
        numel = math.prod(info["shape"])
        if end - begin != numel * dtype.itemsize or 8 + header_len + end > size:
            raise ValueError(f"tensor {name} does not fit its data range")
        if offset % dtype.itemsize:
            raise ValueError("misaligned tensor data")
        entries[name] = (dtype, list(info["shape"]), offset)
    return entries


def map_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file backed by a private (copy-on-write) memory map.

    Pages are read only when touched, so weights a job never reads (the text rows of the
    head during generation, unused embedding rows) cost no memory.
    """
    entries = safetensors_entries(file)
    storage = torch.UntypedStorage.from_file(str(file), False, file.stat().st_size)
    tensors = {}
    for name, (dtype, shape, offset) in entries.items():
        t = torch.empty(0, dtype=dtype)
        tensors[name] = t.set_(storage, offset // dtype.itemsize, shape)
    return tensors


def stream_safetensors(
    file: Path, dtype: torch.dtype | None, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file read one at a time (plain reads, no memory map) and put
    on ``device`` in ``dtype`` (floating-point tensors only; None keeps the stored dtype) as
    they come: host memory holds the result plus one tensor as stored, never the whole file."""
    tensors = {}
    with open(file, "rb") as f:
        for name, (stored, shape, offset) in safetensors_entries(file).items():
            buf = bytearray(math.prod(shape) * stored.itemsize)
            f.seek(offset)
            if f.readinto(buf) != len(buf):
                raise ValueError(f"tensor {name} is truncated")
            t = (
                torch.frombuffer(buf, dtype=stored).view(shape)
                if buf
                else torch.empty(shape, dtype=stored)
            )
            target = dtype if dtype is not None and t.is_floating_point() else stored
            tensors[name] = t.to(device=device, dtype=target)
    return tensors


def read_state_dict(
    path: Path,
    mmap: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Every model tensor of the checkpoint at ``path`` (ignored prefixes dropped), unchecked.
    With ``mmap`` (CPU, stored dtype kept) nothing is read from disk until touched; otherwise
    tensors are read one by one straight into ``dtype`` on ``device``."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        try:
            tensors = map_safetensors(file) if mmap else stream_safetensors(file, dtype, device)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, struct.error) as err:
            raise LumosError(
                f"cannot read weights {file}: {err} (corrupt or truncated file?)"
            ) from None
        state.update({k: v for k, v in tensors.items() if not k.startswith(IGNORED_PREFIXES)})
    return state


def read_weights(
    path: Path,
    shapes: Mapping[str, torch.Size],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    mmap: bool = True,
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, checked against the ``shapes`` a model expects (one-line
    errors on missing, unexpected or mis-shaped keys), on ``device`` in ``dtype``. Without a
    ``dtype``, floating-point weights become float32 on CPU (no fast bf16/fp16 matmul there) and
    keep their stored dtype elsewhere. With ``mmap``, CPU weights stored in the target dtype stay
    memory-mapped (peak memory is what the job touches); others are read tensor by tensor into
    the target dtype on the target device (no full-size detour through the host)."""
    on_cpu = torch.device(device).type == "cpu"
    if dtype is None and on_cpu:
        dtype = torch.float32  # no fast bf16/fp16 matmul on the CPU
    stored = {t.dtype for t in read_state_dict(path, mmap=True).values() if t.is_floating_point()}
    keep = mmap and on_cpu and stored <= {dtype}  # mapped as stored: no conversion needed
    state = read_state_dict(path, mmap=keep, dtype=dtype, device=device)
    check_shapes(path, {k: v.shape for k, v in state.items()}, shapes)
    return state


def check_shapes(
    path: Path, found: Mapping[str, Sequence[int]], shapes: Mapping[str, Sequence[int]]
) -> None:
    """One-line errors when the checkpoint at ``path`` holds other keys (``found``) or other
    shapes than the model expects (``shapes``)."""
    missing = sorted(set(shapes) - set(found))
    unexpected = sorted(set(found) - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        raise LumosError(f"checkpoint {path} does not match its config: " + "; ".join(parts))
    for k, shape in shapes.items():
        if tuple(found[k]) != tuple(shape):
            raise LumosError(
                f"checkpoint {path}: {k} has shape {tuple(found[k])}, config implies {tuple(shape)}"
            )


@dataclass(frozen=True)
class TensorEntry:
    """A stored tensor, not read yet: the safetensors ``file`` holding it, its ``name`` there,
    its stored ``dtype`` and ``shape`` (read with ``safetensors.safe_open``)."""

    file: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


def checkpoint_entries(path: Path) -> dict[str, TensorEntry]:
    """Every model tensor of the checkpoint at ``path`` (ignored prefixes dropped) as a
    :class:`TensorEntry`, from the safetensors headers (``safe_open`` checks each file's header
    against its size; no tensor data is read), so a caller can read just the rows it needs
    (``lumos.training.sharded_load``)."""
    entries: dict[str, TensorEntry] = {}
    for file in weight_files(path):
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                found = {}
                for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    if not name.startswith(IGNORED_PREFIXES):
                        stored = f.get_slice(name)
                        found[name] = (stored.get_dtype(), tuple(stored.get_shape()))
        except (SafetensorError, OSError) as err:
            raise LumosError(
                f"cannot read weights {file}: {err} (corrupt or truncated file?)"
            ) from None
        for name, (dtype, shape) in found.items():
            if dtype not in SAFETENSORS_DTYPES:
                raise LumosError(
                    f"cannot read weights {file}: {name} is stored as {dtype}; "
                    f"readable dtypes: {', '.join(SAFETENSORS_DTYPES)}"
                )
            entries[name] = TensorEntry(file, name, SAFETENSORS_DTYPES[dtype], shape)
    return entries


def save_checkpoint(
    path: str | os.PathLike,
    config: dict,
    state: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``config.json`` + ``model.safetensors`` atomically (temp dir, then rename).

    ``dtype`` stores the floating-point weights in another precision (e.g. float16 to halve a
    shipped model; loading on CPU converts back to float32)."""
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
