"""Text tokenizer: byte-level BPE on Hugging Face ``tokenizers`` (a ``tokenizer.json`` file).

Our own tokenizers reserve :data:`SPECIAL_TOKENS` as ids ``0 .. len(SPECIAL_TOKENS) - 1``:
the sequence-layout tokens (``<s>`` = 0 is BOS, ...) followed by the integer tokens
``<int_0> .. <int_255>`` (grid sizes, seconds, fps; docs/design.md, "Token layout"). Any other
``tokenizer.json``, such as the official Chameleon one, loads too; its special tokens differ,
so callers look ids up with :meth:`TextTokenizer.token_to_id`.

:meth:`TextTokenizer.encode` turns plain text into ids: it adds no special tokens, and
special-token strings inside the text (a caption containing "<s>") are encoded as ordinary
text, so user text can never inject layout tokens.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumos.errors import LumosError

NUM_INT_TOKENS = 256


def int_token(n: int) -> str:
    """The token string of integer ``n`` (0 <= n < NUM_INT_TOKENS), e.g. ``<int_12>``."""
    return f"<int_{n}>"


SPECIAL_TOKENS: list[str] = [
    "<s>",  # BOS
    "<pad>",
    "</s>",
    "<sep>",  # turn separator
    "<video_start>",
    "<video_end>",
    "<frame_start>",
    "<frame_end>",
    "<newline>",  # after every latent row
    "<mask>",
] + [int_token(n) for n in range(NUM_INT_TOKENS)]

_BYTE_ALPHABET = 256  # byte-level BPE starts from one token per byte


def tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` if it is an existing file or ends in ``.json``, else ``path/tokenizer.json``."""
    p = Path(path)
    if p.is_file() or (p.suffix.lower() == ".json" and not p.is_dir()):
        return p
    return p / "tokenizer.json"


class TextTokenizer:
    """A loaded ``tokenizers.Tokenizer`` with a plain-text encode/decode interface."""

    def __init__(self, tokenizer: Tokenizer):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.encode_special_tokens = True  # special-token strings in text stay text
        self._tok = tokenizer

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load a tokenizer file (a ``.json`` path, or a directory holding ``tokenizer.json``)."""
        p = tokenizer_file(path)
        if not p.is_file():
            raise LumosError(f"{p}: no such text tokenizer file (expected a tokenizer.json)")
        try:
            return cls(Tokenizer.from_file(str(p)))
        except Exception as err:  # tokenizers raises plain Exception for any parse error
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LumosError(
                f"{p}: not a valid Hugging Face tokenizer.json ({first_line})"
            ) from err

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are ``0 .. vocab_size - 1``)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of plain ``text``; no BOS/EOS or other special tokens are added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (parallel inside ``tokenizers``)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are rendered as their strings unless skipped."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LumosError(
                f"ids {bad[:5]} are not text ids (vocabulary size {self.vocab_size}); "
                "strip visual ids before decoding text"
            )
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string such as ``"<s>"`` or ``"<int_3>"``; None if absent."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id; None if out of range."""
        return self._tok.id_to_token(token_id)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to :func:`tokenizer_file` ``(path)``; directories are created."""
        p = tokenizer_file(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._tok.save(str(tmp))
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def train_text_tokenizer(
    texts: Iterable[str], vocab_size: int, path: str | os.PathLike | None = None
) -> TextTokenizer:
    """Train a byte-level BPE tokenizer with :data:`SPECIAL_TOKENS` at ids 0.. and save it.

    ``vocab_size`` counts everything (special tokens, the 256 byte tokens and merges); a small
    corpus may end with fewer ids. Deterministic: the same texts give the same file.
    ``path`` is where it is saved (see :meth:`TextTokenizer.save`); None skips saving.
    """
    minimum = len(SPECIAL_TOKENS) + _BYTE_ALPHABET
    if vocab_size < minimum:
        raise LumosError(
            f"vocab_size {vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and "
            f"{_BYTE_ALPHABET} byte tokens alone need {minimum}"
        )
    seen = 0

    def counted(items: Iterable[str]) -> Iterator[str]:
        nonlocal seen
        for text in items:
            seen += bool(text.strip())
            yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(counted(texts), trainer)
    if not seen:
        raise LumosError("no text to train the tokenizer on (the corpus is empty)")
    result = TextTokenizer(tok)
    if path is not None:
        result.save(path)
    return result
