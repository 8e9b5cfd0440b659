"""The official Lumos-1 text tokenizer: Chameleon's BPE plus 64,000 video tokens
(docs/design.md, "Vocabulary" and "Tokenizers").

Lumos-1 publishes ``text_tokenizer.json``: Chameleon's ``tokenizer.json`` (65,536 ids) with the
added tokens ``VIDVID<digits>Z`` for Cosmos code ``i`` at id ``65,536 + i`` (decimal digits
written as letters A-J, e.g. 407 -> ``VIDVIDEAHZ``) and a ``Split`` pre-tokenizer that isolates
them. The file as published carries two quirks of the official builder: its 64,000 entries
sit in ``added_tokens`` as ONE nested list, and ``"version": "2.0"``, which Hugging Face
``tokenizers`` refuses to load. :func:`build_official_text_tokenizer` reads that file or a
plain Chameleon ``tokenizer.json`` (then it adds the video tokens itself), checks every video
token and the special tokens against the ids of the checkpoint's vocabulary, and returns a
valid tokenizer (``save`` writes a standard ``tokenizer.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer

from lumos.errors import LumosError
from lumos.sequence.vocab import Vocabulary
from lumos.tokenizers.text import TextTokenizer

VIDEO_TOKEN_PATTERN = "(VIDVID)((A|B|C|D|E|F|G|H|I|J){1,5})Z"
_VIDEO_TOKEN = re.compile(r"VIDVID([A-J]{1,5})Z")


def video_token(index: int) -> str:
    """The token string of Cosmos code ``index``: ``VIDVID`` + digits as letters A-J + ``Z``."""
    return "VIDVID" + "".join(chr(ord("A") + int(d)) for d in str(index)) + "Z"


def _video_index(token: str) -> int | None:
    m = _VIDEO_TOKEN.fullmatch(token)
    return int("".join(str(ord(c) - ord("A")) for c in m.group(1))) if m else None


def official_special_tokens(vocab: Vocabulary) -> dict[str, int]:
    """Chameleon token string -> id for every id the sequence layout uses (docs/design.md,
    "Vocabulary"):
    ``<s>``, ``<racm3:break>`` (frame start), ``<eoss>`` (frame end) and ``<reservedNNNNN>`` at
    id NNNNN + 4 for the separator, new line, video start/end, MASK and the integers."""
    named = {"<s>": vocab.bos, "<racm3:break>": vocab.frame_start, "<eoss>": vocab.frame_end}
    reserved = [vocab.sep, vocab.newline, vocab.video_start, vocab.video_end, vocab.mask]
    reserved += [vocab.int_token(n) for n in range(vocab.num_ints)]
    return named | {f"<reserved{i - 4:05d}>": i for i in reserved}


def _flat_added_tokens(data: dict, where: Path) -> list[dict]:
    """``added_tokens`` with the official builder's nested list spliced in place."""
    flat = []
    for entry in data.get("added_tokens") or []:
        for item in entry if isinstance(entry, list) else [entry]:
            if not isinstance(item, dict) or not {"id", "content"} <= item.keys():
                raise LumosError(f"{where}: malformed entry in added_tokens: {str(item)[:80]}")
            flat.append(item)
    return flat


def _video_entry(index: int, offset: int) -> dict:
    return {
        "id": offset + index,
        "content": video_token(index),
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _with_video_split(pre_tokenizer: dict | None) -> dict:
    """``pre_tokenizer`` with the video-token ``Split`` (Isolated) in front, unless present."""
    split = {
        "type": "Split",
        "pattern": {"Regex": VIDEO_TOKEN_PATTERN},
        "behavior": "Isolated",
        "invert": False,
    }
    if pre_tokenizer is None:
        return split
    parts = (
        pre_tokenizer["pretokenizers"]
        if pre_tokenizer.get("type") == "Sequence"
        else [pre_tokenizer]
    )
    if any(p.get("type") == "Split" and p.get("pattern") == split["pattern"] for p in parts):
        return pre_tokenizer
    return {"type": "Sequence", "pretokenizers": [split, *parts]}


def build_official_text_tokenizer(
    path: str | Path, vocab: Vocabulary | None = None
) -> TextTokenizer:
    """Read a Lumos-1 ``text_tokenizer.json`` (quirks tolerated) or a Chameleon
    ``tokenizer.json`` and return the tokenizer of ``vocab`` (default: the official ids).

    One-line errors when the file is not a BPE tokenizer, lacks the text ids, holds some but
    not all video tokens or any at a wrong id, or has a special token at a wrong id.
    """
    path = Path(path)
    vocab = vocab or Vocabulary.official()
    offset, count = vocab.visual_offset, vocab.codebook_size
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LumosError(f"text tokenizer {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LumosError(f"cannot read text tokenizer {path}: {err}") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise LumosError(f"{path} is not a Hugging Face tokenizer.json with a model.vocab")
    added = _flat_added_tokens(data, path)
    ids = dict(model["vocab"]) | {a["content"]: a["id"] for a in added}
    text_ids = {i for t, i in ids.items() if _video_index(t) is None}
    if max(text_ids, default=-1) >= offset or len(text_ids) < vocab.text_size:
        raise LumosError(
            f"{path}: expected Chameleon's {vocab.text_size} text ids below {offset}; found "
            f"{len(text_ids)} ids up to {max(text_ids, default=-1)}"
        )
    for token, expected in official_special_tokens(vocab).items():
        if ids.get(token) != expected:
            raise LumosError(
                f"{path}: special token {token} has id {ids.get(token)}, the checkpoint expects "
                f"{expected}; this is not Chameleon's tokenizer (or not the one the checkpoint "
                "was trained with)"
            )
    video = {t: i for t, i in ids.items() if _video_index(t) is not None}
    if video and max(_video_index(t) for t in video) >= count:
        start, stop = vocab.visual_range
        raise LumosError(
            f"{path} has video tokens up to code {max(_video_index(t) for t in video)} but the "
            f"checkpoint's vocabulary has {count} visual ids [{start}, {stop}); they do not "
            "belong together"
        )
    if not video:  # plain Chameleon: add the video tokens (docs/design.md, "Tokenizers")
        added += [_video_entry(i, offset) for i in range(count)]
    else:
        for token, tid in video.items():
            index = _video_index(token)
            if token != video_token(index) or tid != offset + index:
                raise LumosError(
                    f"{path}: video token {token} has id {tid}, expected "
                    f"{offset + index} (= {offset} + code {index})"
                )
        if len(video) != count:
            raise LumosError(
                f"{path} has {len(video)} video tokens, not {count}: a tokenizer without all "
                "the video tokens cannot map Cosmos codes (image-to-video would fail)"
            )
    data["added_tokens"] = added
    data["version"] = "1.0"  # the builder's "2.0" is unknown to `tokenizers`
    data["pre_tokenizer"] = _with_video_split(data.get("pre_tokenizer"))
    try:
        tokenizer = Tokenizer.from_str(json.dumps(data))
    except Exception as err:  # tokenizers raises plain Exception for parse errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LumosError(f"{path}: not a valid tokenizer after repair ({first})") from None
    result = TextTokenizer(tokenizer)
    check_official_text_tokenizer(result, vocab, path)
    return result


def check_official_text_tokenizer(
    tokenizer: TextTokenizer, vocab: Vocabulary, where: str | Path = "text tokenizer"
) -> None:
    """Verify a loaded tokenizer against ``vocab``: every video token at ``visual_offset +
    code`` and every special token at its id (one-line errors)."""
    for token, expected in official_special_tokens(vocab).items():
        if tokenizer.token_to_id(token) != expected:
            raise LumosError(
                f"{where}: special token {token} has id {tokenizer.token_to_id(token)}, the "
                f"checkpoint expects {expected}"
            )
    for index in range(vocab.codebook_size):
        tid = tokenizer.token_to_id(video_token(index))
        if tid != vocab.visual_offset + index:
            state = "is missing" if tid is None else f"has id {tid}"
            raise LumosError(
                f"{where}: video token {video_token(index)} (code {index}) {state}, expected id "
                f"{vocab.visual_offset + index}; the tokenizer lacks the Lumos-1 video tokens"
            )
    if tokenizer.vocab_size != vocab.size:
        raise LumosError(
            f"{where} has {tokenizer.vocab_size} ids; the checkpoint's vocabulary has {vocab.size}"
        )
