"""Training data sources: iterators of micro-batches (lists of 1-D token sequences).

The training loop takes ``grad_accumulation`` micro-batches per optimiser step from one source
and checkpoints its position through ``state_dict()`` / ``load_state_dict()``. Which optimiser
steps are image steps is :func:`lumos.data.kinds.step_kind`; all the micro-batches of a step are
of its kind. Sources are per process and decide
which samples the process sees. Two implement this: :class:`lumos.data.loader.TokenLoader`
(token shards) and :class:`MixedSource` over in-memory :class:`SyntheticSource` streams.

Data-parallel contract of :class:`SyntheticSource`: micro-batch ``c`` (0-based, counted per
process) of process ``rank`` holds global micro-batch ``m = (c // A) * (W * A) + rank * A + c % A``
of the kind's sample stream (``W`` processes, ``A`` accumulation steps), so one process with
accumulation ``W * A`` sees the same micro-batches in the same order as ``W`` processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from lumos.data.kinds import KINDS, kinds_used, step_kind
from lumos.errors import LumosError
from lumos.sequence.layout import build_sequence, header_timing
from lumos.sequence.vocab import Vocabulary


class BatchSource(Protocol):
    """An endless iterator of micro-batches with a checkpointable position."""

    def __iter__(self) -> Iterator[list[torch.Tensor]]: ...

    def __next__(self) -> list[torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def global_micro_batch(count: int, rank: int, world_size: int, accumulation: int) -> int:
    """Index in the kind's global micro-batch stream of this process's micro-batch ``count``."""
    step, micro = divmod(count, accumulation)
    return step * world_size * accumulation + rank * accumulation + micro


def sample_seed(*keys: int) -> int:
    """A 63-bit seed mixing integer keys (numpy SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> 1)


class SyntheticSource:
    """Learnable random samples built in memory, deterministic in (seed, split, kind, index).

    Each sample draws 4 colours out of 16 visual codes, a stripe pattern and a horizontal motion
    (-1, 0, +1 latent columns per frame); its text names them in its first 6 tokens (then random
    filler), so text-to-image conditioning, in-frame structure and motion are all learnable.
    ``size`` is pixels (height, width); ``frames`` latent frames (1 for images), which stand
    for ``1 + temporal * (frames - 1)`` RGB frames at ``fps`` in the header.
    """

    COLOURS = 16

    def __init__(
        self,
        vocab: Vocabulary,
        kind: str,
        size: tuple[int, int],
        frames: int,
        fps: int,
        text_tokens: tuple[int, int],
        micro_batch_size: int,
        seed: int = 0,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        accumulation: int = 1,
        spatial: int = 8,
        temporal: int = 4,
    ) -> None:
        if kind not in KINDS:
            raise LumosError(f"unknown sample kind {kind!r}; use one of {KINDS}")
        if vocab.codebook_size < self.COLOURS:
            raise LumosError(f"synthetic data needs a codebook of >= {self.COLOURS} codes")
        self.vocab, self.kind, self.spatial = vocab, kind, spatial
        self.h, self.w = size[0] // spatial, size[1] // spatial
        self.frames = 1 if kind == "image" else frames
        self.fps, self.duration = header_timing(1 + temporal * (self.frames - 1), fps)
        self.text_tokens, self.micro_batch_size = text_tokens, micro_batch_size
        self.keys = (seed, ("train", "val").index(split), KINDS.index(kind))
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        roles = ("bos", "pad", "eos", "sep", "video_start", "video_end", "frame_start")
        roles += ("frame_end", "newline", "mask")
        specials = [getattr(vocab, r) for r in roles] + [vocab.int_base + vocab.num_ints - 1]
        self.text_low = max(specials) + 1  # plain text ids above every special and integer id
        if vocab.text_size - self.text_low < 80:
            raise LumosError(
                "the vocabulary leaves fewer than 80 plain text ids for synthetic prompts"
            )
        self.count = 0

    def sample(self, index: int) -> torch.Tensor:
        """Sample ``index`` of this kind's stream as a 1-D token sequence."""
        g = torch.Generator().manual_seed(sample_seed(*self.keys, index))
        colours = torch.randperm(self.COLOURS, generator=g)[:4]
        pattern = int(torch.randint(0, 3, (), generator=g))
        motion = int(torch.randint(-1, 2, (), generator=g)) if self.frames > 1 else 0
        r = torch.arange(self.h)[:, None]
        c = torch.arange(self.w + self.frames * 2)[None, :]  # room for the motion
        stripes = [(r + c) // 2, r // 2 + 0 * c, c // 2 + 0 * r][pattern] % 4
        codes = colours[stripes] * (self.vocab.codebook_size // self.COLOURS)
        frames = torch.stack(
            [codes.roll(motion * f, dims=1)[:, : self.w] for f in range(self.frames)]
        )
        # Prompt: 4 colour words, a pattern word, a motion word, then filler words.
        low, high = self.text_tokens
        n_text = int(torch.randint(max(low, 6), max(high, 6) + 1, (), generator=g))
        base = self.text_low
        words = [base + 16 * j + int(colours[j]) for j in range(4)]
        words += [base + 64 + pattern, base + 67 + motion + 1]
        filler = torch.randint(base + 70, self.vocab.text_size, (n_text - 6,), generator=g)
        prompt = words + filler.tolist()
        return build_sequence(self.vocab, prompt, frames, self.duration, self.fps, self.spatial)

    def __iter__(self) -> SyntheticSource:
        return self

    def __next__(self) -> list[torch.Tensor]:
        m = global_micro_batch(self.count, self.rank, self.world_size, self.accumulation)
        self.count += 1
        start = m * self.micro_batch_size
        return [self.sample(start + i) for i in range(self.micro_batch_size)]

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


class MixedSource:
    """Image and video micro-batches from per-kind sources, kinds chosen by :func:`step_kind`
    (``accumulation`` consecutive micro-batches per optimiser step)."""

    def __init__(self, sources: dict[str, BatchSource], image_ratio: float, accumulation: int = 1):
        needed = set(kinds_used(image_ratio))
        if not needed <= set(sources):
            raise LumosError(f"image ratio {image_ratio} needs sources for {sorted(needed)}")
        self.sources, self.image_ratio, self.accumulation = sources, image_ratio, accumulation
        self.count = 0  # micro-batches yielded

    def __iter__(self) -> MixedSource:
        return self

    def __next__(self) -> list[torch.Tensor]:
        kind = step_kind(self.count // self.accumulation, self.image_ratio)
        self.count += 1
        return next(self.sources[kind])

    def state_dict(self) -> dict:
        return {"count": self.count, **{k: s.state_dict() for k, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for kind, source in self.sources.items():
            source.load_state_dict(state[kind])
