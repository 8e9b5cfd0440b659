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
* ``--shard i/N`` runs the shards ``j`` with ``j % N == i``. Under ``torchrun`` (a
  ``torch.distributed`` process group of ``W`` processes), rank ``r`` runs the shards of that
  part with ``j % (N * W) == i + r * N``: the ranks split the part between them with no flag per
  machine (:func:`rank_part`). ``--workers K`` runs a process's shards in K spawned processes,
  each owning whole shards.
* The visual tokenizer runs on ``device`` (the CLI: the rank's GPU ``cuda:LOCAL_RANK`` when
  CUDA is present, else the CPU) in ``dtype`` (bf16 on GPUs, fp32 on the CPU; our own small
  tokenizer always runs in fp32). Inside a shard, samples are read in chunks of
  ``encode_batch`` in source order, grouped by shape and encoded one batch per shape, so a
  shard's bytes depend only on the inputs and the settings (the device type and dtype among
  them), not on worker or rank count or interruptions. Every process computes with one intra-op
  thread and deterministic cuDNN kernels without TF32. The same bytes need the same kind of
  processor: float rounding inside the tokenizer differs between CPU instruction sets and
  between GPU models.
* A shard is written to a temporary name and renamed when complete; a rerun skips complete
  shards whose fingerprint matches and redoes the rest. ``index.json`` is written last, once,
  by the run (under torchrun: by rank 0, after every rank has finished) that finds every shard
  present; so running the command without ``--shard`` on the union of the machines' outputs
  only writes the index.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
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
# The only arithmetic before GPU encoding; left out of the fingerprint, so that the outputs made
# then keep their fingerprints and still resume.
CPU_FP32 = {"encode_device": "cpu", "encode_dtype": "float32"}


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
                ManifestEntry(
                    f"row-{n}", error=f"manifest row {n}: {wrong[0]} is a {kind}, not text"
                )
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
    """Everything a worker needs to tokenise shards. ``device`` and ``dtype``: where and in what
    precision the visual tokenizer runs (the dtype it really runs in, see :func:`make_job`)."""

    source: WorldSource | ManifestSource
    out_dir: Path
    visual_tokenizer: Path
    text_tokenizer: Path
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    encode_batch: int = DEFAULT_ENCODE_BATCH
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
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
    def encoding(self) -> dict:
        """The visual tokenizer's arithmetic: device type (not index: every GPU of a kind gives
        the same bytes) and dtype."""
        return {
            "encode_device": torch.device(self.device).type,
            "encode_dtype": str(self.dtype).removeprefix("torch."),
        }

    @property
    def settings(self) -> dict:
        """What determines the shards' content (tokenizers by hash, not path; the encoding
        unless it is :data:`CPU_FP32`)."""
        return {
            "format": fmt.FORMAT,
            "version": fmt.VERSION,
            "source": self.source.describe(),
            "samples_per_shard": self.samples_per_shard,
            "encode_batch": self.encode_batch,
            **({} if self.encoding == CPU_FP32 else self.encoding),
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


def load_tokenizers(
    visual_path: Path,
    text_path: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tokenizers:
    """Both tokenizers; the visual one on ``device`` in ``dtype`` where it supports it (see
    :func:`lumos.tokenizers.load_visual_tokenizer`)."""
    visual = load_visual_tokenizer(visual_path, device=device, dtype=dtype)
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
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[TokenizeJob, Tokenizers]:
    """Validate the settings against the tokenizers and build the job (loads both tokenizers,
    the visual one on ``device`` in ``dtype``). The job records the dtype the visual tokenizer
    really runs in: that of its weights (our own small tokenizer stays in float32)."""
    if len(source) < 1:
        raise LumosError("nothing to tokenize: the source has no samples (use --count >= 1)")
    if samples_per_shard < 1 or encode_batch < 1:
        raise LumosError("--samples-per-shard and --encode-batch must be >= 1")
    visual_path, text_path = Path(visual_tokenizer), Path(text_tokenizer)
    toks = load_tokenizers(visual_path, text_path, device, dtype)
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
    placed_on, placed_in = _placement(toks.visual)
    job = TokenizeJob(
        source,
        Path(out_dir),
        visual_path,
        text_path,
        samples_per_shard,
        encode_batch,
        device=placed_on,
        dtype=placed_in,
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


def _placement(visual: VisualTokenizer) -> tuple[str, torch.dtype]:
    """Device and dtype of the visual tokenizer's floating weights (CPU, float32 if none)."""
    for p in visual.parameters():
        if p.is_floating_point():
            return str(p.device), p.dtype
    return "cpu", torch.float32


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
        videos = {i: r.video for i, (r, _) in loaded.items()}
        codes = _encode_grouped(toks.visual, videos, job.device, job.dtype)
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


def _encode_grouped(
    visual: VisualTokenizer,
    videos: dict[int, torch.Tensor],
    device: str | torch.device,
    dtype: torch.dtype,
) -> dict[int, np.ndarray]:
    """Encode videos (float [3, T, H, W] in [-1, 1], by source index) grouped by shape: one
    encoder call per shape, in index order, its batch moved to ``device`` in ``dtype`` ->
    int32 codes [t, h, w] on the CPU."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in videos.items():
        groups.setdefault(tuple(v.shape), []).append(i)
    out = {}
    for ids in groups.values():
        batch = torch.stack([videos[i] for i in ids]).to(device, dtype)
        codes = visual.encode(batch).cpu().numpy().astype(np.int32)
        for i, c in zip(ids, codes, strict=True):
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


@contextlib.contextmanager
def _fixed_arithmetic() -> Iterator[None]:
    """One intra-op thread and deterministic cuDNN kernels without TF32: the same arithmetic in
    every process (in-process, worker or rank), hence the same bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.cudnn.flags(
            enabled=True, benchmark=False, deterministic=True, allow_tf32=False
        ):
            yield
    finally:
        torch.set_num_threads(threads)


def _init_worker(job: TokenizeJob, progress: mp.Queue, parent: int) -> None:
    _WORKER.update(
        job=job,
        toks=load_tokenizers(job.visual_tokenizer, job.text_tokenizer, job.device, job.dtype),
        progress=progress,
        parent=parent,
    )


def _worker_shard(shard: int) -> dict:
    w = _WORKER

    def report(n: int) -> None:
        if os.getppid() != w["parent"]:  # the parent was killed: stop instead of orphaning
            os._exit(1)
        w["progress"].put(n)

    with _fixed_arithmetic():
        return tokenize_shard(w["job"], shard, w["toks"], report)


def _run_in_process(job: TokenizeJob, todo: list[int], toks: Tokenizers, bar: tqdm) -> None:
    with _fixed_arithmetic():
        for shard in todo:
            tokenize_shard(job, shard, toks, bar.update)


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


# ----------------------------------------------------------------------------- ranks


def process_group() -> tuple[int, int]:
    """(rank, world size) of this process's ``torch.distributed`` group ((0, 1) outside one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_part(part: tuple[int, int], rank: int, world: int) -> tuple[int, int]:
    """The share of ``part`` = (i, N) that rank ``rank`` of ``world`` runs, as a part of its own:
    (i + rank * N, N * world). The ranks' shares are disjoint and together are the part, since
    ``j % (N * world) == i + rank * N`` exactly when ``j % N == i`` and ``(j // N) % world ==
    rank``."""
    i, n = part
    return i + rank * n, n * world


def _gather_to_first(item: dict, rank: int, world: int) -> list[dict] | None:
    """Every rank's ``item`` in rank order on rank 0 (None elsewhere); waits for all ranks."""
    if world == 1:
        return [item]
    items: list | None = [None] * world if rank == 0 else None
    dist.gather_object(item, items, dst=0)
    return items


def _from_first(item: dict | None, world: int) -> dict:
    """Rank 0's ``item`` on every rank."""
    if world == 1:
        return item
    box = [item]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- a run


def pretokenize(
    job: TokenizeJob,
    toks: Tokenizers,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict:
    """Tokenise the shards of ``part`` = (i, N) not yet done, then write the index if every
    shard is present. In a ``torch.distributed`` group (``torchrun``) every rank calls this
    with the same arguments and runs its share of the part (:func:`rank_part`); rank 0 writes
    the summary and the index once all ranks have finished. Returns the run summary (also
    written to ``summary.json``, or ``summary-i-of-N.json`` for a part), the same on every
    rank; only rank 0 shows progress."""
    i, n = part
    if not (n >= 1 and 0 <= i < n):
        raise LumosError(f"--shard {i}/{n}: use i/N with 0 <= i < N")
    if workers < 1:
        raise LumosError(f"--workers must be >= 1, got {workers}")
    rank, world = process_group()
    mine, every = rank_part(part, rank, world)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    assigned = [j for j in range(job.num_shards) if j % every == mine]
    done = _finished_shards(job)
    for shard in assigned:  # leftovers of a killed run
        for tmp in job.out_dir.glob(f".{job.shard_path(shard).name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    todo = [j for j in assigned if j not in done]
    total = sum(len(job.shard_range(j)) for j in todo)
    began = time.perf_counter()
    desc = "tokenize" if world == 1 else f"tokenize, rank 0 of {world}"
    with tqdm(total=total, unit="sample", desc=desc, disable=not progress or rank != 0) as bar:
        if workers == 1 or len(todo) <= 1:
            _run_in_process(job, todo, toks, bar)
        else:
            _run_pool(job, todo, min(workers, len(todo)), bar)
    mine_done = {
        "shards_tokenized": len(todo),
        "samples_tokenized": total,
        "seconds": time.perf_counter() - began,
        "metas": list(_finished_shards(job, assigned).values()),
    }
    ranks = _gather_to_first(mine_done, rank, world)
    summary = None
    if rank == 0:
        summary = _summarise(job, toks, part, ranks)
    return _from_first(summary, world)


def _summarise(
    job: TokenizeJob, toks: Tokenizers, part: tuple[int, int], ranks: list[dict]
) -> dict:
    """The run's summary from every rank's report; writes it, and the index when every shard is
    present (called once, after all ranks have finished)."""
    i, n = part
    metas = sorted((m for r in ranks for m in r["metas"]), key=lambda m: m["shard"])
    tokenized = sum(r["shards_tokenized"] for r in ranks)
    total = sum(r["samples_tokenized"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    done = _finished_shards(job)
    summary = {
        "fingerprint": job.fingerprint,
        "part": f"{i}/{n}",
        "processes": len(ranks),
        "shards_total": job.num_shards,
        "shards_assigned": len(metas),
        "shards_tokenized": tokenized,
        "shards_skipped": len(metas) - tokenized,
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


def _finished_shards(job: TokenizeJob, shards: Iterable[int] | None = None) -> dict[int, dict]:
    """Metadata of the complete shards in the output directory (of ``shards``, default all); a
    shard of another run (other inputs or settings) is an error rather than silently mixed in."""
    done = {}
    for shard in range(job.num_shards) if shards is None else shards:
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
            **job.encoding,
        },
    }
    fmt.write_json(job.out_dir / fmt.INDEX_NAME, index)
