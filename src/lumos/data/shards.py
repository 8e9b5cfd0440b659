"""Token shards: the on-disk format of pre-tokenised training data (``lumos tokenize``).

A dataset is a directory holding Parquet shards and an index::

    out/
      index.json                          written last, once every shard is present
      summary.json                        failures and timing of the last run
      shard-00000-of-00008.parquet        one row per sample
      ...

Shard schema (one row per sample; written with pyarrow, zstd, row groups of
:data:`ROW_GROUP_SIZE` rows):

============  ===============  ==============================================================
column        type             meaning
============  ===============  ==============================================================
key           string           sample id: the manifest's ``id`` field, else its ``path`` as
                               written; ``world-<split>-<index>`` for the procedural world
index         int64            position in the source (manifest row, or world index)
kind          string           ``image`` (one frame, duration 1 s, 1 fps) or ``video``
t, h, w       int32            latent grid: latent frames, rows, columns
width,        int32            pixels of the encoded clip (``w * spatial``, ``h * spatial``)
height
fps,          int32            frame rate and whole seconds written in the sequence header
duration
codes         list<int32>      ``t*h*w`` visual tokenizer indices (not vocabulary ids),
                               row-major over (t, h, w)
text_ids      list<int32>      text tokenizer ids of :func:`lumos.sequence.layout.prompt_text`
                               (no BOS/SEP)
caption       string           the caption, as given
source        string           where the pixels came from: the media path as written in the
                               manifest (relative to it), or ``world:<split>``
============  ===============  ==============================================================

The sequence layout is not stored: :meth:`TokenizedSample.sequence` rebuilds the token
sequence with :func:`lumos.sequence.layout.build_sequence` and the vocabulary of the index,
so the same shards serve any vocabulary with the same tokenizers. Each shard's Parquet
schema metadata (key ``lumos``) holds a JSON object with the run's ``fingerprint`` (a hash
of the source, the settings and the tokenizers' identities), the shard number, the source
index range it covers, its sample counts and the ``failures`` (inputs that could not be
read: ``index``, ``key``, ``error``). Shards are written to a temporary name and renamed, so a
shard file that exists is complete.

``index.json``: ``format``, ``version``, ``fingerprint``, ``num_samples``, ``num_images``,
``num_videos``, ``num_failed``, ``shards`` (per shard: ``file``, ``samples``, ``images``,
``videos``, ``failed``, ``sha256``), ``vocab`` (:meth:`Vocabulary.to_dict`),
``visual_tokenizer`` and ``text_tokenizer`` (``path``, ``sha256`` and sizes), ``source`` and
``settings`` (``samples_per_shard``, ``encode_batch``, and the visual tokenizer's
``encode_device`` type and ``encode_dtype``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lumos.errors import LumosError
from lumos.sequence.layout import build_sequence, tokens_per_frame
from lumos.sequence.vocab import Vocabulary

FORMAT = "lumos-token-shards"
VERSION = 1
INDEX_NAME = "index.json"
SUMMARY_NAME = "summary.json"
METADATA_KEY = b"lumos"
ROW_GROUP_SIZE = 256

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("index", pa.int64()),
        ("kind", pa.string()),
        ("t", pa.int32()),
        ("h", pa.int32()),
        ("w", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.int32()),
        ("duration", pa.int32()),
        ("codes", pa.list_(pa.int32())),
        ("text_ids", pa.list_(pa.int32())),
        ("caption", pa.string()),
        ("source", pa.string()),
    ]
)


@dataclass
class TokenizedSample:
    """One pre-tokenised sample. ``codes`` int32 [t, h, w] latent tokens; ``width``/``height``
    in pixels; ``text_ids`` the tokenised prompt (no BOS/SEP)."""

    key: str
    index: int
    kind: str
    codes: np.ndarray
    text_ids: np.ndarray
    width: int
    height: int
    fps: int
    duration: int
    caption: str
    source: str

    def sequence(self, vocab: Vocabulary, spatial: int, with_text: bool = True) -> torch.Tensor:
        """The training sequence, a 1-D LongTensor; ``with_text=False`` starts at VSTART
        (classifier-free guidance)."""
        text = self.text_ids.tolist() if with_text else None
        codes = torch.from_numpy(self.codes.astype(np.int64))
        return build_sequence(vocab, text, codes, self.duration, self.fps, spatial=spatial)


def sequence_length(num_text: int, t: int, h: int, w: int) -> int:
    """Length of :meth:`TokenizedSample.sequence` with text: BOS, text, SEP, video header,
    ``t`` frames, VEND, SEP."""
    return 1 + num_text + 1 + 3 + t * tokens_per_frame(h, w) + 2


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.parquet"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, samples: list[TokenizedSample], metadata: dict) -> None:
    """Write ``samples`` (in order) to ``path`` atomically, with ``metadata`` as JSON in the
    schema metadata. The same samples and metadata give the same bytes."""
    columns = {
        "key": [s.key for s in samples],
        "index": [s.index for s in samples],
        "kind": [s.kind for s in samples],
        "t": [s.codes.shape[0] for s in samples],
        "h": [s.codes.shape[1] for s in samples],
        "w": [s.codes.shape[2] for s in samples],
        "width": [s.width for s in samples],
        "height": [s.height for s in samples],
        "fps": [s.fps for s in samples],
        "duration": [s.duration for s in samples],
        "codes": _list_array([s.codes.reshape(-1) for s in samples]),
        "text_ids": _list_array([s.text_ids for s in samples]),
        "caption": [s.caption for s in samples],
        "source": [s.source for s in samples],
    }
    schema = SCHEMA.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    table = pa.table(columns, schema=schema)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _list_array(arrays: list[np.ndarray]) -> pa.ListArray:
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def read_shard_metadata(path: str | os.PathLike) -> dict:
    """The ``lumos`` JSON metadata of a shard (reads the footer only)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as err:
        raise LumosError(f"{path}: not a readable Parquet shard ({err})") from err
    if METADATA_KEY not in meta:
        raise LumosError(f"{path} is not a lumos token shard (no '{METADATA_KEY.decode()}' key)")
    return json.loads(meta[METADATA_KEY])


def read_shard(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """A whole shard (or some of its ``columns``) as an Arrow table."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise LumosError(f"{path}: cannot read token shard ({err}); re-run lumos tokenize") from err


def table_samples(table: pa.Table) -> list[TokenizedSample]:
    """Decode every row of a shard table."""
    cols = {name: table.column(name).combine_chunks() for name in ("codes", "text_ids")}
    plain = {n: table.column(n).to_pylist() for n in SCHEMA.names if n not in cols}
    codes_off, codes = _offsets_values(cols["codes"])
    text_off, text = _offsets_values(cols["text_ids"])
    samples = []
    for i in range(table.num_rows):
        shape = (plain["t"][i], plain["h"][i], plain["w"][i])
        samples.append(
            TokenizedSample(
                key=plain["key"][i],
                index=plain["index"][i],
                kind=plain["kind"][i],
                codes=codes[codes_off[i] : codes_off[i + 1]].reshape(shape),
                text_ids=text[text_off[i] : text_off[i + 1]],
                width=plain["width"][i],
                height=plain["height"][i],
                fps=plain["fps"][i],
                duration=plain["duration"][i],
                caption=plain["caption"][i],
                source=plain["source"][i],
            )
        )
    return samples


def _offsets_values(array: pa.ListArray) -> tuple[np.ndarray, np.ndarray]:
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    return offsets, values


@dataclass
class ShardIndex:
    """A parsed ``index.json``; ``files`` are absolute shard paths in shard order."""

    root: Path
    data: dict
    files: list[Path]
    vocab: Vocabulary
    spatial_compression: int

    @property
    def shards(self) -> list[dict]:
        return self.data["shards"]


def read_index(path: str | os.PathLike) -> ShardIndex:
    """Read a dataset's ``index.json`` (``path`` is the directory or the file) and check that
    every shard it lists exists."""
    p = Path(path)
    if p.is_dir():
        p = p / INDEX_NAME
    if not p.is_file():
        raise LumosError(
            f"{p}: no such token index; run `lumos tokenize` to create it (an interrupted or "
            "partial run writes the index only once every shard exists)"
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LumosError(f"{p}: unreadable token index ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LumosError(f"{p} is not a lumos token index (format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise LumosError(f"{p} has version {data.get('version')}; this lumos reads {VERSION}")
    files = [p.parent / s["file"] for s in data["shards"]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise LumosError(f"{p.parent}: shards listed in the index are missing: {missing[:5]}")
    return ShardIndex(
        root=p.parent,
        data=data,
        files=files,
        vocab=Vocabulary.from_dict(data["vocab"]),
        spatial_compression=int(data["visual_tokenizer"]["spatial_compression"]),
    )


def iter_samples(path: str | os.PathLike) -> Iterator[TokenizedSample]:
    """Every sample of a dataset once, in shard and row order (reads one shard at a time)."""
    for file in read_index(path).files:
        yield from table_samples(read_shard(file))


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
