"""The token vocabulary shared by text and visual tokens.

Ids ``[0, text_size)`` are text ids (including the special tokens); visual code ``c`` of the
visual tokenizer has id ``visual_offset + c``. The official Lumos-1 ids (docs/design.md, "Vocabulary") are
:meth:`Vocabulary.official`; our own models build theirs from a text tokenizer's special tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lumos import validate
from lumos.errors import LumosError

# Role name -> token string in our own text tokenizers (lumos.tokenizers.text.SPECIAL_TOKENS).
SPECIAL_TOKEN_NAMES = {
    "bos": "<s>",
    "pad": "<pad>",
    "eos": "</s>",
    "sep": "<sep>",
    "video_start": "<video_start>",
    "video_end": "<video_end>",
    "frame_start": "<frame_start>",
    "frame_end": "<frame_end>",
    "newline": "<newline>",
    "mask": "<mask>",
}


@dataclass(frozen=True)
class Vocabulary:
    """Every id the sequence layout needs. ``size`` is the model's vocabulary size."""

    text_size: int
    visual_offset: int
    codebook_size: int
    bos: int
    pad: int
    eos: int
    sep: int
    video_start: int
    video_end: int
    frame_start: int
    frame_end: int
    newline: int
    mask: int
    int_base: int  # id of the integer token 0; integer n is int_base + n
    num_ints: int

    def __post_init__(self) -> None:
        if self.visual_offset < self.text_size:
            raise LumosError(
                f"visual ids start at {self.visual_offset}, inside the text range "
                f"[0, {self.text_size}); visual_offset must be >= text_size"
            )

    @property
    def size(self) -> int:
        return self.visual_offset + self.codebook_size

    @property
    def visual_range(self) -> tuple[int, int]:
        """Half-open id range ``[start, stop)`` of visual tokens."""
        return self.visual_offset, self.visual_offset + self.codebook_size

    def int_token(self, n: int) -> int:
        """Id of the integer token for ``n`` (grid sizes, seconds, fps)."""
        if not 0 <= n < self.num_ints:
            raise LumosError(
                f"integer {n} has no token: this vocabulary encodes integers 0..{self.num_ints - 1}"
            )
        return self.int_base + n

    def int_value(self, token: int) -> int:
        n = token - self.int_base
        if not 0 <= n < self.num_ints:
            raise LumosError(f"token {token} is not an integer token")
        return n

    def is_visual(self, ids: torch.Tensor) -> torch.Tensor:
        start, stop = self.visual_range
        return (ids >= start) & (ids < stop)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Visual tokenizer indices in ``[0, codebook_size)`` -> vocabulary ids."""
        return codes + self.visual_offset

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of visual tokens -> visual tokenizer indices (errors on other ids)."""
        if not bool(self.is_visual(ids).all()):
            raise LumosError("expected only visual token ids; found text, special or MASK ids")
        return ids - self.visual_offset

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        fields = {f.name for f in dataclasses.fields(cls)}
        validate.known_keys("the vocabulary description", data, fields)
        missing = fields - data.keys()
        if missing:
            raise LumosError(f"vocabulary description lacks {sorted(missing)}")
        return cls(**{k: int(data[k]) for k in fields})

    @classmethod
    def official(cls) -> Vocabulary:
        """The released Lumos-1 ids: Chameleon text (65,536) + Cosmos DV4x8x8 codes (64,000)."""
        return cls(
            text_size=65536,
            visual_offset=65536,
            codebook_size=64000,
            bos=0,
            pad=1,
            eos=2,
            sep=8710,
            video_start=9004,
            video_end=9005,
            frame_start=8197,
            frame_end=8196,
            newline=8803,
            mask=9003,
            int_base=8804,
            num_ints=199,  # 8804 .. 9002; 9003 is MASK
        )

    @classmethod
    def compact(cls, text_size: int, codebook_size: int, num_ints: int = 40) -> Vocabulary:
        """Special ids 0-9 in ``SPECIAL_TOKEN_NAMES`` order, integers from 10, visual ids right
        after the text range: the layout of our own text tokenizers, for small experiments."""
        specials = {role: i for i, role in enumerate(SPECIAL_TOKEN_NAMES)}
        return cls(
            text_size=text_size,
            visual_offset=text_size,
            codebook_size=codebook_size,
            int_base=len(specials),
            num_ints=num_ints,
            **specials,
        )

    @classmethod
    def from_token_lookup(
        cls, token_to_id, text_size: int, codebook_size: int, num_ints: int
    ) -> Vocabulary:
        """Build from a text tokenizer that reserves our special tokens (``<s>``, ``<int_0>``...).

        ``token_to_id(str) -> int | None`` is the tokenizer's lookup; integer tokens
        ``<int_0> .. <int_{num_ints-1}>`` must have consecutive ids.
        """
        ids = {}
        for role, token in SPECIAL_TOKEN_NAMES.items():
            tid = token_to_id(token)
            if tid is None:
                raise LumosError(f"text tokenizer lacks the special token {token!r} ({role})")
            ids[role] = tid
        base = token_to_id("<int_0>")
        if base is None or any(token_to_id(f"<int_{n}>") != base + n for n in range(num_ints)):
            raise LumosError(
                f"text tokenizer lacks consecutive tokens <int_0>..<int_{num_ints - 1}>"
            )
        return cls(
            text_size=text_size,
            visual_offset=text_size,
            codebook_size=codebook_size,
            int_base=base,
            num_ints=num_ints,
            **ids,
        )
