"""The MaskGIT frame scheduler: how one latent frame goes from all-MASK to all-known.

In the manner of diffusers' schedulers (amused's in particular): ``set_timesteps`` fixes the whole
plan of a frame in advance — how many tokens are still masked after each step and the scale of
the Gumbel noise at each step — and ``step`` applies the update rule once: sample a token at every
scored position, score it by ``log p + tau_s * Gumbel``, keep the ``keep_masked[s]`` least
confident unknown positions masked and reveal the rest (docs/design.md, "Generation").

Every tensor a step touches has a shape fixed by the frame (``N = h*w`` grid positions) or by
the plan (``n = unknown_before[s]`` when the caller scores only the unknown positions), and the
counts come from the plan, not from the tensors: a step never reads a value back to the host,
so it can be compiled or captured in a CUDA graph. Random numbers come in as uniforms drawn by
the caller (one call per prompt's generator), so a batch equals its single runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lumos.errors import LumosError
from lumos.model.linear import linear
from lumos.sequence.masking import SCHEDULES

CDF_BLOCK = 256  # vocabulary entries per block of the two-level inverse CDF
# Codebook entries whose logits are formed at once, per device type (a multiple of CDF_BLOCK);
# device types not listed take the whole codebook in one matmul.
VOCAB_CHUNK = {"cpu": 4096}
LOG2E = math.log2(math.e)


@dataclass
class FrameState:
    """One frame being revealed, for ``B`` prompts. ``codes`` [B, N] visual indices (meaningless
    where ``unknown``); ``unknown`` [B, N] bool, True = still MASK. ``N = h*w`` grid positions in
    row-major order."""

    codes: torch.Tensor
    unknown: torch.Tensor


def unmask_schedule(num_tokens: int, num_steps: int, schedule: str = "cosine") -> list[int]:
    """Tokens left masked after each step (the official rule): ``floor(N * r((s+1)/S))`` with the
    masking ratio ``r`` (cosine by default), clamped to ``[1, remaining - 1]`` so a step reveals a
    token and keeps one masked while it can; the last step keeps none. With more steps than
    tokens the clamp cannot hold both ways: once one token is left it stays masked (those steps
    reveal nothing) until the last step reveals it."""
    progress = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    ratios = SCHEDULES[schedule](progress).tolist()  # host-side planning, one call
    left, remaining = [], num_tokens
    for s in range(num_steps):
        if s == num_steps - 1:
            n = 0
        else:
            n = max(1, min(math.floor(num_tokens * ratios[s]), remaining - 1))
        left.append(n)
        remaining = n
    return left


class MaskGITScheduler:
    """Plans and applies the per-frame MaskGIT steps.

    ``schedule``: masking-ratio schedule (``sequence/masking.py``; the official one is cosine).
    ``temperature``: scale ``tau`` of the Gumbel noise on the confidences, annealed as
    ``tau * (1 - (s+1)/S)`` and restarted at every frame; ``official_temperature`` reproduces the
    official code's running product that is never reset (zero noise after the first frame).
    ``sample_temperature`` / ``top_k`` shape the token sampling. ``chunk_size``: positions sampled
    at once (their exponentiated logits, [B, chunk, codebook] fp32, are held together).
    ``vocab_chunk``: codebook entries whose logits are formed at once (a multiple of
    ``CDF_BLOCK``); None takes ``VOCAB_CHUNK`` for the device type (4096 on CPU, where a piece
    that stays in cache makes the matmul and the softmax passes faster; the whole codebook in one
    matmul elsewhere).
    """

    def __init__(
        self,
        schedule: str = "cosine",
        temperature: float = 1.0,
        official_temperature: bool = False,
        sample_temperature: float = 1.0,
        top_k: int | None = None,
        chunk_size: int = 256,
        vocab_chunk: int | None = None,
    ) -> None:
        if schedule not in SCHEDULES:
            raise LumosError(f"mask schedule {schedule!r} unknown; choose one of {list(SCHEDULES)}")
        self.schedule = schedule
        self.temperature = temperature
        self.official_temperature = official_temperature
        self.sample_temperature = sample_temperature
        self.top_k = top_k
        self.chunk_size = chunk_size
        if vocab_chunk is not None and (vocab_chunk < 1 or vocab_chunk % CDF_BLOCK):
            raise LumosError(
                f"vocab_chunk must be a positive multiple of {CDF_BLOCK}, got {vocab_chunk}"
            )
        self.vocab_chunk = vocab_chunk
        self.num_steps = 0
        self.keep_masked: list[int] = []
        self.unknown_before: list[int] = []

    def set_timesteps(self, num_steps: int, num_tokens: int) -> None:
        """Plan a frame of ``num_tokens`` grid positions revealed in ``num_steps`` steps."""
        if num_steps < 1:
            raise LumosError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.keep_masked = unmask_schedule(num_tokens, num_steps, self.schedule)
        self.unknown_before = [num_tokens, *self.keep_masked[:-1]]

    def noise_scales(self, frame: int) -> list[float]:
        """Gumbel scale ``tau_s`` of each step of the ``frame``-th generated frame (0-based)."""
        S = self.num_steps
        anneal = [1 - (s + 1) / S for s in range(S)]
        if not self.official_temperature:
            return [self.temperature * a for a in anneal]
        if frame > 0:  # the running product reached 0 at the last step of the first frame
            return [0.0] * S
        taus, tau = [], self.temperature
        for a in anneal:
            tau *= a
            taus.append(tau)
        return taus

    def sample(
        self, hidden: torch.Tensor, head: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a code at each of ``hidden`` [B, n, d] with one uniform ``u`` [B, n] each.

        ``head`` [V, d]: the head's weight over the codebook (logits = ``hidden @ head.T``).
        Returns codes [B, n] (long) and their log probabilities [B, n] (fp32), ``chunk_size``
        positions at a time."""
        codes, logp = [], []
        for c0 in range(0, hidden.shape[1], self.chunk_size):
            c, lp = self._sample_chunk(
                hidden[:, c0 : c0 + self.chunk_size], head, u[:, c0 : c0 + self.chunk_size]
            )
            codes.append(c)
            logp.append(lp)
        return torch.cat(codes, 1), torch.cat(logp, 1)

    def _sample_chunk(
        self, hidden: torch.Tensor, head: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream the codebook in ``vocab_chunk`` pieces: each piece's logits, maximum,
        exponentials (relative to that maximum) and CDF block sums are formed while the piece is
        in cache; the exponentials are kept for the second level of the inverse CDF. ``top_k``
        needs a whole row first, so it takes the codebook in one piece.

        The logits are formed in base 2 (``log2(e) / sample_temperature`` folded into
        ``hidden``, one more rounding in its dtype): ``exp2`` runs several times faster than
        ``exp`` on CPU (ATen's kernels, measured) and costs no more on a GPU."""
        V = head.shape[0]
        top_k = self.top_k is not None and self.top_k < V
        step = V if top_k else self.vocab_chunk or VOCAB_CHUNK.get(hidden.device.type, V)
        hidden = hidden * (LOG2E / self.sample_temperature)
        blocks, maxima, sums = [], [], []
        for v0 in range(0, V, step):
            logits = linear(hidden, head[v0 : v0 + step]).float()  # fresh: worked in place
            if top_k:
                kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
                logits.masked_fill_(logits < kth, float("-inf"))
            m = logits.amax(-1, keepdim=True)
            b = cdf_blocks(logits.sub_(m).exp2_())
            blocks.append(b)
            maxima.append(m)
            sums.append(b.sum(-1))
        pick, p = inverse_cdf(blocks, torch.cat(maxima, -1), torch.cat(sums, -1), u)
        return pick, p.clamp_min(1e-30).log()

    def frame_plan(self, frame: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``frame``-th generated frame's plan as device tensors, one entry per step: tokens
        kept masked (long [S]) and Gumbel scale (fp32 [S]). Indexing them gives the per-step
        arguments of ``step`` without host round trips or per-step recompilation."""
        keep = torch.tensor(self.keep_masked, dtype=torch.long, device=device)
        tau = torch.tensor(self.noise_scales(frame), dtype=torch.float32, device=device)
        return keep, tau

    def step(
        self,
        hidden: torch.Tensor,
        head: torch.Tensor,
        noise: torch.Tensor,
        state: FrameState,
        keep_masked: torch.Tensor | int,
        tau: torch.Tensor | float,
        slots: torch.Tensor | None = None,
    ) -> FrameState:
        """One MaskGIT step: sample, score, re-mask the ``keep_masked`` least confident.

        ``hidden`` [B, n, d]: guided hidden states at the scored grid positions ``slots`` [B, n]
        (None = all ``N`` positions in order; otherwise the unknown positions, ascending);
        ``head`` [V, d] the head's weight over the codebook (``LumosModel.visual_head``).
        ``noise`` [B, 2, N] uniforms: row 0 samples the tokens, row 1 is the Gumbel noise of
        scale ``tau``. A position uses the same numbers whichever form is scored, so both forms
        reveal the same tokens. Returns the new state."""
        if slots is None:
            u_sample, u_gumbel = noise[:, 0], noise[:, 1]
            unknown, codes = state.unknown, state.codes
        else:
            u_sample, u_gumbel = noise[:, 0].gather(1, slots), noise[:, 1].gather(1, slots)
            unknown, codes = state.unknown.gather(1, slots), state.codes.gather(1, slots)
        sampled, logp = self.sample(hidden, head, u_sample)
        gumbel = -torch.log(-torch.log(u_gumbel.clamp(1e-20, 1.0)).clamp(max=-1e-20))
        confidence = (logp + tau * gumbel).masked_fill(~unknown, float("inf"))  # known: kept
        rank = confidence.argsort(dim=1, stable=True).argsort(1)
        stay = rank < keep_masked  # the least confident unknown positions stay masked
        new_codes = torch.where(unknown & ~stay, sampled, codes)
        new_unknown = unknown & stay
        if slots is None:
            return FrameState(new_codes, new_unknown)
        return FrameState(
            state.codes.scatter(1, slots, new_codes), state.unknown.scatter(1, slots, new_unknown)
        )


def cdf_blocks(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` [..., V] as [..., ceil(V / CDF_BLOCK), CDF_BLOCK], zero-padded (a copy only
    when ``V`` is not a multiple of ``CDF_BLOCK``)."""
    pad = -weights.shape[-1] % CDF_BLOCK
    return (F.pad(weights, (0, pad)) if pad else weights).unflatten(-1, (-1, CDF_BLOCK))


def inverse_cdf(
    blocks: list[torch.Tensor], exponents: torch.Tensor, block_sums: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sample over a codebook held in pieces, one uniform ``u`` [...] in [0, 1) each:
    index ``i`` with ``cdf[i-1] <= u * total < cdf[i]`` and its probability ``w_i / total``.

    ``blocks``: piece ``c``'s weights [..., nb_c, CDF_BLOCK] >= 0 (``cdf_blocks``), relative to
    the piece's own scale ``2 ** exponents[..., c]`` (finite: its base-2 logits' maximum), every
    piece but the last with the same ``nb_c``; ``block_sums`` [..., sum nb_c]: their sums over
    the last dimension, all pieces concatenated. The true weights are ``2 ** exponents[c] *
    blocks[c]``; pieces are rescaled to the largest scale as in an online softmax.

    Two levels, so no length-V scan runs: the block of ``CDF_BLOCK`` entries that holds the target
    (a cumulative sum over block totals), then the entry inside it. Equals a single cumulative
    sum up to float rounding of the sums; a zero-weight entry is never picked."""
    per_piece = blocks[0].shape[-2]
    scales = (exponents - exponents.amax(-1, keepdim=True)).exp2()  # [..., pieces], largest 1
    block_scales = scales.repeat_interleave(per_piece, -1)[..., : block_sums.shape[-1]]
    block_cdf = (block_sums * block_scales).cumsum(-1)  # [..., nb]
    total = block_cdf[..., -1:]
    target = torch.minimum(u[..., None] * total, torch.nextafter(total, torch.zeros_like(total)))
    block = torch.searchsorted(block_cdf, target, right=True)  # first cdf > target
    block = block.clamp_(max=block_cdf.shape[-1] - 1)  # [..., 1]
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)), 0.0)
    piece, local = block // per_piece, block % per_piece
    rows = torch.arange(local.numel(), device=local.device)
    inner = None  # the block's weights [..., CDF_BLOCK], from whichever piece holds it
    for c, b in enumerate(blocks):
        index = rows * b.shape[-2] + local.flatten().clamp(max=b.shape[-2] - 1)
        weights = b.reshape(-1, CDF_BLOCK).index_select(0, index).unflatten(0, local.shape[:-1])
        inner = weights if inner is None else torch.where(piece == c, weights, inner)
    scale = scales.gather(-1, piece)  # [..., 1], > 0 for the piece holding the target
    inner_cdf = inner.cumsum(-1)  # [..., CDF_BLOCK], in the piece's own scale
    inner_total = inner_cdf[..., -1:]
    rest = torch.minimum(
        ((target - before) / scale).clamp(min=0.0),
        torch.nextafter(inner_total, torch.zeros_like(inner_total)),
    )
    j = torch.searchsorted(inner_cdf, rest, right=True).clamp_(max=CDF_BLOCK - 1)
    p = inner.gather(-1, j) * scale / total
    return (block * CDF_BLOCK + j).squeeze(-1), p.squeeze(-1)
