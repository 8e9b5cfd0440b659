"""Per-frame masked generation with classifier-free guidance and a KV cache (docs/design.md,
"Generation").

Latent frames are produced one after another. Inside a frame every token starts as MASK and a
:class:`~lumos.generation.scheduler.MaskGITScheduler` reveals them over ``num_steps`` steps. The
prompt and finished frames live in a preallocated KV cache; each step re-runs only the current
frame, the conditional and the unconditional branch (and a negative prompt's branch, when one
is given) together in one batched forward. A finished frame is written into the cache with the
evenly spaced history mask; the returned codes stay unmasked.

GPU-shaped by design: no attention call carries a mask (left-padded rows are grouped by their
padding, ``model/kv_cache.py``), random numbers are drawn on the model's device, and a step does
not read anything back to the host, so the number of host synchronisations per frame does not
depend on the number of steps. :func:`denoise_step` has fixed shapes within a frame (the
compiled form scores every grid position); ``compile=True`` compiles it with ``fullgraph=True``:
one graph for the first frame, one with a symbolic key length for all later frames.

Units: ``height``/``width`` here are latent tokens per frame (pixels / spatial compression),
``num_frames`` latent frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from lumos.errors import LumosError
from lumos.generation.scheduler import FrameState, MaskGITScheduler
from lumos.model.kv_cache import KVCache, RowGroup, RowGroupAttention
from lumos.model.transformer import LumosModel
from lumos.sequence.layout import FRAME_HEADER_LEN, frame_tokens, prefix_tokens, tokens_per_frame
from lumos.sequence.masking import SCHEDULES, history_mask_indices

StepCallback = Callable[[int, int, int, int], None]  # (frame, step, num_frames, num_steps)
GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class GenerationConfig:
    """Sampling options. Defaults are the official ones for video (docs/design.md)."""

    num_steps: int = 50  # MaskGIT steps per latent frame
    guidance_scale: float = 15.0  # classifier-free guidance; 1 turns the unconditional branch off
    negative_guidance_scale: float = 3.0  # weight of (prompt - negative prompt) when one is given
    history_mask_ratio: float = 0.7  # fraction of a finished frame masked in the cache
    temperature: float = 1.0  # scale of the Gumbel noise on confidences (annealed per frame)
    sample_temperature: float = 1.0  # softmax temperature of the token sampling
    top_k: int | None = None  # sample among the k most likely codes only
    official_temperature: bool = False  # reproduce the official running-product noise decay
    schedule: str = "cosine"  # masking-ratio schedule of the steps (sequence/masking.py)
    chunk_size: int = 256  # grid positions whose logits are materialised at once
    fixed_shapes: bool = False  # score every grid position each step (always on when compiled)

    def validate(self) -> None:
        def finite(name: str, value: float, low: float, strict: bool = False) -> None:
            ok = math.isfinite(value) and (value > low if strict else value >= low)
            if not ok:
                bound = ">" if strict else ">="
                raise LumosError(f"{name} must be a finite number {bound} {low}, got {value}")

        if self.num_steps < 1:
            raise LumosError(f"num_steps must be >= 1, got {self.num_steps}")
        finite("guidance_scale", self.guidance_scale, 0.0)
        finite("negative_guidance_scale", self.negative_guidance_scale, 0.0)
        finite("temperature", self.temperature, 0.0)
        finite("sample_temperature", self.sample_temperature, 0.0, strict=True)
        if not (math.isfinite(self.history_mask_ratio) and 0.0 <= self.history_mask_ratio < 1.0):
            raise LumosError(f"history_mask_ratio must be in [0, 1), got {self.history_mask_ratio}")
        if self.top_k is not None and self.top_k < 1:
            raise LumosError(f"top_k must be >= 1, got {self.top_k}")
        if self.schedule not in SCHEDULES:
            raise LumosError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.chunk_size < 1:
            raise LumosError(f"chunk_size must be >= 1, got {self.chunk_size}")

    def scheduler(self) -> MaskGITScheduler:
        return MaskGITScheduler(
            self.schedule,
            self.temperature,
            self.official_temperature,
            self.sample_temperature,
            self.top_k,
            self.chunk_size,
        )


@dataclass
class GenerationOutput:
    codes: torch.Tensor  # [B, num_frames, h, w] visual tokenizer indices (given frames included)
    sequences: list[torch.Tensor]  # the conditional token sequence of each sample (no padding)


@dataclass
class FramePlan:
    """Everything about one call's token layout that does not change while generating.

    Rows of the batch are the conditional rows of the prompts sorted by prompt length (so rows
    with equal left padding are adjacent), then the rows of each further branch in the same
    order. ``order[i]`` is the caller's index of sorted prompt ``i``."""

    order: list[int]
    branches: tuple[str, ...]  # "cond", then "uncond" and/or "negative": B rows each
    layout: torch.Tensor  # [rows, total] ids: padding, prefixes, frames (MASK placeholders), VEND
    valid: torch.Tensor  # [rows, total] bool: non-padding
    positions: torch.Tensor  # [rows, 3, total] MM-RoPE positions
    prefix_len: int  # P: padded prefix length = slot of the first frame
    tokens_per_frame: int  # Tf
    visual_slots: torch.Tensor  # [h*w] in-frame offsets of the grid tokens, row-major
    prefill: RowGroupAttention
    attend: RowGroupAttention

    def frame_start(self, f: int) -> int:
        return self.prefix_len + f * self.tokens_per_frame


def plan_layout(
    model: LumosModel,
    text_ids: Sequence[Sequence[int]],
    num_frames: int,
    height: int,
    width: int,
    duration: int,
    fps: int,
    branches: Sequence[str],
    given_frames: torch.Tensor | None,
    negative_ids: Sequence[Sequence[int]] | None = None,
) -> FramePlan:
    """Lay out every row (left-padded prefix, ``num_frames`` frames, VEND) on the model's device.
    ``branches``: ``"cond"`` (the prompt), ``"uncond"`` (no text), ``"negative"``
    (``negative_ids``), B rows each."""
    vocab, spatial = model.vocab, model.config.rope_scale_hw
    B = len(text_ids)
    order = sorted(range(B), key=lambda b: len(text_ids[b]))
    t0 = 0 if given_frames is None else given_frames.shape[1]
    rows, prefix_lens = [], []
    texts = {"cond": text_ids, "uncond": [None] * B, "negative": negative_ids}
    for branch in branches:
        for b in order:
            text = texts[branch][b]
            ids = prefix_tokens(vocab, None if text is None else list(text), duration, fps)
            prefix_lens.append(len(ids))
            for f in range(num_frames):
                codes = given_frames[b, f] if f < t0 else None
                ids += frame_tokens(vocab, codes, height, width, spatial)
            rows.append(ids + [vocab.video_end])
    P = max(prefix_lens)
    Tf = tokens_per_frame(height, width)
    total = P + num_frames * Tf + 1
    layout = torch.full((len(rows), total), vocab.pad, dtype=torch.long)
    valid = torch.zeros_like(layout, dtype=torch.bool)
    for i, ids in enumerate(rows):
        layout[i, total - len(ids) :] = torch.tensor(ids)
        valid[i, total - len(ids) :] = True
    device = model.lm_head.weight.device
    layout, valid = layout.to(device), valid.to(device)
    positions, _ = model.positions(layout, valid)

    groups, start = [], 0
    for i in range(1, len(rows) + 1):  # runs of equal prefix length are the row groups
        if i == len(rows) or prefix_lens[i] != prefix_lens[start]:
            groups.append(RowGroup(start, i, P - prefix_lens[start]))
            start = i
    content = torch.arange(height * (width + 1), device=device).view(height, width + 1)
    return FramePlan(
        order=order,
        branches=tuple(branches),
        layout=layout,
        valid=valid,
        positions=positions,
        prefix_len=P,
        tokens_per_frame=Tf,
        visual_slots=FRAME_HEADER_LEN + content[:, :width].flatten(),
        prefill=RowGroupAttention(tuple(groups), causal=True),
        attend=RowGroupAttention(tuple(groups)),
    )


def frame_ids(template: torch.Tensor, plan: FramePlan, state: FrameState, mask_id: int, offset):
    """Token ids [B, Tf] of a frame being revealed: the ``template`` [Tf] (header, MASK grid,
    NEWLINE column, FEND) with the known codes written in."""
    ids = template.expand(state.codes.shape[0], -1).clone()
    grid = torch.where(state.unknown, mask_id, state.codes + offset)
    ids[:, plan.visual_slots] = grid
    return ids


def denoise_step(
    model: LumosModel,
    cache: KVCache,
    plan: FramePlan,
    scheduler: MaskGITScheduler,
    s0: int,
    template: torch.Tensor,
    state: FrameState,
    noise: torch.Tensor,
    keep_masked: torch.Tensor,
    tau: torch.Tensor,
    guidance_scale: float,
    num_scored: int | None = None,
    negative_scale: float = 0.0,
) -> FrameState:
    """One MaskGIT step of the frame at cache slot ``s0``: forward every branch over the cache,
    guide, then ``scheduler.step``. Guidance (on hidden states = on logits, the head is linear):
    ``g * cond + (1 - g) * uncond``, plus ``negative_scale * (cond - negative)`` with a negative
    prompt. ``num_scored=None`` scores every grid position (fixed shapes, what gets compiled);
    an int scores only that many unknown positions (the eager form: less head work, same
    result)."""
    vocab = model.vocab
    B = state.codes.shape[0]
    ids = frame_ids(template, plan, state, vocab.mask, vocab.visual_range[0])
    Tf = plan.tokens_per_frame
    hidden = model.hidden(
        ids.repeat(len(plan.branches), 1), plan.positions[:, :, s0 : s0 + Tf], plan.attend, cache,
        s0,
    )[0]  # fmt: skip
    rows = dict(zip(plan.branches, hidden[:, plan.visual_slots].split(B), strict=True))  # [B, N, d]
    hidden = rows["cond"]
    if "uncond" in rows:
        hidden = guidance_scale * hidden + (1.0 - guidance_scale) * rows["uncond"]
    if "negative" in rows:
        hidden = hidden + negative_scale * (rows["cond"] - rows["negative"])
    slots = None
    if num_scored is not None:  # the unknown positions, ascending, as fixed-size ops
        slots = (~state.unknown).to(torch.uint8).argsort(dim=1, stable=True)[:, :num_scored]
        hidden = hidden.gather(1, slots[..., None].expand(-1, -1, hidden.shape[-1]))
    return scheduler.step(hidden, model.visual_head, noise, state, keep_masked, tau, slots)


_compiled_step: Callable | None = None


def compiled_denoise_step() -> Callable:
    """``denoise_step`` compiled once per process (dynamo keeps its graphs per code object)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(denoise_step, fullgraph=True)
    return _compiled_step


def guidance_branches(cfg: GenerationConfig, negative: bool) -> tuple[str, ...]:
    """The row branches of a call: the prompt, the unconditional one unless guidance is 1, and
    the negative prompt's when one is given and its scale is not 0."""
    return (
        ("cond",)
        + (("uncond",) if cfg.guidance_scale != 1.0 else ())
        + (("negative",) if negative and cfg.negative_guidance_scale != 0.0 else ())
    )


def device_generators(generator: GeneratorArg, batch: int, device: torch.device) -> list:
    """One generator per prompt on ``device``. A generator already there is used as is; one on
    another device (e.g. a user's CPU generator for a CUDA model) seeds a new generator on the
    device with a number drawn from it, so the same seed always gives the same video."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise LumosError(f"got {len(generator)} generators for {batch} prompts; give one each")
        gens = list(generator)
    else:
        gens = [generator] * batch
    moved: dict[int, torch.Generator] = {}
    out = []
    for g in gens:
        if g is not None and g.device != torch.device(device) and id(g) not in moved:
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            moved[id(g)] = torch.Generator(device).manual_seed(seed)
        out.append(moved.get(id(g), g))
    return out


def generate_frames(
    model: LumosModel,
    text_ids: Sequence[Sequence[int]],
    num_frames: int,
    height: int,
    width: int,
    duration: int = 2,
    fps: int = 12,
    given_frames: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    generator: GeneratorArg = None,
    callback: StepCallback | None = None,
    compile: bool = False,
    negative_ids: Sequence[Sequence[int]] | None = None,
) -> Iterator[tuple[int, torch.Tensor, FramePlan]]:
    """Yield ``(f, codes [B, h, w], plan)`` for each generated latent frame ``f`` as soon as it
    is finished (on the model's device, in the caller's prompt order). Inputs are checked
    before this returns. See :func:`generate` for the arguments."""
    cfg = config or GenerationConfig()
    cfg.validate()
    if model.vocab.codebook_size == 0:
        raise LumosError("this model has no visual vocabulary; it cannot generate frames")
    B = len(text_ids)
    if B == 0:
        raise LumosError("no prompts given")
    t0 = 0 if given_frames is None else given_frames.shape[1]
    if given_frames is not None and tuple(given_frames.shape) != (B, t0, height, width):
        raise LumosError(
            f"given frames have shape {tuple(given_frames.shape)}, expected "
            f"[{B}, t, {height}, {width}] latent tokens"
        )
    if not t0 < num_frames:
        raise LumosError(f"num_frames ({num_frames}) must exceed the given frames ({t0})")
    if negative_ids is not None and len(negative_ids) != B:
        raise LumosError(f"got {len(negative_ids)} negative prompts for {B} prompts; give one each")
    gens = device_generators(generator, B, model.lm_head.weight.device)
    return _frames(
        model, text_ids, num_frames, height, width, duration, fps, given_frames, cfg, gens,
        callback, compile, negative_ids,
    )  # fmt: skip


@torch.no_grad()
def _frames(
    model: LumosModel,
    text_ids: Sequence[Sequence[int]],
    num_frames: int,
    height: int,
    width: int,
    duration: int,
    fps: int,
    given_frames: torch.Tensor | None,
    cfg: GenerationConfig,
    gens: list,
    callback: StepCallback | None,
    compile: bool,
    negative_ids: Sequence[Sequence[int]] | None,
) -> Iterator[tuple[int, torch.Tensor, FramePlan]]:
    vocab = model.vocab
    device = model.lm_head.weight.device
    B = len(text_ids)
    t0 = 0 if given_frames is None else given_frames.shape[1]
    branches = guidance_branches(cfg, negative_ids is not None)

    # 1. Plan the layout of every row and prefill the prompts into the cache.
    plan = plan_layout(
        model, text_ids, num_frames, height, width, duration, fps, branches, given_frames,
        negative_ids,
    )  # fmt: skip
    order, Tf, P = plan.order, plan.tokens_per_frame, plan.prefix_len
    order_t = torch.tensor(order, device=device)
    inverse = order_t.argsort()
    # The cache has a slot for VEND too, which is never written: then no frame's key slice
    # [0, end) covers the whole buffer, so one compiled graph serves every frame after the first.
    cache = model.new_cache(plan.layout.shape[0], plan.layout.shape[1])
    model.hidden(plan.layout[:, :P], plan.positions[:, :, :P], plan.prefill, cache, 0)
    hist = FRAME_HEADER_LEN + history_mask_indices(height, width, cfg.history_mask_ratio)
    hist = hist.to(device)

    def commit(f: int, ids: torch.Tensor) -> None:
        """Write frame ``f`` (ids [B, Tf], sorted order) into the cache, history-masked."""
        s0 = plan.frame_start(f)
        masked = ids.repeat(len(branches), 1)
        masked[:, hist] = vocab.mask
        model.hidden(masked, plan.positions[:, :, s0 : s0 + Tf], plan.attend, cache, s0)

    # 2. Given frames (image-to-video) go into the cache as they are.
    for f in range(t0):
        commit(f, plan.layout[:B, plan.frame_start(f) : plan.frame_start(f) + Tf])

    # 3. Each new frame: reveal its tokens over the scheduler's steps, then commit it.
    N = height * width
    scheduler = cfg.scheduler()
    scheduler.set_timesteps(cfg.num_steps, N)
    step_fn = compiled_denoise_step() if compile else denoise_step
    fixed = compile or cfg.fixed_shapes
    for f in range(t0, num_frames):
        s0 = plan.frame_start(f)
        template = plan.layout[0, s0 : s0 + Tf]
        state = FrameState(
            torch.zeros(B, N, dtype=torch.long, device=device),
            torch.ones(B, N, dtype=torch.bool, device=device),
        )
        keep, tau = scheduler.frame_plan(f - t0, device)
        for step in range(cfg.num_steps):
            # One call per prompt's generator, in the caller's order: a batch equals its singles.
            noise = torch.stack([torch.rand(2, N, generator=g, device=device) for g in gens])
            state = step_fn(
                model,
                cache,
                plan,
                scheduler,
                s0,
                template,
                state,
                noise[order_t],
                keep[step],
                tau[step],
                cfg.guidance_scale,
                None if fixed else scheduler.unknown_before[step],
                cfg.negative_guidance_scale,
            )
            if callback is not None:
                callback(f, step, num_frames, cfg.num_steps)
        ids = frame_ids(template, plan, state, vocab.mask, vocab.visual_range[0])
        plan.layout[:, s0 : s0 + Tf] = ids.repeat(len(branches), 1)
        commit(f, ids)
        yield f, state.codes.view(B, height, width)[inverse], plan


def generate(
    model: LumosModel,
    text_ids: Sequence[Sequence[int]],
    num_frames: int,
    height: int,
    width: int,
    duration: int = 2,
    fps: int = 12,
    given_frames: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    generator: GeneratorArg = None,
    callback: StepCallback | None = None,
    compile: bool = False,
    negative_ids: Sequence[Sequence[int]] | None = None,
) -> GenerationOutput:
    """Generate ``num_frames`` latent frames of ``height`` x ``width`` tokens for each prompt.

    ``text_ids``: one token list per prompt (the wrapped prompt, without BOS/SEP).
    ``negative_ids``: optional, one per prompt: a third branch steers away from it with
    ``config.negative_guidance_scale``.
    ``given_frames``: optional codes [B, t0, h, w] of leading frames (image-to-video).
    ``generator``: one generator for the batch, or one per prompt (then a batch equals the
    single runs); a generator on another device than the model's is accepted.
    ``compile``: run the compiled fixed-shape step. Returns all frames, given ones included,
    on the CPU.
    """
    frames = generate_frames(
        model, text_ids, num_frames, height, width, duration, fps, given_frames, config,
        generator, callback, compile, negative_ids,
    )  # fmt: skip
    B = len(text_ids)
    codes = torch.zeros(B, num_frames, height, width, dtype=torch.long)
    if given_frames is not None:
        codes[:, : given_frames.shape[1]] = given_frames.cpu()
    for f, frame, plan in frames:
        codes[:, f] = frame.cpu()  # the host copy of a finished frame: one sync per frame
        final = plan
    inverse = torch.tensor(final.order).argsort()
    rows, valid = final.layout[:B].cpu()[inverse], final.valid[:B].cpu()[inverse]
    sequences = [rows[b, valid[b]] for b in range(B)]
    return GenerationOutput(codes, sequences)
