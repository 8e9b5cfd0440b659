"""Training batches from token shards: streamed, length-grouped, image/video mixed, resumable.

:class:`TokenLoader` is an endless iterator of batches; each batch is a list of 1-D
LongTensor token sequences (:func:`lumos.sequence.layout.build_sequence`, vocabulary from the
shards' index) of one kind, images or videos (docs/design.md, "Training": joint training alternates image and
video batches). The training loop pads them and applies the objective.

How batches are made, deterministically from ``seed`` and the index (no data is read to plan):

* Images and videos are two independent streams, each cycling over epochs. Optimiser step
  ``k`` takes its batches from the stream :func:`lumos.data.kinds.step_kind` names for the
  image ratio ``r``. Each stream only advances when it is used.
* Epoch ``e`` of a stream shuffles the shards holding that kind and cuts them, in that order,
  into windows of whole shards with at least ``window_samples`` samples of the kind (the last
  may be smaller). Only the current window of each stream is in memory.
* Inside a window the samples are shuffled, cycled to a multiple of the global batch
  ``G = batch_size * world_size`` (so no sample is dropped; a few repeat, and a window smaller
  than ``G`` is repeated to fill a batch), sorted by sequence
  length within chunks of ``group_batches`` global batches (length grouping: little padding),
  cut into global batches, and the batches are shuffled.
* Distributed: every rank plans the same global batches; rank ``r`` of ``world_size`` takes
  positions ``r, r + world_size, ...`` of each global batch (disjoint, together the whole
  global batch, similar lengths on every rank). All ranks read the same windows.
* Several datasets (e.g. separate image and video shards) can be read as one: their shards
  are pooled; their vocabularies must agree.
* Gradient accumulation: ``grad_accumulation = n`` gives ``n`` consecutive batches of one kind
  per optimiser step (the image/video choice above is then made per group of ``n``).

Text is never dropped here: classifier-free guidance text drop belongs to the training
collate (:func:`lumos.training.objective.collate`).

The position is the number of batches yielded, so :meth:`TokenLoader.state_dict` is tiny
and the same on every rank, and :meth:`TokenLoader.load_state_dict` resumes exactly: the
following batches are those an uninterrupted run would have produced. Use the loader
directly (or in a single background thread), not inside a multi-worker ``DataLoader``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lumos.data import shards as fmt
from lumos.data.kinds import KINDS, images_before, kinds_used, step_kind
from lumos.errors import LumosError

KIND_IDS = {kind: i for i, kind in enumerate(KINDS)}


@dataclass
class _Window:
    """One planned window: decoded samples and global batches (indices into ``samples``)."""

    samples: list[fmt.TokenizedSample]
    batches: np.ndarray  # [num_batches, G] int


class _Stream:
    """The endless, deterministic sequence of global batches of one kind."""

    def __init__(
        self,
        shards: list[tuple[Path, dict]],
        kind: str,
        global_batch: int,
        seed: int,
        window_samples: int,
        group_batches: int,
    ):
        self.files = [file for file, _ in shards]
        self.kind, self.global_batch, self.seed = kind, global_batch, seed
        self.window_samples, self.group_batches = window_samples, group_batches
        key = "images" if kind == "image" else "videos"
        self.counts = {j: info[key] for j, (_, info) in enumerate(shards) if info[key] > 0}
        self.num_samples = sum(self.counts.values())
        self._cached: tuple[tuple[int, int], _Window] | None = None
        self._epoch: tuple[int, list[list[int]]] = (-1, [])
        self._cursor = (0, 0, 0)  # (stream batches before window, epoch, window)

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, KIND_IDS[self.kind], *keys])

    def windows(self, epoch: int) -> list[list[int]]:
        """Shard numbers of each window of ``epoch``."""
        if self._epoch[0] != epoch:
            self._epoch = (epoch, self._windows(epoch))
        return self._epoch[1]

    def _windows(self, epoch: int) -> list[list[int]]:
        shards = list(self.counts)
        order = self._rng(epoch).permutation(len(shards))
        windows, current, size = [], [], 0
        for i in order:
            current.append(shards[i])
            size += self.counts[shards[i]]
            if size >= self.window_samples:
                windows.append(current)
                current, size = [], 0
        return windows + ([current] if current else [])

    def num_batches(self, shards: list[int]) -> int:
        return math.ceil(sum(self.counts[j] for j in shards) / self.global_batch)

    def locate(self, count: int) -> tuple[int, int, int]:
        """(epoch, window, batch in window) of the stream's global batch number ``count``."""
        start, epoch, w = self._cursor if self._cursor[0] <= count else (0, 0, 0)
        while True:
            windows = self.windows(epoch)
            while w < len(windows):
                n = self.num_batches(windows[w])
                if count < start + n:
                    self._cursor = (start, epoch, w)
                    return epoch, w, count - start
                start, w = start + n, w + 1
            epoch, w = epoch + 1, 0

    def batch(self, count: int) -> list[fmt.TokenizedSample]:
        """The ``G`` samples of the stream's global batch number ``count``."""
        epoch, w, b = self.locate(count)
        if self._cached is None or self._cached[0] != (epoch, w):
            self._cached = ((epoch, w), self._plan(epoch, w))
        window = self._cached[1]
        return [window.samples[i] for i in window.batches[b]]

    def _plan(self, epoch: int, w: int) -> _Window:
        shards = self.windows(epoch)[w]
        tables = [fmt.read_shard(self.files[j]) for j in shards]
        table = pa.concat_tables(tables)
        table = table.filter(pc.equal(table.column("kind"), self.kind))
        samples = fmt.table_samples(table)
        if len(samples) != sum(self.counts[j] for j in shards):
            names = ", ".join(self.files[j].name for j in shards)
            raise LumosError(
                f"the {self.kind} count of {names} differs from the index; the shards were "
                "changed after lumos tokenize wrote the index: tokenise again"
            )
        lengths = np.array(
            [fmt.sequence_length(len(s.text_ids), *s.codes.shape) for s in samples], np.int64
        )
        g = self.global_batch
        num_batches = math.ceil(len(samples) / g)
        rng = self._rng(epoch, w)
        order = np.resize(rng.permutation(len(samples)), num_batches * g)
        chunk = g * self.group_batches
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            order[start : start + chunk] = part[np.argsort(lengths[part], kind="stable")]
        batches = order.reshape(num_batches, g)[rng.permutation(num_batches)]
        return _Window(samples, batches)


class TokenLoader:
    """Endless iterator of batches (lists of 1-D LongTensor sequences) from token datasets.

    ``paths``: one directory written by ``lumos tokenize`` (or its ``index.json``) or several,
    pooled. ``batch_size``: video sequences per batch and rank; ``image_batch_size``: image
    sequences per batch and rank (default ``batch_size``). ``image_ratio``: fraction of
    optimiser steps that are image steps (default: the data's share of images).
    ``rank``/``world_size``: this process's part of each global batch (module docstring).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        batch_size: int,
        *,
        image_batch_size: int | None = None,
        image_ratio: float | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        grad_accumulation: int = 1,
        window_samples: int = 2048,
        group_batches: int = 16,
    ):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        indexes = [fmt.read_index(p) for p in paths]
        if not indexes:
            raise LumosError("no token dataset given")
        self.vocab, self.spatial = indexes[0].vocab, indexes[0].spatial_compression
        for ix in indexes[1:]:
            if ix.vocab != self.vocab or ix.spatial_compression != self.spatial:
                raise LumosError(
                    f"{ix.root} and {indexes[0].root} were tokenised with different tokenizers "
                    "(vocabularies differ); tokenise both with the same ones"
                )
        image_batch_size = batch_size if image_batch_size is None else image_batch_size
        if batch_size < 1 or image_batch_size < 1:
            raise LumosError(f"batch sizes must be >= 1, got {batch_size} and {image_batch_size}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise LumosError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
        if window_samples < 1 or group_batches < 1 or grad_accumulation < 1:
            raise LumosError("window_samples, group_batches and grad_accumulation must be >= 1")
        self.rank, self.world_size, self.grad_accumulation = rank, world_size, grad_accumulation
        self.batch_sizes = {"image": image_batch_size, "video": batch_size}
        shards = [(f, info) for ix in indexes for f, info in zip(ix.files, ix.shards, strict=True)]
        self.streams = {
            kind: _Stream(
                shards,
                kind,
                self.batch_sizes[kind] * world_size,
                seed,
                window_samples,
                group_batches,
            )
            for kind in KINDS
        }
        images, videos = (self.streams[k].num_samples for k in KINDS)
        if image_ratio is None:
            image_ratio = images / (images + videos) if images + videos else 0.0
        if not 0.0 <= image_ratio <= 1.0:
            raise LumosError(f"image_ratio must be in [0, 1], got {image_ratio}")
        for kind in kinds_used(image_ratio):
            if self.streams[kind].num_samples == 0:
                raise LumosError(
                    f"the token data has no {kind}s but image_ratio {image_ratio} asks for "
                    f"{kind} batches; set image_ratio to {int(kind == 'video')}"
                )
        self.image_ratio = image_ratio
        self._config = {
            "fingerprints": [ix.data["fingerprint"] for ix in indexes],
            "batch_sizes": self.batch_sizes,
            "image_ratio": image_ratio,
            "seed": seed,
            "world_size": world_size,
            "grad_accumulation": grad_accumulation,
            "window_samples": window_samples,
            "group_batches": group_batches,
        }
        self.step = 0  # batches yielded (micro-batches when grad_accumulation > 1)

    def kind_at(self, step: int) -> str:
        """``image`` or ``video``: the kind of batch number ``step``."""
        return step_kind(step // self.grad_accumulation, self.image_ratio)

    def _stream_count(self, kind: str, step: int) -> int:
        """How many batches of ``kind`` come before batch number ``step``."""
        n = self.grad_accumulation
        opt_step, micro = divmod(step, n)
        images = n * images_before(opt_step, self.image_ratio)
        if step_kind(opt_step, self.image_ratio) == "image":
            images += micro
        return images if kind == "image" else step - images

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        return self

    def __next__(self) -> list[torch.Tensor]:
        kind = self.kind_at(self.step)
        samples = self.streams[kind].batch(self._stream_count(kind, self.step))
        mine = samples[self.rank :: self.world_size]
        self.step += 1
        return [s.sequence(self.vocab, self.spatial) for s in mine]

    def state_dict(self) -> dict:
        """The position (batches yielded) and the settings it is valid for (same on all ranks)."""
        return {"step": self.step, **self._config}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the datasets and settings must be those it was saved with."""
        diff = sorted(k for k, v in self._config.items() if state.get(k) != v)
        if diff:
            raise LumosError(
                f"cannot resume the data loader: {', '.join(diff)} differ from the saved state "
                "(resume with the same token data and loader settings)"
            )
        self.step = int(state["step"])
