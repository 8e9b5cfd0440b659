"""Simple references for the generation loop, used only by tests.

``reference_generate`` is generation written the plainest way: no KV cache (every step runs the
whole sequence with the dense frame-causal mask), one prompt at a time, float64 softmax and a
plain cumulative sum for sampling, a sort for the confidences. It consumes random numbers exactly
as the production loop does (per step, one ``torch.rand(2, h*w)`` call per prompt's generator:
row 0 samples the tokens, row 1 is the Gumbel noise), so the two must give the same codes.

History-masked frames keep the positions of their true layout (a masked NEWLINE is still the
end of its row).

``MaskedRowAttention`` is the production loop's attention with a key-padding mask instead of
one call per row group: swapped in for ``RowGroupAttention`` it must change nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumos.generation.scheduler import unmask_schedule
from lumos.model.kv_cache import RowGroup
from lumos.sequence.layout import FRAME_HEADER_LEN, frame_tokens, prefix_tokens
from lumos.sequence.masking import history_mask_indices


def _tau(cfg, frame: int, step: int) -> float:
    S = cfg.num_steps
    if not cfg.official_temperature:
        return cfg.temperature * (1 - (step + 1) / S)
    if frame > 0:
        return 0.0
    tau = cfg.temperature
    for s in range(step + 1):
        tau *= 1 - (s + 1) / S
    return tau


def _sample_one(logits: torch.Tensor, u: float, cfg) -> tuple[int, float]:
    """Inverse-CDF sample of one position: float64 softmax, plain cumulative sum."""
    logits = logits.double() / cfg.sample_temperature
    if cfg.top_k is not None:
        kth = logits.topk(cfg.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p = logits.softmax(-1)
    cdf = p.cumsum(-1)
    i = int(
        torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=torch.float64), right=True)
    )
    i = min(i, len(p) - 1)
    return i, float(p[i].log())


@torch.no_grad()
def reference_generate(model, text_ids, num_frames, height, width, duration, fps, cfg, generators,
                       given_frames=None, negative_ids=None):  # fmt: skip
    """Codes [B, num_frames, h, w]; ``generators`` one per prompt; ``negative_ids`` one per
    prompt or None."""
    vocab = model.vocab
    N = height * width
    content = torch.arange(height * (width + 1)).view(height, width + 1)
    visual = FRAME_HEADER_LEN + content[:, :width].flatten()
    hist = FRAME_HEADER_LEN + history_mask_indices(height, width, cfg.history_mask_ratio)
    keep = unmask_schedule(N, cfg.num_steps, cfg.schedule)
    t0 = 0 if given_frames is None else given_frames.shape[1]
    use_cfg = cfg.guidance_scale != 1.0
    use_neg = negative_ids is not None and cfg.negative_guidance_scale != 0.0
    out = torch.zeros(len(text_ids), num_frames, height, width, dtype=torch.long)
    for b, text in enumerate(text_ids):
        rows = [prefix_tokens(vocab, list(text), duration, fps)]
        if use_cfg:
            rows.append(prefix_tokens(vocab, None, duration, fps))
        if use_neg:
            rows.append(prefix_tokens(vocab, list(negative_ids[b]), duration, fps))
        clean = [list(r) for r in rows]  # unmasked: positions follow the true layout
        for f in range(num_frames):
            if f < t0:
                codes = given_frames[b, f]
            else:
                codes = torch.zeros(N, dtype=torch.long)
                unknown = torch.ones(N, dtype=torch.bool)
                for step in range(cfg.num_steps):
                    frame = torch.tensor(frame_tokens(vocab, None, height, width))
                    frame[visual] = torch.where(unknown, vocab.mask, vocab.codes_to_ids(codes))
                    hidden = []
                    for r, c in zip(rows, clean, strict=True):
                        seq = torch.cat([torch.tensor(r), frame])[None]
                        positions, s = model.positions(torch.cat([torch.tensor(c), frame])[None])
                        h = model.hidden(seq, positions, model.attention_mask(s, None))[0]
                        hidden.append(h[0, len(r) + visual])
                    h = hidden[0]
                    if use_cfg:
                        g = cfg.guidance_scale
                        h = g * hidden[0] + (1 - g) * hidden[1]
                    if use_neg:
                        h = h + cfg.negative_guidance_scale * (hidden[0] - hidden[-1])
                    logits = model.visual_logits(h)
                    u = torch.rand(2, N, generator=generators[b])
                    tau = _tau(cfg, f - t0, step)
                    conf = torch.full((N,), float("inf"), dtype=torch.float64)
                    sampled = codes.clone()
                    for i in range(N):
                        if unknown[i]:
                            sampled[i], logp = _sample_one(logits[i], float(u[0, i]), cfg)
                            ui = min(max(float(u[1, i]), 1e-20), 1.0)
                            conf[i] = logp - tau * math.log(max(-math.log(ui), 1e-20))
                    order = sorted(range(N), key=lambda i: (float(conf[i]), i))
                    stay = torch.zeros(N, dtype=torch.bool)
                    stay[order[: keep[step]]] = True
                    codes = torch.where(unknown & ~stay, sampled, codes)
                    unknown = unknown & stay
                codes = codes.view(height, width)
                out[b, f] = codes
            frame = torch.tensor(frame_tokens(vocab, codes, height, width))
            clean = [c + frame.tolist() for c in clean]
            frame[hist] = vocab.mask
            rows = [r + frame.tolist() for r in rows]
        if t0:
            out[b, :t0] = given_frames[b]
    return out


@dataclass(frozen=True)
class MaskedRowAttention:
    """``RowGroupAttention`` done with a key-padding mask over the whole batch at once."""

    groups: tuple[RowGroup, ...]
    causal: bool = False

    def __call__(self, q, k, v, enable_gqa):
        L, S = q.shape[2], k.shape[2]
        key_start = torch.cat(
            [torch.full((g.row_stop - g.row_start,), g.key_start) for g in self.groups]
        ).to(q.device)
        keys = torch.arange(S, device=q.device)
        allowed = (keys[None, :] >= key_start[:, None])[:, None, None, :]  # [B, 1, 1, S]
        if self.causal:
            queries = torch.arange(S - L, S, device=q.device)
            causal = keys[None, :] <= queries[:, None]
            allowed = allowed & causal | torch.eye(L, S, dtype=torch.bool, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=enable_gqa)
