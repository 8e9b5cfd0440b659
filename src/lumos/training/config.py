"""Training configuration: dataclasses, YAML/dict loading with dotted overrides, and presets.

Sizes: image and video sizes are pixels ``(height, width)`` (multiples of 32); the latent grid
is ``height/8 x width/8`` tokens. ``video_frames`` counts latent frames (7 = 25 RGB frames).
Batch sizes count samples per process and micro-step; the global batch is
``micro_batch_size * grad_accumulation * world_size``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from lumos import validate
from lumos.errors import LumosError
from lumos.model.config import Geometry, LumosConfig

MAX_COUNT = 10**9  # upper bound of step counts, intervals and batch sizes
MAX_PIXELS = 8192  # upper bound of a training image side
MAX_LATENT_FRAMES = 64
LUMOS_CONFIG_FIELDS = [f.name for f in dataclasses.fields(LumosConfig)]  # model.overrides keys

# The allowed values of the string settings (one list each; the checks read them with get_args).
Precision = Literal["auto", "bf16", "fp32"]
Parallel = Literal["auto", "none", "ddp", "fsdp"]
LRSchedule = Literal["constant", "cosine"]
DataSource = Literal["synthetic", "shards"]
MaskingType = Literal["tube", "random", "diffusion_forcing"]
MaskSchedule = Literal["cosine", "linear", "arccos", "square"]  # = lumos.sequence.masking.SCHEDULES
# Training attention: auto (flex on CUDA, split elsewhere) | split | dense | flex
AttentionMode = Literal["auto", "split", "dense", "flex"]


def _choice(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise LumosError(f"{name} {value!r} unknown; choose one of {list(allowed)}")


@dataclass
class ModelConfig:
    """The model to train: a preset geometry from scratch, a Lumos checkpoint or a text LLM."""

    geometry: Geometry = "tiny"  # LumosConfig preset: tiny | 1b | 3b (MODEL_PRESETS)
    overrides: dict[str, Any] = field(default_factory=dict)  # LumosConfig fields over the preset
    # official | tiny (a 64-code test vocabulary) | data (the one in data.shards' index) | a
    # JSON file of Vocabulary fields
    vocabulary: str = "official"
    init_from: str | None = None  # a Lumos checkpoint directory to fine-tune (its geometry wins)
    # A text-only Llama-style checkpoint whose vocabulary is extended to the visual codebook
    # (lumos.training.llm_init)
    init_from_llm: str | None = None
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward

    def __post_init__(self) -> None:
        _choice("model.geometry", self.geometry, Geometry)
        if self.init_from and self.init_from_llm:
            raise LumosError("set model.init_from or model.init_from_llm, not both")
        validate.boolean("model.gradient_checkpointing", self.gradient_checkpointing)
        if not isinstance(self.overrides, dict):
            raise LumosError(f"model.overrides must be a mapping, got {self.overrides!r}")
        validate.known_keys("model.overrides", self.overrides, LUMOS_CONFIG_FIELDS)


@dataclass
class DataConfig:
    """Training and validation data. Synthetic data is built in memory at the sizes below;
    shards (written by ``lumos tokenize``, read by :class:`lumos.data.loader.TokenLoader`) bring
    their own sizes. Validation reads ``validation_shards`` (none: no validation) for shards and
    a held-out synthetic stream otherwise."""

    source: DataSource = "synthetic"  # synthetic | shards
    # Fraction of optimiser steps on image batches (1: text-to-image only, 0: video only),
    # spread evenly (lumos.data.kinds.step_kind)
    image_ratio: float = 0.5
    image_size: tuple[int, int] = (256, 448)  # synthetic images, pixels (height, width)
    video_size: tuple[int, int] = (256, 448)  # synthetic videos, pixels (height, width)
    video_frames: int = 7  # synthetic videos, latent frames
    fps: int = 12  # synthetic videos, frame rate written in the sequence header
    text_tokens: tuple[int, int] = (8, 32)  # synthetic prompt length range (inclusive)
    shards: list[str] = field(default_factory=list)  # token datasets (lumos tokenize --out)
    validation_shards: list[str] = field(default_factory=list)  # held-out token datasets
    window_samples: int = 2048  # loader: samples per shuffling window (memory)
    group_batches: int = 16  # loader: global batches per length-grouping chunk
    validation_batches: int = 4  # micro-batches per kind, in total over all processes

    def __post_init__(self) -> None:
        self.image_size = validate.pair("data.image_size", self.image_size, 32, MAX_PIXELS)
        self.video_size = validate.pair("data.video_size", self.video_size, 32, MAX_PIXELS)
        self.text_tokens = validate.pair("data.text_tokens", self.text_tokens, 1, 4096)
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if isinstance(self.validation_shards, str):
            self.validation_shards = [self.validation_shards]
        _choice("data.source", self.source, DataSource)
        validate.number("data.image_ratio", self.image_ratio, 0, 1)
        for name in ("image_size", "video_size"):
            h, w = getattr(self, name)
            if h % 32 or w % 32:
                raise LumosError(f"data.{name} {h}x{w} must be positive multiples of 32 pixels")
        validate.integer("data.video_frames", self.video_frames, 1, MAX_LATENT_FRAMES)
        validate.integer("data.fps", self.fps, 1, 240)
        lo, hi = self.text_tokens
        if lo > hi:
            raise LumosError(f"data.text_tokens must be (min, max) with min <= max, got {lo, hi}")
        for name in ("window_samples", "group_batches", "validation_batches"):
            validate.integer(f"data.{name}", getattr(self, name), 1, MAX_COUNT)


@dataclass
class MaskingConfig:
    """Corruption of training samples (docs/design.md, "AR-DF")."""

    type: MaskingType = "tube"  # tube (AR-DF) | random | diffusion_forcing
    schedule: MaskSchedule = "cosine"  # masking ratio of a uniform draw u
    min_rate: float = 0.7  # lower bound of the masking ratio
    text_drop: float = 0.1  # probability of dropping the text (classifier-free guidance)
    # Anti-drift: each sample draws r ~ U[0, history_noise) and replaces that fraction of the
    # visible visual tokens of every frame but its last with random visual tokens (0: off)
    history_noise: float = 0.0

    def __post_init__(self) -> None:
        _choice("masking.type", self.type, MaskingType)
        _choice("masking.schedule", self.schedule, MaskSchedule)
        validate.number("masking.min_rate", self.min_rate, 0, 1)
        validate.number("masking.text_drop", self.text_drop, 0, 1)
        validate.number("masking.history_noise", self.history_noise, 0, 1)


@dataclass
class OptimConfig:
    """AdamW with linear warmup then a constant or cosine LR. Weight decay applies to matrices
    (embeddings and projections), not to norms."""

    lr: float = 1e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.1  # AdamW weight decay of matrices
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    schedule: LRSchedule = "constant"  # after warmup: constant | cosine
    min_lr_ratio: float = 0.1  # cosine: final LR as a fraction of lr
    grad_clip: float = 4.0  # max global gradient norm (0: no clipping)
    # Fused AdamW kernel (one launch for all parameters): auto (on CUDA devices) | true | false
    fused: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        self.betas = validate.pair("optim.betas", self.betas, 0, 1, kind=float, hi_open=True)
        _choice("optim.schedule", self.schedule, LRSchedule)
        validate.number("optim.lr", self.lr, 0, 10, lo_open=True)
        validate.number("optim.weight_decay", self.weight_decay, 0)
        validate.number("optim.eps", self.eps, 0, 1, lo_open=True)
        validate.integer("optim.warmup_steps", self.warmup_steps, 0, MAX_COUNT)
        validate.number("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)
        validate.number("optim.grad_clip", self.grad_clip, 0)
        if self.fused != "auto" and not isinstance(self.fused, bool):
            raise LumosError(f"optim.fused {self.fused!r} unknown; choose one of auto, true, false")


# The decoder projections LoRA may adapt (nn.Linear layers of every block; lumos.training.lora).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """LoRA fine-tuning (lumos.training.lora, with PEFT: ``pip install lumos[lora]``). With
    ``rank`` > 0 every weight of the model is frozen and each target projection ``W`` of every
    decoder block gets a trained update ``(alpha / rank) * B @ A`` (``A`` [rank, in], ``B``
    [out, rank], ``B`` starting at zero); only the adapters are trained, checkpointed with the
    optimiser, and saved (OUTPUT/adapter)."""

    rank: int = 0  # adapter rank (0: off, every weight is trained)
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input while training
    # Decoder projections to adapt: any of LORA_TARGETS (default: attention and MLP, all seven)
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        validate.integer("lora.rank", self.rank, 0, 65536)
        validate.number("lora.alpha", self.alpha, 0, lo_open=True)
        validate.number("lora.dropout", self.dropout, 0, 1, hi_open=True)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not isinstance(self.target_modules, list) or not self.target_modules:
            raise LumosError(
                f"lora.target_modules must be a non-empty list of {list(LORA_TARGETS)}, "
                f"got {self.target_modules!r}"
            )
        for name in self.target_modules:
            validate.choice("lora.target_modules entry", name, list(LORA_TARGETS))
        if len(set(self.target_modules)) != len(self.target_modules):
            raise LumosError(f"lora.target_modules repeats a name: {self.target_modules}")


@dataclass
class TrainConfig:
    """Everything ``lumos train`` needs. Intervals are in optimiser steps (0 = never)."""

    name: str = "custom"  # run name (presets set theirs)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    steps: int = 1000  # total optimiser steps
    micro_batch_size: int = 1  # video sequences per process and micro-step
    image_micro_batch_size: int | None = None  # image sequences (None: micro_batch_size)
    grad_accumulation: int = 1  # micro-steps per optimiser step
    precision: Precision = "auto"  # auto (bf16 on GPUs with bf16, else fp32) | bf16 | fp32
    parallel: Parallel = "auto"  # auto (fsdp on several processes) | none | ddp | fsdp
    # auto (flex on CUDA, split elsewhere) | split (one SDPA call per frame run, no L x L mask;
    # the CPU path) | dense (a boolean L x L mask) | flex (one FlexAttention call per layer with
    # a block mask; CUDA only: FlexAttention has no CPU backward)
    attention: AttentionMode = "auto"
    # torch.compile each decoder layer (the first steps are slower while it compiles)
    compile: bool = False
    # fp32 matmuls on CUDA use TF32 tensor cores (torch.set_float32_matmul_precision("high"));
    # no effect on CPUs or on bf16 matmuls
    tf32: bool = True
    loss_chunk_size: int = 1024  # loss positions per [chunk, codebook] logits block
    seed: int = 0  # weights, data order and masks
    output_dir: str = "runs/lumos"  # metrics, checkpoints and the final model
    log_every: int = 1  # metrics row every N steps
    validate_every: int = 0  # validation every N steps
    checkpoint_every: int = 0  # training checkpoint every N steps
    keep_checkpoints: int = 3  # newest training checkpoints kept
    tensorboard: bool = True  # mirror metrics to OUTPUT/tensorboard (if installed)
    threads: int | None = None  # torch CPU threads per process (None: torch default)

    def __post_init__(self) -> None:
        _choice("precision", self.precision, Precision)
        _choice("parallel", self.parallel, Parallel)
        _choice("attention", self.attention, AttentionMode)
        for name in (
            "steps",
            "micro_batch_size",
            "grad_accumulation",
            "keep_checkpoints",
            "loss_chunk_size",
            "log_every",
        ):
            validate.integer(name, getattr(self, name), 1, MAX_COUNT)
        for name in ("validate_every", "checkpoint_every"):
            validate.integer(name, getattr(self, name), 0, MAX_COUNT)
        if self.image_micro_batch_size is not None:
            validate.integer("image_micro_batch_size", self.image_micro_batch_size, 1, MAX_COUNT)
        validate.seed("seed", self.seed)
        if self.threads is not None:
            validate.threads("threads", self.threads)
        validate.boolean("tensorboard", self.tensorboard)
        validate.boolean("compile", self.compile)
        validate.boolean("tf32", self.tf32)
        if not isinstance(self.name, str):
            raise LumosError(f"name must be text, got {self.name!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            raise LumosError(f"output_dir must be a directory path, got {self.output_dir!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return _build(cls, data, "")


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise LumosError(f"config section {prefix or 'root'} must be a mapping, got {data!r}")
    kinds = {f.name: f for f in dataclasses.fields(cls)}
    validate.known_keys(f"config section {prefix.rstrip('.') or 'root'}", data, kinds)
    kwargs = {}
    for key, value in data.items():
        sub = SECTIONS.get(key) if cls is TrainConfig else None
        kwargs[key] = (
            _build(sub, value, f"{key}.") if sub else _coerce(prefix + key, kinds[key].type, value)
        )
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise LumosError(f"bad config values in {prefix or 'root'}: {err}") from None


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """YAML reads ``3e-4`` as a string: convert strings for numeric fields."""
    if isinstance(value, str) and annotation.split(" ")[0] in ("float", "int"):
        try:
            return float(value) if annotation.startswith("float") else int(value)
        except ValueError:
            raise LumosError(f"{key}: {value!r} is not a number") from None
    return value


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "masking": MaskingConfig,
    "optim": OptimConfig,
    "lora": LoraConfig,
}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LumosError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise LumosError(f"override {item!r}: {p} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise LumosError(
                f"override {item!r}: value is not valid YAML ({err.problem})"
            ) from None
    return data


def load_config(
    path: str | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """A config from a preset and/or a YAML file (the file refines the preset), then overrides."""
    data = PRESETS[_preset_name(preset)]().to_dict() if preset else {}
    if path:
        file = Path(path)
        text = validate.read_text(file, "config file")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise LumosError(f"{file} is not valid YAML ({str(err).splitlines()[0]})") from None
        data = _merge(data, loaded)
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))


def _merge(base: dict, update: dict) -> dict:
    if not isinstance(update, dict):
        raise LumosError("a config file must hold a mapping of sections")
    out = dict(base)
    for k, v in update.items():
        out[k] = (
            _merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "overrides"
            else v
        )
    return out


def _preset_name(name: str) -> str:
    if name not in PRESETS:
        raise LumosError(f"unknown preset {name!r}; see `lumos train --list-presets`")
    return name


# ---------------------------------------------------------------------------------- presets


def tiny_cpu_t2i() -> TrainConfig:
    """A 2-layer model on 32 x 64 px synthetic images (4 x 8 latent tokens); a minute on a CPU."""
    return TrainConfig(
        name="tiny-cpu-t2i",
        model=ModelConfig(geometry="tiny", vocabulary="tiny"),
        data=DataConfig(image_ratio=1.0, image_size=(32, 64), text_tokens=(4, 12)),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine"),
        steps=200,
        micro_batch_size=8,
        precision="fp32",
        output_dir="runs/tiny-cpu-t2i",
        validate_every=50,
        checkpoint_every=50,
    )


def tiny_cpu_joint() -> TrainConfig:
    """Tiny joint image/video training: 3 latent frames of 4 x 8 tokens, alternating steps."""
    cfg = tiny_cpu_t2i()
    cfg.name, cfg.output_dir = "tiny-cpu-joint", "runs/tiny-cpu-joint"
    cfg.data = DataConfig(
        image_ratio=0.5,
        image_size=(32, 64),
        video_size=(32, 64),
        video_frames=3,
        fps=4,
        text_tokens=(4, 12),
    )
    return cfg


def _official(geometry: str, stage: str, size: tuple[int, int]) -> TrainConfig:
    """The published recipe (docs/design.md, "Training"): bf16, FSDP full shard, activation checkpointing, AdamW
    (0.9, 0.95) wd 0.1, clip 4, short warmup then constant LR, tube masks min rate 0.7, text
    drop 0.1. Stage 1 is text-to-image at 256p; stage 2 alternates image and video batches,
    first at 256p (from stage 1), then at 384p (from stage 2 at 256p). Batch sizes and step
    counts are not published: ours are per-GPU choices for 80 GB cards."""
    t2i = stage == "stage1-t2i"
    name = f"lumos-{geometry}-{stage}-{size[0]}p"
    previous = {
        (256, 448): f"runs/lumos-{geometry}-stage1-t2i-256p/model",
        (384, 672): f"runs/lumos-{geometry}-stage2-joint-256p/model",
    }
    return TrainConfig(
        name=name,
        model=ModelConfig(
            geometry=geometry,
            gradient_checkpointing=True,
            init_from=None if t2i else previous[size],
        ),
        data=DataConfig(
            source="shards",
            shards=[f"data/tokens-{size[0]}p"],  # `lumos tokenize` output; override
            image_ratio=1.0 if t2i else 0.5,
            image_size=size,
            video_size=size,
            video_frames=7,
            fps=12,
        ),
        optim=OptimConfig(lr=1e-4 if t2i else 5e-5, warmup_steps=500, schedule="constant"),
        steps=100_000,
        micro_batch_size=4 if size[0] <= 256 else 2,
        precision="bf16",
        parallel="fsdp",
        output_dir=f"runs/{name}",
        log_every=10,
        validate_every=1000,
        checkpoint_every=1000,
    )


PRESETS = {
    "tiny-cpu-t2i": tiny_cpu_t2i,
    "tiny-cpu-joint": tiny_cpu_joint,
    **{
        f"lumos-{g}-{stage}-{size[0]}p": functools.partial(_official, g, stage, size)
        for g in ("1b", "3b")
        for stage, size in (
            ("stage1-t2i", (256, 448)),
            ("stage2-joint", (256, 448)),
            ("stage2-joint", (384, 672)),
        )
    },
}


def describe_preset(name: str) -> str:
    """One line about a preset."""
    make = PRESETS[_preset_name(name)]
    if isinstance(make, functools.partial):
        geometry, stage, (h, w) = make.args
        what = "text-to-image" if stage == "stage1-t2i" else "joint image/video, alternating"
        return f"Lumos-1 {geometry.upper()} {stage.split('-')[0]}: {what} at {w}x{h} px, bf16 FSDP"
    return (make.__doc__ or "").strip().splitlines()[0]
