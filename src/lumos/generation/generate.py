"""Per-frame masked generation with classifier-free guidance and a KV cache (SPEC section 7).

Latent frames are produced one after another. Inside a frame, all tokens start as MASK and are
revealed over ``num_steps`` MaskGIT steps: sample every masked position, score it by its log
probability plus annealed Gumbel noise, keep the least confident masked. Text and finished frames
live in a preallocated KV cache; only the current frame is re-run at each step, for the
conditional and the unconditional branch together in one batched forward. A finished frame is
written into the cache with the evenly spaced history mask; the returned codes stay unmasked.

Units: ``height``/``width`` here are latent tokens per frame (pixels / spatial compression),
``num_frames`` latent frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lumos.errors import LumosError
from lumos.model.transformer import LumosModel
from lumos.sequence.layout import FRAME_HEADER_LEN, frame_tokens, prefix_tokens, tokens_per_frame

StepCallback = Callable[[int, int, int, int], None]  # (frame, step, num_frames, num_steps)


@dataclass
class GenerationConfig:
    """Sampling options. Defaults are the official ones for video (SPEC section 7)."""

    num_steps: int = 50
    guidance_scale: float = 15.0
    history_mask_ratio: float = 0.7
    temperature: float = 1.0  # scale of the Gumbel noise on confidences (annealed per frame)
    sample_temperature: float = 1.0  # softmax temperature of the token sampling
    top_k: int | None = None
    official_temperature: bool = False  # reproduce the official running-product noise decay
    use_cache: bool = True  # False recomputes the whole sequence each step (reference path)
    chunk_size: int = 64  # masked positions whose logits are materialised at once

    def validate(self) -> None:
        if self.num_steps < 1:
            raise LumosError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.guidance_scale < 0:
            raise LumosError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.history_mask_ratio < 1.0:
            raise LumosError(f"history_mask_ratio must be in [0, 1), got {self.history_mask_ratio}")
        if self.temperature < 0 or self.sample_temperature <= 0:
            raise LumosError("temperature must be >= 0 and sample_temperature > 0")
        if self.top_k is not None and self.top_k < 1:
            raise LumosError(f"top_k must be >= 1, got {self.top_k}")


@dataclass
class GenerationOutput:
    codes: torch.Tensor  # [B, num_frames, h, w] visual tokenizer indices (given frames included)
    sequences: list[torch.Tensor]  # the conditional token sequence of each sample (no padding)


def history_mask_indices(h: int, w: int, ratio: float) -> torch.Tensor:
    """Evenly spaced content positions (of ``h*(w+1)``, NEWLINE column included) that are
    masked when a finished frame is written into the cache: ``idx_k = round(k*L/n)``,
    ``n = round(ratio*L)``."""
    L = h * (w + 1)
    n = round(ratio * L)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.round(torch.arange(n, dtype=torch.float64) * L / n).long()


def unmask_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """Tokens left masked after each step: ``floor(N cos(pi/2 (s+1)/S))``, clamped so every
    step reveals at least one token and keeps at least one masked; the last step keeps none."""
    left, remaining = [], num_tokens
    for s in range(num_steps):
        if s == num_steps - 1:
            n = 0
        else:
            n = math.floor(num_tokens * math.cos(math.pi / 2 * (s + 1) / num_steps))
            n = max(1, min(n, remaining - 1))
        left.append(n)
        remaining = n
    return left


def _as_generators(generator, batch: int) -> list[torch.Generator | None]:
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise LumosError(f"got {len(generator)} generators for {batch} prompts; give one each")
        return list(generator)
    return [generator] * batch


@torch.no_grad()
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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> GenerationOutput:
    """Generate ``num_frames`` latent frames of ``height`` x ``width`` tokens for each prompt.

    ``text_ids``: one token list per prompt (the wrapped prompt, without BOS/SEP).
    ``given_frames``: optional codes [B, t0, h, w] of leading frames (image-to-video).
    ``generator``: one generator for the batch, or one per prompt (then a batch equals the
    single runs). Returns all frames, given ones included.
    """
    cfg = config or GenerationConfig()
    cfg.validate()
    vocab = model.vocab
    if vocab.codebook_size == 0:
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
    gens = _as_generators(generator, B)
    spatial = model.config.rope_scale_hw
    use_cfg = cfg.guidance_scale != 1.0
    branches = 2 if use_cfg else 1
    Tf = tokens_per_frame(height, width)

    # Plan every row's full token layout: [pad] prefix, frames (MASK placeholders), VEND.
    rows, prefix_lens = [], []
    for branch in range(branches):
        for b in range(B):
            ids = prefix_tokens(vocab, list(text_ids[b]) if branch == 0 else None, duration, fps)
            prefix_lens.append(len(ids))
            for f in range(num_frames):
                codes = given_frames[b, f] if f < t0 else None
                ids += frame_tokens(vocab, codes, height, width, spatial)
            rows.append(ids + [vocab.video_end])
    P = max(prefix_lens)
    total = P + num_frames * Tf + 1
    device = model.lm_head.weight.device
    layout = torch.full((branches * B, total), vocab.pad, dtype=torch.long)
    valid = torch.zeros_like(layout, dtype=torch.bool)
    for i, ids in enumerate(rows):
        layout[i, total - len(ids) :] = torch.tensor(ids)
        valid[i, total - len(ids) :] = True
    layout, valid = layout.to(device), valid.to(device)
    positions, structure = model.positions(layout, valid)

    frame_start = [P + f * Tf for f in range(num_frames)]
    content = torch.arange(height * (width + 1)).view(height, width + 1)
    visual_slots = (FRAME_HEADER_LEN + content[:, :width].flatten()).to(device)  # in-frame offsets
    hist = history_mask_indices(height, width, cfg.history_mask_ratio).to(device)

    cache = history = None
    if not cfg.use_cache:
        history = layout.clone()  # the reference path re-reads history-masked frames
    else:
        cache = model.new_cache(branches * B, total - 1)
        cache.valid.copy_(valid[:, : total - 1])
        prefix_mask = model.attention_mask(_slice(structure, 0, P), valid[:, :P])
        model.hidden(layout[:, :P], positions[:, :, :P], prefix_mask, cache, 0)

    def frame_hidden(f: int, frame_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states [rows, Tf, d] of frame ``f`` holding ``frame_ids``, over the cache."""
        s0 = frame_start[f]
        if cache is not None:
            pos = positions[:, :, s0 : s0 + Tf]
            mask = cache.key_padding_mask(s0 + Tf)
            return model.hidden(frame_ids, pos, mask, cache, s0)[0]
        seq = history[:, : s0 + Tf].clone()
        seq[:, s0:] = frame_ids
        mask = model.attention_mask(_slice(structure, 0, s0 + Tf), valid[:, : s0 + Tf])
        return model.hidden(seq, positions[:, :, : s0 + Tf], mask)[0][:, s0:]

    def commit(f: int, frame_ids: torch.Tensor) -> None:
        """Write a finished frame into the history with the history mask applied."""
        masked = frame_ids.clone()
        masked[:, FRAME_HEADER_LEN + hist] = vocab.mask
        if cache is not None:
            frame_hidden(f, masked)
        else:
            history[:, frame_start[f] : frame_start[f] + Tf] = masked

    for f in range(t0):
        commit(f, layout[:, frame_start[f] : frame_start[f] + Tf])

    tau = cfg.temperature
    out_codes = torch.zeros(B, num_frames, height, width, dtype=torch.long, device=device)
    if t0:
        out_codes[:, :t0] = given_frames.to(device)
    schedule = unmask_schedule(height * width, cfg.num_steps)
    for f in range(t0, num_frames):
        s0 = frame_start[f]
        frame_ids = layout[:B, s0 : s0 + Tf].clone()  # one copy per sample, shared by branches
        unknown = torch.ones(B, height * width, dtype=torch.bool, device=device)
        if not cfg.official_temperature:
            tau = cfg.temperature
        for step, keep_masked in enumerate(schedule):
            if cfg.official_temperature:
                tau = tau * (1 - (step + 1) / cfg.num_steps)
            else:
                tau = cfg.temperature * (1 - (step + 1) / cfg.num_steps)
            hidden = frame_hidden(f, frame_ids.repeat(branches, 1))
            n_unknown = int(unknown[0].sum())
            slots = unknown.nonzero()[:, 1].view(B, n_unknown)  # sorted grid indices per sample
            h_at = hidden.gather(
                1,
                visual_slots[slots].repeat(branches, 1)[..., None].expand(-1, -1, hidden.shape[-1]),
            )
            sampled, confidence = _sample(model, h_at, B, cfg, gens, tau)
            if keep_masked > 0:
                # Keep the least confident masked; reveal the rest.
                order = confidence.argsort(dim=1)
                stay = torch.zeros_like(confidence, dtype=torch.bool)
                stay.scatter_(1, order[:, :keep_masked], True)
            else:
                stay = torch.zeros_like(confidence, dtype=torch.bool)
            reveal = ~stay
            grid_ids = frame_ids[:, visual_slots]  # [B, h*w]
            new_vals = torch.where(reveal, vocab.codes_to_ids(sampled), grid_ids.gather(1, slots))
            grid_ids.scatter_(1, slots, new_vals)
            frame_ids[:, visual_slots] = grid_ids
            unknown.scatter_(1, slots, stay)
            if callback is not None:
                callback(f, step, num_frames, cfg.num_steps)
        out_codes[:, f] = vocab.ids_to_codes(frame_ids[:, visual_slots]).view(B, height, width)
        layout[:, s0 : s0 + Tf] = frame_ids.repeat(branches, 1)
        commit(f, layout[:, s0 : s0 + Tf])

    sequences = [layout[b, valid[b]].cpu() for b in range(B)]
    return GenerationOutput(out_codes.cpu(), sequences)


def _slice(s, start: int, end: int):
    """A TokenStructure restricted to columns [start, end)."""
    return type(s)(*(t[:, start:end] for t in (s.index, s.frame, s.content, s.row, s.col)), s.p0)


def _sample(
    model: LumosModel,
    h_at: torch.Tensor,
    B: int,
    cfg: GenerationConfig,
    gens: list[torch.Generator | None],
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample tokens at the gathered hidden states ``h_at`` [branches*B, n, d].

    Returns visual codes [B, n] and confidences [B, n] (log p + tau * Gumbel).
    Guidance is applied to the hidden states before the (linear) head, which equals
    ``g * (cond - uncond) + uncond`` on the logits at half the cost. Logits are formed chunk by
    chunk over positions, over the visual vocabulary only.
    """
    if h_at.shape[0] == 2 * B:
        g = cfg.guidance_scale
        h_at = g * h_at[:B] + (1.0 - g) * h_at[B:]
    n = h_at.shape[1]
    sampled = torch.empty(B, n, dtype=torch.long, device=h_at.device)
    logp = torch.empty(B, n, dtype=torch.float32, device=h_at.device)
    for c0 in range(0, n, cfg.chunk_size):
        c1 = min(c0 + cfg.chunk_size, n)
        logits = model.visual_logits(h_at[:, c0:c1]).float()
        if cfg.sample_temperature != 1.0:
            logits = logits / cfg.sample_temperature
        if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
            kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        # Unnormalised softmax and inverse-CDF sampling: one uniform per position.
        weights = logits.sub_(logits.amax(-1, keepdim=True)).exp_()
        cdf = weights.cumsum(-1)
        for b in range(B):
            u = torch.rand(c1 - c0, 1, generator=gens[b], device=cdf.device) * cdf[b, :, -1:]
            pick = torch.searchsorted(cdf[b], u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
            sampled[b, c0:c1] = pick
            p_pick = weights[b].gather(-1, pick[:, None]).squeeze(-1) / cdf[b, :, -1]
            logp[b, c0:c1] = p_pick.clamp_min(1e-30).log()
    if tau > 0:
        noise = torch.stack([torch.rand(n, generator=g, device=h_at.device) for g in gens])
        gumbel = -torch.log(-torch.log(noise.clamp_(1e-20, 1.0)).clamp_(max=-1e-20))
        return sampled, logp + tau * gumbel
    return sampled, logp
