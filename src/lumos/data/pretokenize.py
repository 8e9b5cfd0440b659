"""Pre-tokenisation: captioned videos and images -> token shards (``lumos tokenize``).

Sources are a manifest (CSV with a header, or JSON Lines; fields ``path`` and ``caption``,
optional ``id``; relative paths are resolved against the manifest's directory; still images
are recognised by their suffix) or the procedural world (:class:`lumos.data.world.ProceduralWorld`).
Every sample is read as RGB frames, encoded by the visual tokenizer to latent codes
``[t, h, w]``, and its caption wrapped by :func:`lumos.sequence.layout.prompt_text` and
encoded by the text tokenizer; both are stored in Parquet shards (:mod:`lumos.data.shards`).

Work plan, all deterministic:

* Sample ``i`` of the source goes to shard ``i // samples_per_shard``;
  ``num_shards = ceil(count / samples_per_shard)``.
* ``--shard i/N`` runs the shards ``j`` with ``j % N == i``; ``--workers K`` runs them in K
  spawned processes, each owning whole shards (one intra-op torch thread per worker).
* Inside a shard, samples are read in chunks of ``encode_batch`` in source order, grouped by
  shape and encoded batch by batch, so a shard's bytes depend only on the inputs and the
  settings, not on worker count or interruptions (on one kind of CPU: float rounding inside
  the tokenizer may differ across CPU instruction sets).
* A shard is written to a temporary name and renamed when complete; a rerun skips complete
  shards whose fingerprint matches and redoes the rest. ``index.json`` is written last, by
  the run that finds every shard present (so running the command without ``--shard`` on the
  union of the machines' outputs only writes the index).
* An input that cannot be read (missing, corrupt, truncated, too short, empty caption) is
  skipped and recorded in its shard's metadata and in ``summary.json``; the run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lumos.data import shards as fmt
from lumos.data.buckets import GRID
from lumos.data.video_io import IMAGE_SUFFIXES, load_clip
from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.sequence.layout import header_timing, prompt_text
from lumos.sequence.vocab import Vocabulary
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.text import NUM_INT_TOKENS, TextTokenizer
from lumos.tokenizers.visual import VisualTokenizer, frames_to_video

DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_ENCODE_BATCH = 8


@dataclass
class RawSample:
    """A decoded sample before tokenisation: ``video`` float [3, T, H, W] in [-1, 1]."""

    key: str
    kind: str
    video: torch.Tensor
    caption: str
    source: str


@dataclass(frozen=True)
class WorldSource:
    """The first ``count`` samples of a procedural world split: videos of ``frames`` RGB frames
    labelled ``fps`` frames per second in the prompt and header, sizes in pixels."""

    split: str
    count: int
    height: int = 64
    width: int = 64
    frames: int = 9
    fps: int = 4
    image_fraction: float = 0.0
    seed: int = 0

    def __len__(self) -> int:
        return self.count

    def describe(self) -> dict:
        return {"type": "world", **asdict(self)}

    def world(self) -> ProceduralWorld:
        """The world (constructing it validates the split, canvas and image fraction)."""
        return ProceduralWorld(
            self.split,
            self.height,
            self.width,
            self.frames,
            self.seed,
            self.image_fraction,
            self.count,
        )

    def load(self, i: int) -> RawSample:
        world = self.world()
        sample = world[i]
        kind = "image" if sample.frames.shape[0] == 1 else "video"
        video = frames_to_video(sample.frames)
        return RawSample(_key(self, i), kind, video, sample.caption, f"world:{self.split}")


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest row: ``path`` as written, or ``error`` if the row itself is invalid."""

    key: str
    path: str = ""
    caption: str = ""
    error: str = ""


@dataclass
class ManifestSource:
    """Rows of a CSV/JSONL manifest, read at ``frames`` RGB frames and ``fps``, fitted to
    ``size`` (W, H) pixels or to the closest of ``buckets``."""

    path: Path
    frames: int
    fps: int
    size: tuple[int, int] | None = None
    buckets: list[tuple[int, int]] | None = None
    entries: list[ManifestEntry] = field(default_factory=list)
    sha256: str = ""

    @classmethod
    def open(cls, path: str | os.PathLike, frames: int, fps: int, size=None, buckets=None):
        p = Path(path)
        if not p.is_file():
            raise LumosError(f"{p}: no such manifest file (CSV or JSONL with path and caption)")
        if (size is None) == (buckets is None):
            raise LumosError("give exactly one of a fixed size or resolution buckets")
        return cls(p, frames, fps, size, buckets, read_manifest(p), fmt.file_sha256(p))

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> dict:
        return {
            "type": "manifest",
            "sha256": self.sha256,
            "frames": self.frames,
            "fps": self.fps,
            "size": self.size,
            "buckets": self.buckets,
        }

    def load(self, i: int) -> RawSample:
        entry = self.entries[i]
        if entry.error:
            raise LumosError(entry.error)
        media = Path(entry.path)
        if not media.is_absolute():
            media = self.path.parent / media
        is_image = media.suffix.lower() in IMAGE_SUFFIXES
        target = self.size if self.size is not None else self.buckets
        video = load_clip(
            media, 1 if is_image else self.frames, 1 if is_image else self.fps, target
        )
        return RawSample(
            entry.key, "image" if is_image else "video", video, entry.caption, entry.path
        )


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Parse a manifest: ``.jsonl``/``.json`` as JSON Lines (blank lines ignored), anything else
    as CSV with a header row. Rows lacking a path or caption become error entries."""
    rows: list[dict | str] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.suffix.lower() in (".jsonl", ".json"):
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        row = f"{path.name} line {n}: invalid JSON ({err.msg})"
                    rows.append(row if isinstance(row, (dict, str)) else f"line {n}: not an object")
            else:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                    raise LumosError(
                        f"{path}: the CSV header must name the columns 'path' and 'caption' "
                        f"(found {reader.fieldnames})"
                    )
                rows.extend(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise LumosError(f"{path}: cannot read manifest ({err})") from err
    entries = []
    for n, row in enumerate(rows):
        if isinstance(row, str):
            entries.append(ManifestEntry(key=f"row-{n}", error=row))
            continue
        wrong = [k for k in ("path", "caption") if not isinstance(row.get(k) or "", str)]
        if wrong:  # a list, number or object is not a caption (nor a path)
            kind = type(row[wrong[0]]).__name__
            entries.append(
                ManifestEntry(f"row-{n}", error=f"manifest row {n}: {wrong[0]} is a {kind}, not text")
            )
            continue
        media, caption = str(row.get("path") or ""), str(row.get("caption") or "")
        key = str(row.get("id") or media or f"row-{n}")
        if not media or not caption.strip():
            missing = "path" if not media else "caption"
            entries.append(ManifestEntry(key, media, caption, f"manifest row {n}: empty {missing}"))
        else:
            entries.append(ManifestEntry(key, media, caption))
    if not entries:
        raise LumosError(f"{path}: the manifest lists no samples")
    return entries


@dataclass
class TokenizeJob:
    """Everything a worker needs to tokenise shards."""

    source: WorldSource | ManifestSource
    out_dir: Path
    visual_tokenizer: Path
    text_tokenizer: Path
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    encode_batch: int = DEFAULT_ENCODE_BATCH
    identities: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.source) / self.samples_per_shard)

    def shard_range(self, shard: int) -> range:
        start = shard * self.samples_per_shard
        return range(start, min(start + self.samples_per_shard, len(self.source)))

    def shard_path(self, shard: int) -> Path:
        return self.out_dir / fmt.shard_name(shard, self.num_shards)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()

    @property
    def settings(self) -> dict:
        """What determines the shards' content (tokenizers by hash, not path)."""
        return {
            "format": fmt.FORMAT,
            "version": fmt.VERSION,
            "source": self.source.describe(),
            "samples_per_shard": self.samples_per_shard,
            "encode_batch": self.encode_batch,
            "visual_tokenizer_sha256": self.identities["visual_tokenizer"]["sha256"],
            "text_tokenizer_sha256": self.identities["text_tokenizer"]["sha256"],
        }


def directory_sha256(path: Path) -> str:
    """Hash of a directory's files (names and bytes, sorted by name) or of one file."""
    if path.is_file():
        return fmt.file_sha256(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(fmt.file_sha256(f).encode())
    return digest.hexdigest()


@dataclass
class Tokenizers:
    visual: VisualTokenizer
    text: TextTokenizer
    vocab: Vocabulary


def load_tokenizers(visual_path: Path, text_path: Path) -> Tokenizers:
    visual = load_visual_tokenizer(visual_path)
    text = TextTokenizer.from_file(text_path)
    vocab = Vocabulary.from_token_lookup(
        text.token_to_id,
        text_size=text.vocab_size,
        codebook_size=visual.codebook_size,
        num_ints=NUM_INT_TOKENS,
    )
    return Tokenizers(visual, text, vocab)


def make_job(
    source: WorldSource | ManifestSource,
    out_dir: str | os.PathLike,
    visual_tokenizer: str | os.PathLike,
    text_tokenizer: str | os.PathLike,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    encode_batch: int = DEFAULT_ENCODE_BATCH,
) -> tuple[TokenizeJob, Tokenizers]:
    """Validate the settings against the tokenizers and build the job (loads both tokenizers)."""
    if len(source) < 1:
        raise LumosError("nothing to tokenize: the source has no samples (use --count >= 1)")
    if samples_per_shard < 1 or encode_batch < 1:
        raise LumosError("--samples-per-shard and --encode-batch must be >= 1")
    visual_path, text_path = Path(visual_tokenizer), Path(text_tokenizer)
    toks = load_tokenizers(visual_path, text_path)
    frames, fps = source.frames, source.fps
    tc = toks.visual.temporal_compression
    if frames < 2 or (frames - 1) % tc:
        raise LumosError(
            f"--frames {frames}: videos need 1 + {tc}k RGB frames with k >= 1 (e.g. {1 + 2 * tc}) "
            "for the visual tokenizer; images are always one frame"
        )
    if fps < 1 or (frames - 1) % fps:
        raise LumosError(
            f"--frames {frames} at --fps {fps} is not a whole number of seconds: the prompt "
            f"says fps * duration frames, so frames - 1 must be a multiple of fps"
        )
    if isinstance(source, ManifestSource):
        sizes = source.buckets or [source.size]
    else:
        sizes = [(source.width, source.height)]
        source.world()
    for w, h in sizes:
        if w % GRID or h % GRID:
            raise LumosError(
                f"size {w}x{h} (W x H): width and height must be multiples of {GRID} pixels "
                "(the sequence header stores them in units of 32)"
            )
    job = TokenizeJob(
        source,
        Path(out_dir),
        visual_path,
        text_path,
        samples_per_shard,
        encode_batch,
        identities={
            "visual_tokenizer": {
                "path": str(visual_path.resolve()),
                "sha256": directory_sha256(visual_path),
                "codebook_size": toks.visual.codebook_size,
                "temporal_compression": tc,
                "spatial_compression": toks.visual.spatial_compression,
            },
            "text_tokenizer": {
                "path": str(text_path.resolve()),
                "sha256": directory_sha256(text_path),
                "vocab_size": toks.text.vocab_size,
            },
        },
    )
    return job, toks


# ----------------------------------------------------------------------------- one shard


def tokenize_shard(
    job: TokenizeJob,
    shard: int,
    toks: Tokenizers,
    on_progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Tokenise one shard and write it; returns its metadata (counts and failures)."""
    samples: list[fmt.TokenizedSample] = []
    failures: list[dict] = []
    indices = job.shard_range(shard)
    for start in range(indices.start, indices.stop, job.encode_batch):
        chunk = range(start, min(start + job.encode_batch, indices.stop))
        loaded: dict[int, tuple[RawSample, list[int]]] = {}
        for i in chunk:
            try:
                raw = job.source.load(i)
                loaded[i] = (raw, toks.text.encode(_prompt(raw, job.source.fps)))
            except Exception as err:  # any unreadable input is skipped, never fatal
                key = _key(job.source, i)
                failures.append({"index": i, "key": key, "error": _one_line(err)})
        codes = _encode_grouped(toks.visual, {i: r.video for i, (r, _) in loaded.items()})
        for i, (raw, text_ids) in loaded.items():
            fps, duration = header_timing(raw.video.shape[1], job.source.fps)
            t, h, w = codes[i].shape
            sc = toks.visual.spatial_compression
            samples.append(
                fmt.TokenizedSample(
                    key=raw.key,
                    index=i,
                    kind=raw.kind,
                    codes=codes[i],
                    text_ids=np.asarray(text_ids, np.int32),
                    width=w * sc,
                    height=h * sc,
                    fps=fps,
                    duration=duration,
                    caption=raw.caption,
                    source=raw.source,
                )
            )
        on_progress(len(chunk))
    images = sum(s.kind == "image" for s in samples)
    meta = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "fingerprint": job.fingerprint,
        "shard": shard,
        "num_shards": job.num_shards,
        "start": indices.start,
        "stop": indices.stop,
        "samples": len(samples),
        "images": images,
        "videos": len(samples) - images,
        "failures": failures,
    }
    fmt.write_shard(job.shard_path(shard), samples, meta)
    return meta


def _prompt(raw: RawSample, fps: int) -> str:
    _, _, height, width = raw.video.shape
    rate, duration = header_timing(raw.video.shape[1], fps)
    return prompt_text(raw.caption, width, height, rate, duration)


def _encode_grouped(visual: VisualTokenizer, videos: dict[int, torch.Tensor]) -> dict:
    """Encode videos grouped by shape (one batch per shape, in index order) -> int32 codes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in videos.items():
        groups.setdefault(tuple(v.shape), []).append(i)
    out = {}
    for ids in groups.values():
        codes = visual.encode(torch.stack([videos[i] for i in ids]))
        for i, c in zip(ids, codes.numpy().astype(np.int32), strict=True):
            out[i] = c
    return out


def _key(source, i: int) -> str:
    if isinstance(source, ManifestSource):
        return source.entries[i].key
    return f"world-{source.split}-{i:09d}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, LumosError) else f"{type(err).__name__}: {text}"


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(job: TokenizeJob, progress: mp.Queue, parent: int) -> None:
    torch.set_num_threads(1)
    _WORKER.update(
        job=job,
        toks=load_tokenizers(job.visual_tokenizer, job.text_tokenizer),
        progress=progress,
        parent=parent,
    )


def _worker_shard(shard: int) -> dict:
    w = _WORKER

    def report(n: int) -> None:
        if os.getppid() != w["parent"]:  # the parent was killed: stop instead of orphaning
            os._exit(1)
        w["progress"].put(n)

    return tokenize_shard(w["job"], shard, w["toks"], report)


def _run_in_process(job: TokenizeJob, todo: list[int], toks: Tokenizers, bar: tqdm) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as a worker, hence the same bytes
    try:
        for shard in todo:
            tokenize_shard(job, shard, toks, bar.update)
    finally:
        torch.set_num_threads(threads)


def _run_pool(job: TokenizeJob, todo: list[int], workers: int, bar: tqdm) -> None:
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    with ctx.Pool(workers, _init_worker, (job, progress, os.getpid())) as pool:
        pending = [pool.apply_async(_worker_shard, (shard,)) for shard in todo]
        while pending:
            with contextlib.suppress(queue.Empty):
                bar.update(progress.get(timeout=0.2))
            for result in [r for r in pending if r.ready()]:
                result.get()  # re-raises a worker's error
                pending.remove(result)
        while not progress.empty():
            bar.update(progress.get())


# ----------------------------------------------------------------------------- a run


def pretokenize(
    job: TokenizeJob,
    toks: Tokenizers,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict:
    """Tokenise the shards of ``part`` = (i, N) not yet done; write the index if every shard
    is then present. Returns the run summary (also written to ``summary.json``)."""
    i, n = part
    if not (n >= 1 and 0 <= i < n):
        raise LumosError(f"--shard {i}/{n}: use i/N with 0 <= i < N")
    if workers < 1:
        raise LumosError(f"--workers must be >= 1, got {workers}")
    job.out_dir.mkdir(parents=True, exist_ok=True)
    assigned = [j for j in range(job.num_shards) if j % n == i]
    done = _finished_shards(job)
    for shard in assigned:  # leftovers of a killed run
        for tmp in job.out_dir.glob(f".{job.shard_path(shard).name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    todo = [j for j in assigned if j not in done]
    total = sum(len(job.shard_range(j)) for j in todo)
    began = time.perf_counter()
    with tqdm(total=total, unit="sample", desc="tokenize", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            _run_in_process(job, todo, toks, bar)
        else:
            _run_pool(job, todo, min(workers, len(todo)), bar)
    seconds = time.perf_counter() - began
    done = _finished_shards(job)
    metas = [done[j] for j in assigned]
    summary = {
        "fingerprint": job.fingerprint,
        "part": f"{i}/{n}",
        "shards_total": job.num_shards,
        "shards_assigned": len(assigned),
        "shards_tokenized": len(todo),
        "shards_skipped": len(assigned) - len(todo),
        "samples_tokenized": total,
        "seconds": round(seconds, 3),
        "samples_per_second": round(total / seconds, 3) if total and seconds > 0 else None,
        "samples": sum(m["samples"] for m in metas),
        "failed": sum(len(m["failures"]) for m in metas),
        "failures": [f for m in metas for f in m["failures"]],
        "index_written": len(done) == job.num_shards,
    }
    if summary["index_written"]:
        _write_index(job, toks, [done[j] for j in range(job.num_shards)])
    name = fmt.SUMMARY_NAME if n == 1 else f"summary-{i}-of-{n}.json"
    fmt.write_json(job.out_dir / name, summary)
    summary["summary_path"] = str(job.out_dir / name)
    return summary


def _finished_shards(job: TokenizeJob) -> dict[int, dict]:
    """Metadata of the complete shards in the output directory; a shard of another run (other
    inputs or settings) is an error rather than silently mixed in."""
    done = {}
    for shard in range(job.num_shards):
        path = job.shard_path(shard)
        if not path.is_file():
            continue
        meta = fmt.read_shard_metadata(path)
        if meta.get("fingerprint") != job.fingerprint:
            raise LumosError(
                f"{path} was made from other inputs, settings or tokenizers than this run; "
                "use a new --out directory (or delete the old shards)"
            )
        done[shard] = meta
    return done


def _location(source: WorldSource | ManifestSource) -> dict:
    """Where the source lives (kept out of the fingerprint: moving a manifest is harmless)."""
    return {"path": str(source.path)} if isinstance(source, ManifestSource) else {}


def _write_index(job: TokenizeJob, toks: Tokenizers, metas: list[dict]) -> None:
    shards = [
        {
            "file": job.shard_path(m["shard"]).name,
            "samples": m["samples"],
            "images": m["images"],
            "videos": m["videos"],
            "failed": len(m["failures"]),
            "sha256": fmt.file_sha256(job.shard_path(m["shard"])),
        }
        for m in metas
    ]
    index = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "fingerprint": job.fingerprint,
        "num_samples": sum(s["samples"] for s in shards),
        "num_images": sum(s["images"] for s in shards),
        "num_videos": sum(s["videos"] for s in shards),
        "num_failed": sum(s["failed"] for s in shards),
        "shards": shards,
        "vocab": toks.vocab.to_dict(),
        **job.identities,
        "source": job.source.describe() | _location(job.source),
        "settings": {
            "samples_per_shard": job.samples_per_shard,
            "encode_batch": job.encode_batch,
        },
    }
    fmt.write_json(job.out_dir / fmt.INDEX_NAME, index)
