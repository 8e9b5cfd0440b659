"""The training loop (``lumos train``): AR-DF objective, AdamW, DDP/FSDP2, exact resume.

One optimiser step = ``grad_accumulation`` micro-batches per process, all of one kind (image or
video; kinds alternate by ``data.image_ratio``). The loss of a step is the mean over every scored
position of the global batch: each micro-batch's summed loss is scaled by
``world_size / global_count`` (the count is known from the collated masks before any forward)
and the data-parallel wrappers average gradients. Masks are drawn from a generator seeded by
``(seed, step, global micro-batch index)``, so W processes with accumulation A see the same
batches and masks as one process with accumulation W*A, and a resumed run the same as an
uninterrupted one.

Outputs under ``output_dir``: ``metrics.jsonl`` (one JSON object per logged step or
validation), ``tensorboard/`` (when TensorBoard is installed: ``pip install lumos[tensorboard]``),
``checkpoints/step-*/``, and ``model/`` (the final weights in checkpoint-directory format,
loadable with ``LumosModel.from_pretrained``), or with ``lora.rank`` > 0 ``adapter/`` instead
(only the trained LoRA adapter: ``lumos.training.lora``).

A non-finite loss or gradient norm stops the run with an error naming the step and the last
checkpoint written. Resuming picks the newest intact checkpoint (damaged newer ones are
skipped with a warning) and refuses a checkpoint written with other model or data settings.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from lumos import validate
from lumos.atomic import write_text
from lumos.data.kinds import KINDS, kinds_used, step_kind
from lumos.errors import LumosError
from lumos.model.checkpoint import read_config
from lumos.model.config import MODEL_PRESETS, LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.vocab import Vocabulary
from lumos.training import distributed, lora
from lumos.training.checkpointing import (
    DamagedCheckpoint,
    full_model_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from lumos.training.config import ModelConfig, TrainConfig
from lumos.training.objective import ARDFObjective, Batch, LossOutput, collate, resolve_attention
from lumos.training.sharded_load import WeightSlots, init_weights, load_weights, weight_slots
from lumos.training.sources import BatchSource, MixedSource, SyntheticSource, sample_seed

MAX_FRAMES = 64  # per-frame statistics are kept for latent frames 0 .. MAX_FRAMES - 1


@dataclass
class StepStats:
    """Sums logged for a step or a validation pass: the summed loss, the input tokens, and per
    latent frame (0 .. MAX_FRAMES - 1) the summed loss and the number of scored positions."""

    loss_sum: torch.Tensor  # scalar
    tokens: torch.Tensor  # scalar
    frame_loss_sum: torch.Tensor  # [MAX_FRAMES]
    frame_count: torch.Tensor  # [MAX_FRAMES]

    @classmethod
    def zeros(cls, device: torch.device) -> StepStats:
        return cls(*(torch.zeros(n, device=device) for n in ((), (), MAX_FRAMES, MAX_FRAMES)))

    @classmethod
    def of(cls, out: LossOutput, batch: Batch) -> StepStats:
        """The statistics of one micro-batch's forward."""
        stats = cls.zeros(out.frame_loss_sum.device)
        n = min(len(out.frame_loss_sum), MAX_FRAMES)
        stats.loss_sum += out.loss_sum.detach().float()
        stats.tokens += batch.num_tokens
        stats.frame_loss_sum[:n] = out.frame_loss_sum[:n]
        stats.frame_count[:n] = out.frame_count[:n]
        return stats

    def __iadd__(self, other: StepStats) -> StepStats:
        for name in ("loss_sum", "tokens", "frame_loss_sum", "frame_count"):
            getattr(self, name).add_(getattr(other, name))
        return self

    def all_reduce(self, ctx: distributed.DistContext) -> StepStats:
        """Sum over processes in place, in one collective."""
        packed = ctx.all_reduce(
            torch.cat(
                [self.loss_sum[None], self.tokens[None], self.frame_loss_sum, self.frame_count]
            )
        )
        self.loss_sum, self.tokens = packed[0], packed[1]
        self.frame_loss_sum, self.frame_count = packed[2:].split(MAX_FRAMES)
        return self

    def summary(self, count: torch.Tensor | float) -> dict:
        """``loss`` (mean over the ``count`` scored positions), ``tokens`` and ``frame_loss``
        (mean per latent frame up to the last one scored; None for a frame without positions)."""
        frame_sum, frame_count = self.frame_loss_sum.cpu(), self.frame_count.cpu()
        used = int((frame_count > 0).nonzero().max()) + 1 if bool((frame_count > 0).any()) else 0
        frames = [
            float(s / c) if c > 0 else None
            for s, c in zip(frame_sum[:used], frame_count[:used], strict=True)
        ]
        return {
            "loss": float(self.loss_sum) / max(float(count), 1.0),
            "tokens": int(self.tokens),
            "frame_loss": frames,
        }


def tiny_vocabulary() -> Vocabulary:
    """A small vocabulary for CPU experiments: 256 text ids + a 64-code visual codebook."""
    return Vocabulary.compact(text_size=256, codebook_size=64, num_ints=40)


def resolve_vocabulary(spec: str, shards: Sequence[str]) -> Vocabulary:
    """``official``, ``tiny``, ``data`` (the vocabulary recorded in the first token dataset of
    ``shards``) or a JSON file of :class:`Vocabulary` fields."""
    if spec == "official":
        return Vocabulary.official()
    if spec == "data":
        if not shards:
            raise LumosError("model.vocabulary data needs data.shards (token datasets)")
        from lumos.data.shards import read_index

        return read_index(shards[0]).vocab
    if spec == "tiny":
        return tiny_vocabulary()
    path = Path(spec)
    if not path.is_file():
        raise LumosError(
            f"model.vocabulary {spec!r} is neither official, tiny, data nor a JSON file"
        )
    data = validate.read_json_object(path, "model.vocabulary")
    try:
        return Vocabulary.from_dict(data)
    except (TypeError, ValueError) as err:
        raise LumosError(f"model.vocabulary {path}: ids must be integers ({err})") from None


def model_config(cfg: ModelConfig, shards: Sequence[str] = ()) -> LumosConfig:
    """The geometry to train: a preset, a Lumos checkpoint's (its geometry wins) or a text
    LLM's. ``shards``: the training token datasets (for ``vocabulary: data``)."""
    if cfg.init_from:
        return read_config(cfg.init_from)
    vocab = resolve_vocabulary(cfg.vocabulary, shards)
    if cfg.init_from_llm:
        from lumos.training.llm_init import llm_config

        return llm_config(cfg.init_from_llm, vocab, cfg.overrides)
    return MODEL_PRESETS[cfg.geometry](vocab, **cfg.overrides)


def build_model(cfg: ModelConfig, shards: Sequence[str] = ()) -> LumosModel:
    """The model to train, on the ``meta`` device: shapes only, no memory. Shard it (FSDP),
    give it storage (``to_empty``), then :func:`fill_weights` (docs/design.md, "Loading
    order")."""
    with torch.device("meta"):
        model = LumosModel(model_config(cfg, shards))
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model.train()


def fill_weights(model: LumosModel, slots: WeightSlots, cfg: ModelConfig, seed: int) -> None:
    """Write this process's part of every weight in ``slots`` (``weight_slots`` of a
    :func:`build_model` result, after sharding and ``to_empty``): the checkpoint's tensors
    (``init_from``), the LLM's (``init_from_llm``) or fresh ones; then the model's buffers.
    Fresh values do not depend on the number of processes (``training/sharded_load.py``)."""
    if cfg.init_from:
        load_weights(slots, cfg.init_from)
    elif cfg.init_from_llm:
        from lumos.training.llm_init import load_llm_weights

        load_llm_weights(slots, model.config, cfg.init_from_llm, seed)
    else:
        init_weights(slots, seed, model.config.initializer_range)
    model.init_buffers()
    model.rope_axes = model.rope_axes.to(model.lm_head.weight.device)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier after ``step`` optimiser steps: linear warmup, then constant or cosine."""
    opt = cfg.optim
    if step < opt.warmup_steps:
        return (step + 1) / opt.warmup_steps
    if opt.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - opt.warmup_steps) / max(1, cfg.steps - opt.warmup_steps))
    return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_data(cfg: TrainConfig) -> None:
    """Fail early (before building a large model) on a data section that cannot work."""
    if cfg.data.source == "shards" and not cfg.data.shards:
        raise LumosError("data.source is shards but data.shards is empty; set data.shards=[DIR]")


def make_source(
    cfg: TrainConfig, vocab: Vocabulary, ctx: distributed.DistContext, split: str = "train"
) -> BatchSource | dict[str, BatchSource]:
    """The training source (``split="train"``) or the validation sources per kind (``"val"``,
    empty when there is no validation data)."""
    data, train = cfg.data, split == "train"
    image_batch = cfg.image_micro_batch_size or cfg.micro_batch_size
    if data.source == "shards":
        from lumos.data.loader import TokenLoader

        paths = data.shards if train else data.validation_shards
        if not paths:
            return {}

        def loader(image_ratio: float) -> TokenLoader:
            source = TokenLoader(
                paths,
                cfg.micro_batch_size,
                image_batch_size=image_batch,
                image_ratio=image_ratio,
                seed=cfg.seed,
                rank=ctx.rank,
                world_size=ctx.world_size,
                grad_accumulation=cfg.grad_accumulation if train else 1,
                window_samples=data.window_samples,
                group_batches=data.group_batches,
            )
            if source.vocab != vocab:
                raise LumosError(
                    f"token data {paths[0]} was tokenised with another vocabulary than the "
                    "model's; tokenise with the model's tokenizers or pick the matching model"
                )
            return source

        if train:
            return loader(data.image_ratio)
        return {kind: loader(float(kind == "image")) for kind in kinds_used(data.image_ratio)}

    def synthetic(kind: str) -> SyntheticSource:
        return SyntheticSource(
            vocab,
            kind,
            data.image_size if kind == "image" else data.video_size,
            data.video_frames,
            data.fps,
            data.text_tokens,
            image_batch if kind == "image" else cfg.micro_batch_size,
            seed=cfg.seed,
            split=split,
            rank=ctx.rank,
            world_size=ctx.world_size,
            accumulation=cfg.grad_accumulation if train else 1,
        )

    sources = {kind: synthetic(kind) for kind in kinds_used(data.image_ratio)}
    return MixedSource(sources, data.image_ratio, cfg.grad_accumulation) if train else sources


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trained parameters (frozen ones left out): weight decay on matrices (embeddings,
    projections, head, LoRA factors); none on norms."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "norm" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "norm" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    ``source`` (a :class:`BatchSource` yielding this process's micro-batches, kinds following
    :func:`step_kind`) replaces the configured training data; ``validation_sources`` (a callable
    returning fresh per-kind sources) the validation data.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        source: BatchSource | None = None,
        validation_sources: Callable[[], dict[str, BatchSource]] | None = None,
        resume: bool = True,
    ) -> None:
        self.cfg = cfg
        self.out = validate.output_path(
            cfg.output_dir, "dir", [*cfg.data.shards, *cfg.data.validation_shards], "output_dir"
        )
        starts = [cfg.model.init_from, cfg.model.init_from_llm]
        validate.output_path(
            self.out / "model", "dir", starts, "the final model (output_dir/model)"
        )
        if cfg.lora.rank:
            validate.output_path(self.out / "adapter", "dir", starts, "output_dir/adapter")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.ctx = distributed.init_distributed()
        self.tensorboard = cfg.tensorboard and tensorboard_available()
        if cfg.tensorboard and not self.tensorboard:
            self.log("TensorBoard is not installed: logging to metrics.jsonl only")
        self.dtype = distributed.resolve_precision(cfg.precision, self.ctx.device)
        self.parallel = distributed.resolve_parallel(cfg.parallel, self.ctx)
        if source is None:
            check_data(cfg)

        torch.manual_seed(cfg.seed)  # the global generator (LoRA's A, dropout) starts from the seed
        model = build_model(cfg.model, cfg.data.shards)  # meta device: no memory yet
        weights = weight_slots(model)  # the model's own weights, named as in checkpoints
        # LoRA: adapters injected before sharding, base frozen (PEFT's wrapper kept for saving)
        self.adapted = None
        if cfg.lora.rank:
            self.adapted = lora.apply_lora(model, cfg.lora, cfg.model.init_from)
        self.num_parameters = model.num_parameters()
        self.num_trained = lora.trainable_count(model)
        self.vocab = model.vocab
        self.model_config = model.config
        if cfg.compile:
            for layer in model.model.layers:
                layer.compile()
        self.attention = resolve_attention(cfg.attention, self.ctx.device)
        objective = ARDFObjective(model, cfg.loss_chunk_size, self.attention)
        # Shard the meta model, give each process storage for its shards only, then load or
        # initialise just those (docs/design.md, "Loading order"); DDP wraps the filled model.
        if self.parallel == "fsdp":
            distributed.shard(objective, list(model.model.layers), self.dtype)
        objective.to_empty(device=self.ctx.device)
        fill_weights(model, weights, cfg.model, cfg.seed)
        if self.adapted is not None:  # adapters were added on the meta device: values now
            lora.init_adapters(model, cfg.seed)
        self.module = distributed.replicate(objective, self.parallel, self.ctx)
        if cfg.tf32 and self.ctx.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # fp32 matmuls on TF32 tensor cores
        fused = cfg.optim.fused is True or (
            cfg.optim.fused == "auto" and self.ctx.device.type == "cuda"
        )
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, cfg.optim.weight_decay),
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
            fused=fused,
        )
        self.source = source or make_source(cfg, self.vocab, self.ctx, "train")
        self.validation_sources = validation_sources or functools.partial(
            make_source, cfg, self.vocab, self.ctx, "val"
        )
        self.step = 0
        self.writer = None
        if resume:
            self.resume()

    # ---- state -------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore the newest intact checkpoint of ``output_dir`` (none: start at step 0).
        Damaged checkpoints are skipped with a warning; one written with other model or data
        settings is an error."""
        found = list_checkpoints(self.out / "checkpoints")
        for path in reversed(found):
            try:
                check_resumable(read_trainer_state(path)["config"], self.cfg, path)
                self.restore(path)
                return
            except DamagedCheckpoint as err:
                self.log(f"warning: {err}; trying the previous checkpoint")
        if found:
            raise LumosError(
                f"no intact checkpoint in {self.out / 'checkpoints'} ({len(found)} damaged); "
                "rerun with --no-resume to start over"
            )

    def restore(self, path: Path) -> None:
        trainer, rank = load_checkpoint(path, self.module, self.optimizer, self.ctx)
        self.step = int(trainer["step"])
        self.source.load_state_dict(rank["source"])
        set_rng_state(rank["rng"], self.ctx.device)
        if self.ctx.is_main:
            self.log(f"resumed from {path} at step {self.step}")
            self._truncate_metrics()

    def save(self) -> Path:
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            self.module,
            self.optimizer,
            {
                "step": self.step,
                "config": self.cfg.to_dict(),
            },
            {
                "source": self.source.state_dict(),
                "rng": rng_state(self.ctx.device),
            },
            self.ctx,
            self.cfg.keep_checkpoints,
        )

    def export(self, path: Path) -> None:
        """Final weights as a checkpoint directory (collective under FSDP); with LoRA only the
        adapter, to ``output_dir/adapter`` (``path`` unused)."""
        if self.adapted is not None:
            state = lora.trained_state(self.module)
            if self.ctx.is_main:
                state = {k.removeprefix("model."): v for k, v in state.items()}
                lora.save_adapter(self.adapted, self.out / "adapter", state)
            return
        state = full_model_state(self.module)
        if self.ctx.is_main:
            with torch.device("meta"):
                model = LumosModel(self.model_config)
            model.load_state_dict(
                {k.removeprefix("model."): v for k, v in state.items()}, assign=True
            )
            model.save_pretrained(path)

    # ---- logging -----------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(f"lumos train: {message}", file=sys.stderr)

    def _truncate_metrics(self) -> None:
        """Drop the rows after the resumed step (and a line cut short by a kill)."""
        file = self.out / "metrics.jsonl"
        if file.is_file():
            rows = []
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                step = row.get("step") if isinstance(row, dict) else None
                if isinstance(step, int) and step <= self.step:
                    rows.append(line)
            write_text(file, "".join(r + "\n" for r in rows))

    def record(self, row: dict) -> None:
        """Append a metrics row (rank 0) and mirror its scalars to TensorBoard."""
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe(row), allow_nan=False) + "\n")
        if self.tensorboard:
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency

                self.writer = SummaryWriter(self.out / "tensorboard", purge_step=self.step)
            for key, value in row.items():
                # Training losses per kind (image steps have one frame); the rest as named.
                if key in ("loss", "frame_loss"):
                    key = f"train/{row['kind']}/{key}"
                elif not key.startswith("val/"):
                    key = f"train/{key}"
                if isinstance(value, list):
                    for f, v in enumerate(value):
                        if v is not None:
                            self.writer.add_scalar(f"{key}/frame_{f}", v, row["step"])
                elif isinstance(value, (int, float)) and key != "train/step":
                    self.writer.add_scalar(key, value, row["step"])

    # ---- steps -------------------------------------------------------------------------
    def batches(self, step: int) -> list[Batch]:
        """This process's micro-batches for ``step``, masks seeded by their global index."""
        cfg, ctx = self.cfg, self.ctx
        out = []
        for a in range(cfg.grad_accumulation):
            index = ctx.rank * cfg.grad_accumulation + a
            gen = torch.Generator().manual_seed(sample_seed(cfg.seed, 0, step, index))
            out.append(collate(next(self.source), self.vocab, cfg.masking, gen))
        return out

    def forward(self, batch: Batch):
        batch = batch.to(self.ctx.device)
        with distributed.autocast(self.parallel, self.ctx, self.dtype):
            return self.module(
                batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask
            )

    def train_step(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        kind = step_kind(self.step, cfg.data.image_ratio)
        batches = self.batches(self.step)
        count = ctx.all_reduce(
            torch.tensor([float(sum(b.num_loss_tokens for b in batches))], device=ctx.device)
        )
        scale = ctx.world_size / max(float(count), 1.0)
        stats = StepStats.zeros(ctx.device)
        self.module.train()
        for a, batch in enumerate(batches):
            with distributed.gradient_sync(self.module, self.parallel, a == len(batches) - 1):
                out = self.forward(batch)
                (out.loss_sum * scale).backward()
            stats += StepStats.of(out, batch)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = cfg.optim.lr * lr_factor(self.step, cfg)  # a function of the step: no state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "kind": kind,
            "lr": lr,
            "grad_norm": float(grad_norm),
            **stats.all_reduce(ctx).summary(count),
        }

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean loss and loss per latent frame on fixed validation batches, per kind, with a
        clean history (no ``masking.history_noise``): the same batches whatever the noise."""
        cfg, ctx = self.cfg, self.ctx
        masking = replace(cfg.masking, history_noise=0.0)
        self.module.eval()
        result = {}
        for kind, source in self.validation_sources().items():  # fresh: the same batches
            stats = StepStats.zeros(ctx.device)
            count = 0
            # Global validation micro-batch c*W + rank; every process runs the same number of
            # forwards (FSDP gathers collectively), the ones past the total are not counted.
            for c in range(math.ceil(cfg.data.validation_batches / ctx.world_size)):
                index = c * ctx.world_size + ctx.rank
                seed = sample_seed(cfg.seed, 1, KINDS.index(kind), index)
                batch = collate(next(source), self.vocab, masking, torch.Generator().manual_seed(seed))
                out = self.forward(batch)
                if index < cfg.data.validation_batches:
                    stats += StepStats.of(out, batch)
                    count += out.count
            total = ctx.all_reduce(torch.tensor([float(count)], device=ctx.device))
            summary = stats.all_reduce(ctx).summary(total)
            result[f"val/{kind}/loss"] = summary["loss"]
            result[f"val/{kind}/frame_loss"] = summary["frame_loss"]
        self.module.train()
        return result

    def fit(self) -> list[dict]:
        """Train until ``cfg.steps``; returns the metrics rows of the steps run here."""
        cfg = self.cfg
        rows = []
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
            desc="train",
        )
        if self.ctx.is_main:
            self.log(
                f"{self.model_config.num_hidden_layers} layers, hidden {self.model_config.hidden_size}, "
                f"{self.num_parameters:,} parameters ({self.num_trained:,} trained), "
                f"{self.ctx.world_size} process(es), parallel {self.parallel}, {str(self.dtype).removeprefix('torch.')}, "
                f"device {self.ctx.device}, attention {self.attention}"
                + (", compiled layers" if self.cfg.compile else "")
            )
        while self.step < cfg.steps:
            start = time.perf_counter()
            metrics = self.train_step()
            elapsed = time.perf_counter() - start
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                bar.close()
                raise LumosError(self._divergence(metrics))
            self.step += 1
            metrics = {"step": self.step, **metrics, "tokens_per_s": metrics["tokens"] / elapsed}
            rows.append(metrics)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.record(metrics)
            bar.update(1)
            bar.set_postfix(
                loss=f"{metrics['loss']:.4f}",
                lr=f"{metrics['lr']:.2e}",
                tok_s=f"{metrics['tokens_per_s']:.0f}",
            )
            if cfg.validate_every and self.step % cfg.validate_every == 0:
                val = self.validate()
                self.record({"step": self.step, **val})
                self.log(f"step {self.step}: " + format_validation(val))
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        self.export(self.out / "model")
        if self.writer is not None:
            self.writer.close()
        return rows

    def _divergence(self, metrics: dict) -> str:
        last = latest_checkpoint(self.out / "checkpoints")
        return (
            f"training diverged at step {self.step + 1}: loss {metrics['loss']}, gradient norm "
            f"{metrics['grad_norm']}; last good checkpoint: {last or 'none'} (nothing was saved "
            "after it); lower optim.lr or set optim.grad_clip and resume"
        )


RESUME_KEYS = (
    "model.geometry",
    "model.vocabulary",
    "model.overrides",
    "data.source",
    "data.shards",
    "data.image_ratio",
    "data.image_size",
    "data.video_size",
    "data.video_frames",
    "data.text_tokens",
    "micro_batch_size",
    "image_micro_batch_size",
    "grad_accumulation",
    "seed",
    "lora.rank",
    "lora.alpha",
    "lora.target_modules",
)


def check_resumable(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume from a checkpoint written with other model or data settings
    (:data:`RESUME_KEYS`); other settings (steps, LR, intervals ...) may change."""
    now = json.loads(json.dumps(cfg.to_dict()))
    saved = json.loads(json.dumps(saved))
    # Runs written before LoRA existed have no lora section: they trained every weight.
    saved.setdefault("lora", now["lora"] if not cfg.lora.rank else {})

    def get(d: dict, key: str):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    differ = [k for k in RESUME_KEYS if get(saved, k) != get(now, k)]
    if differ:
        k = differ[0]
        raise LumosError(
            f"{path} was written by run {saved.get('name')!r} with {k}={get(saved, k)!r}; this "
            f"run ({cfg.name!r}) has {k}={get(now, k)!r} ({len(differ)} setting(s) differ); "
            "use the same settings, another --output, or --no-resume"
        )


def tensorboard_available() -> bool:
    """Whether TensorBoard can log (it is optional: ``pip install lumos[tensorboard]``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def _json_safe(value):
    """``value`` with non-finite floats as None, so every metrics row is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def format_validation(val: dict) -> str:
    """``val image 2.98 | val video 2.97 (per frame 3.01 2.95 2.94)``."""
    parts = []
    for kind in KINDS:
        if f"val/{kind}/loss" in val:
            text = f"val {kind} {val[f'val/{kind}/loss']:.4f}"
            frames = val[f"val/{kind}/frame_loss"]
            if len(frames) > 1:
                text += " (per frame " + " ".join(f"{v:.3f}" for v in frames if v is not None) + ")"
            parts.append(text)
    return " | ".join(parts)


def train(cfg: TrainConfig, resume: bool = True) -> list[dict]:
    """Run a training job described by ``cfg`` (see :class:`Trainer`)."""
    trainer = Trainer(cfg, resume=resume)
    try:
        rows = trainer.fit()
        trainer.ctx.barrier()  # every rank done before the group is torn down (gloo aborts else)
    finally:
        del trainer  # the wrapped model holds the process group: free it before the group goes
        distributed.shutdown_distributed()
    return rows
