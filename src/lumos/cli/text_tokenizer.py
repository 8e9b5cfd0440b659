"""``lumos train-text-tokenizer``: train a byte-level BPE text tokenizer on captions."""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from lumos import validate
from lumos.data.world import caption, sample_scene
from lumos.errors import LumosError
from lumos.sequence.layout import prompt_text
from lumos.tokenizers.text import SPECIAL_TOKENS, tokenizer_file, train_text_tokenizer

# (W, H) pixels and (fps, seconds) used to wrap captions in the prompt template while training.
PROMPT_SIZES = [(64, 64), (128, 128), (448, 256), (256, 448), (320, 320), (672, 384), (768, 480)]
PROMPT_TIMINGS = [(1, 1), (4, 2), (8, 2), (12, 2), (24, 1)]
MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # special tokens and the byte alphabet
MAX_VOCAB = 2**18


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-text-tokenizer",
        help="train a byte-level BPE text tokenizer (tokenizer.json) on captions",
        description="Train a byte-level BPE tokenizer with the layout and integer special "
        "tokens at ids 0..265. Captions come from text files (.txt: one per line; .jsonl / "
        ".csv: the --field column, as in `lumos tokenize` manifests) and/or the procedural "
        "world. Each caption is wrapped in the training prompt template (see --raw). The "
        "result is deterministic for the same inputs.",
    )
    p.add_argument("inputs", nargs="*", type=Path, help="caption files (.txt, .jsonl, .csv)")
    p.add_argument(
        "--out", type=Path, required=True, help="a .json file, or a directory for tokenizer.json"
    )
    p.add_argument(
        "--vocab-size",
        type=validate.int_arg(MIN_VOCAB, MAX_VOCAB),
        default=8192,
        help="ids in total (default 8192)",
    )
    p.add_argument(
        "--world",
        type=validate.int_arg(0, 10**7),
        default=0,
        metavar="N",
        help="add N world captions",
    )
    p.add_argument("--field", default="caption", help="caption field of .jsonl/.csv inputs")
    p.add_argument("--raw", action="store_true", help="train on captions as given, unwrapped")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = tokenizer_file(args.out)
    validate.output_path(out, "file", args.inputs, "--out")
    if out.is_file() and out.suffix.lower() != ".json":
        raise LumosError(f"--out {out} is an existing non-JSON file; give a .json file or a directory")
    texts = [t for path in args.inputs for t in read_captions(path, args.field)]
    texts += world_captions(args.world)
    if not texts:
        raise LumosError("no captions: give caption files and/or --world N")
    if not args.raw:
        texts = wrap_in_prompts(texts)
    tok = train_text_tokenizer(texts, args.vocab_size, out)
    print(f"wrote {out}: {tok.vocab_size} ids from {len(texts)} texts")
    return 0


def read_captions(path: Path, field: str) -> list[str]:
    """Non-empty captions of a .txt (one per line), .jsonl or .csv (``field``) file."""
    if not path.is_file():
        raise LumosError(f"{path}: no such caption file")
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if suffix == ".txt":
                rows = [line.rstrip("\r\n") for line in f]
            elif suffix == ".jsonl":
                rows = [_json_field(line, field, path, i) for i, line in enumerate(f, 1)]
            elif suffix == ".csv":
                reader = csv.DictReader(f)
                if field not in (reader.fieldnames or []):
                    raise LumosError(f"{path}: no {field!r} column; columns: {reader.fieldnames}")
                rows = [row[field] or "" for row in reader]
            else:
                raise LumosError(f"{path}: unsupported caption file; use .txt, .jsonl or .csv")
    except UnicodeDecodeError as err:
        raise LumosError(f"{path}: not UTF-8 text ({err})") from err
    return [r for r in rows if r.strip()]


def _json_field(line: str, field: str, path: Path, number: int) -> str:
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise LumosError(f"{path}:{number}: invalid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise LumosError(f"{path}:{number}: no string field {field!r}")
    return record[field]


def world_captions(count: int) -> Iterator[str]:
    """``count`` captions of procedural-world training scenes, every fourth one an image."""
    for i in range(count):
        image = i % 4 == 3
        yield caption(sample_scene(i, "train", still_only=image), seed=i, image=image)


def wrap_in_prompts(captions: list[str]) -> list[str]:
    """Each caption in the prompt template with a size and timing drawn by a fixed seed."""
    rng = random.Random(0)
    wrapped = []
    for text in captions:
        (w, h), (fps, seconds) = rng.choice(PROMPT_SIZES), rng.choice(PROMPT_TIMINGS)
        wrapped.append(prompt_text(text, w, h, fps, seconds))
    return wrapped
