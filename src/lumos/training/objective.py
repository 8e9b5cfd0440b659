"""The AR-DF training objective (docs/design.md, "AR-DF"): masking, collation and the visual-slice loss.

A training sample is a 1-D token sequence from :func:`lumos.sequence.layout.build_sequence`.
:func:`collate` drops the text of some samples (classifier-free guidance), right-pads the batch,
and corrupts visual content (visual ids and the NEWLINE column) with MASK:

* ``tube`` (AR-DF): per sample one ratio ``p`` and one random set of ``round(p * L)`` positions
  over a frame's content grid (``L = h * (w + 1)``), the same set in every latent frame;
* ``random``: one ratio per sample, a fresh random set of ``round(p * L)`` positions in every
  frame (positions independent across frames);
* ``diffusion_forcing``: an independent ratio and set per latent frame.

With ``history_noise`` > 0, some of the tokens left visible in the frames that later frames
see as history (every frame of a sample but its last) are replaced by random visual tokens, so
the model learns to predict a frame from a history with errors in it, as its own generated
history has (long videos drift less; docs/design.md, "AR-DF"). They are inputs, not scored.

The loss is cross-entropy over the visual slice of the vocabulary at masked positions whose
target is a visual token (a masked NEWLINE is corrupted but not scored), averaged over all such
positions. Logits are only formed for those positions, chunk by chunk, by
:func:`visual_cross_entropy`, whose memory is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from lumos.errors import LumosError
from lumos.model.attention import FlexFrameAttention, SplitFrameAttention
from lumos.model.transformer import LumosModel
from lumos.sequence.masking import SCHEDULES
from lumos.sequence.structure import TokenStructure, token_structure
from lumos.sequence.vocab import Vocabulary
from lumos.training.config import AttentionMode, MaskingConfig


def mask_rate(u: torch.Tensor, schedule: str = "cosine", min_rate: float = 0.7) -> torch.Tensor:
    """Masking ratio ``max(schedule(u), min_rate)`` for ``u`` in [0, 1)."""
    return SCHEDULES[schedule](u).clamp(min=min_rate, max=1.0)


def drop_text(seq: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """The unconditional sample: everything before VSTART removed (positions restart at 0)."""
    starts = (seq == vocab.video_start).nonzero()
    if len(starts) == 0:
        raise LumosError(
            "a training sequence has no video-start token; build it with build_sequence"
        )
    return seq[int(starts[0, 0]) :]


@dataclass
class Batch:
    """A collated training batch, all [B, L]: ``input_ids`` corrupted ids, ``attention_mask``
    1 = token / 0 = right padding, ``targets`` clean ids (structure and labels), ``loss_mask``
    positions scored by the loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def sample_masks(
    s: TokenStructure, masking: MaskingConfig, generator: torch.Generator
) -> torch.Tensor:
    """Which content positions to corrupt, bool [B, L] (see the module docstring); CPU tensors."""
    B = s.frame.shape[0]
    # Content grid of each sample: L_b = h*(w+1) tokens of frame 0, grid index row*(w+1)+col.
    width = torch.where(s.content, s.col, -1).max(1).values + 1  # w + 1 (0 without content)
    grid_len = (s.content & (s.frame == 0)).sum(1)
    grid = s.row * width[:, None] + s.col
    num_frames = max(int(s.frame.max()) + 1, 1)
    num_grid = max(int(grid_len.max()), 1)

    per_frame = masking.type == "diffusion_forcing"
    u = torch.rand(B, num_frames if per_frame else 1, generator=generator, dtype=torch.float64)
    p = mask_rate(u, masking.schedule, masking.min_rate)
    count = torch.round(p * grid_len[:, None]).long()  # [B, 1 or F]
    scores = torch.rand(
        B, 1 if masking.type == "tube" else num_frames, num_grid, generator=generator
    )
    outside = torch.arange(num_grid)[None, None, :] >= grid_len[:, None, None]
    scores = scores.masked_fill(outside, 2.0)  # beyond the grid: ranked last, never chosen
    rank = scores.argsort(-1).argsort(-1)
    chosen = (rank < count[:, :, None]).expand(B, num_frames, num_grid)
    flat = s.frame.clamp(min=0) * num_grid + grid.clamp(0, num_grid - 1)
    return s.content & chosen.reshape(B, -1).gather(1, flat)


def noise_history(
    inputs: torch.Tensor,
    s: TokenStructure,
    vocab: Vocabulary,
    max_rate: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``inputs`` [B, L] with a fraction ``r ~ U[0, max_rate)`` (one per sample) of the visible
    visual tokens of every frame before the sample's last replaced by random visual tokens."""
    B, L = inputs.shape
    last = s.frame.max(1).values[:, None]
    history = vocab.is_visual(inputs) & (s.frame < last)  # visual ids lie inside frames
    rate = torch.rand(B, 1, generator=generator) * max_rate
    flip = history & (torch.rand(B, L, generator=generator) < rate)
    lo, hi = vocab.visual_range
    return torch.where(flip, torch.randint(lo, hi, (B, L), generator=generator), inputs)


def collate(
    sequences: Sequence[torch.Tensor],
    vocab: Vocabulary,
    masking: MaskingConfig,
    generator: torch.Generator,
) -> Batch:
    """Text drop, right padding with ``vocab.pad`` and corruption of a list of 1-D sequences.

    Random draws, in order: text-drop coins [B], ratios, position scores, then with
    ``history_noise`` the noise rates [B], coins [B, L] and random ids [B, L] (all from
    ``generator``, on the CPU).
    """
    if not sequences:
        raise LumosError("cannot collate an empty batch")
    drop = torch.rand(len(sequences), generator=generator) < masking.text_drop
    seqs = [drop_text(x, vocab) if d else x for x, d in zip(sequences, drop.tolist(), strict=True)]
    lengths = torch.tensor([len(x) for x in seqs])
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=vocab.pad)
    valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    s = token_structure(ids, vocab, valid)
    masked = sample_masks(s, masking, generator)
    inputs = torch.where(masked, vocab.mask, ids)
    if masking.history_noise > 0:
        inputs = noise_history(inputs, s, vocab, masking.history_noise, generator)
    return Batch(
        input_ids=inputs,
        attention_mask=valid.long(),
        targets=ids,
        loss_mask=masked & vocab.is_visual(ids),
    )


# ---------------------------------------------------------------------------------- loss


class _VisualCrossEntropy(torch.autograd.Function):
    """Summed CE of ``h`` [N, d] against ``weight`` [V, d] rows; gradients are formed chunk by
    chunk during the forward pass, so at most one [chunk, V] logits block exists at a time."""

    @staticmethod
    def forward(ctx, h, weight, target, chunk_size):
        device_type = h.device.type
        dtype = (
            torch.get_autocast_dtype(device_type)
            if torch.is_autocast_enabled(device_type)
            else torch.promote_types(h.dtype, weight.dtype)
        )
        with torch.autocast(device_type, enabled=False):
            hc, w = h.to(dtype), weight.to(dtype)
            losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(hc)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], chunk_size):
                stop = min(start + chunk_size, h.shape[0])
                logits = (hc[start:stop] @ w.T).float()
                lse = logits.logsumexp(-1)
                t = target[start:stop]
                losses[start:stop] = lse - logits.gather(1, t[:, None]).squeeze(1)
                probs = logits.sub_(lse[:, None]).exp_()  # in place: one [chunk, V] block
                probs[torch.arange(stop - start, device=h.device), t] -= 1.0
                probs = probs.to(dtype)
                grad_h[start:stop] = probs @ w
                grad_w += (probs.T @ hc[start:stop]).float()
        ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        ctx.mark_non_differentiable(losses)
        return losses.sum(), losses

    @staticmethod
    def backward(ctx, grad_sum, grad_losses):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_sum, grad_w * grad_sum, None, None


def visual_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of hidden states ``h`` [N, d] under logits ``h @ weight.T`` ([V, d] rows,
    the visual slice of the head), targets ``target`` [N] in ``[0, V)``.

    Returns (sum over N, differentiable; per-position losses [N], fp32, detached). Peak extra
    memory is one [chunk_size, V] fp32 logits block plus, when training, fp32 gradients of
    ``h`` and ``weight``.
    """
    if chunk_size < 1:
        raise LumosError(f"loss chunk size must be >= 1, got {chunk_size}")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _VisualCrossEntropy.apply(h, weight, target, chunk_size)
    losses = h.new_zeros(h.shape[0], dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_size):
        stop = min(start + chunk_size, h.shape[0])
        logits = (h[start:stop] @ weight.T.to(h.dtype)).float()
        losses[start:stop] = F.cross_entropy(logits, target[start:stop], reduction="none")
    return losses.sum(), losses


@dataclass
class LossOutput:
    """``loss_sum`` (differentiable) over ``count`` scored positions; ``frame_loss_sum`` and
    ``frame_count`` [F] split them by latent frame (detached, fp32)."""

    loss_sum: torch.Tensor
    count: int
    frame_loss_sum: torch.Tensor
    frame_count: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean loss over the scored positions (0 when there are none)."""
        return self.loss_sum / max(self.count, 1)


def resolve_attention(mode: AttentionMode, device: torch.device) -> AttentionMode:
    """The training attention on ``device``: ``auto`` is ``flex`` on CUDA and ``split``
    elsewhere; ``flex`` elsewhere is an error (FlexAttention has no CPU backward)."""
    if mode == "auto":
        return "flex" if device.type == "cuda" else "split"
    if mode == "flex" and device.type != "cuda":
        raise LumosError(
            f"attention flex needs a CUDA device (FlexAttention has no backward on "
            f"{device.type}); use auto, split or dense"
        )
    return mode


class ARDFObjective(nn.Module):
    """The model plus its loss, as one module for DDP/FSDP wrapping (their hooks run on
    ``forward``). ``attention``: ``split`` (per-frame runs), ``dense`` (boolean mask) or
    ``flex`` (one FlexAttention call per layer; see :func:`resolve_attention`)."""

    def __init__(
        self, model: LumosModel, chunk_size: int = 1024, attention: AttentionMode = "split"
    ) -> None:
        super().__init__()
        if attention not in get_args(AttentionMode) or attention == "auto":
            raise LumosError(f"attention {attention!r} unknown; choose one of split, dense, flex")
        self.model, self.chunk_size, self.attention = model, chunk_size, attention

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: torch.Tensor,
        loss_mask: torch.Tensor,
    ) -> LossOutput:
        model = self.model
        valid = attention_mask.bool()
        positions, s = model.positions(targets, valid)  # structure of the clean sequence
        if self.attention == "dense":
            mask = model.attention_mask(s, valid)
        else:
            # Without frame-bidirectional attention (an ablation) every token is causal.
            causal = replace(s, frame=torch.full_like(s.frame, -1))
            spans = s if model.config.frame_bidirectional else causal
            attend = SplitFrameAttention if self.attention == "split" else FlexFrameAttention
            mask = attend(spans, valid)
        h, _ = model.hidden(input_ids, positions, mask)
        start, stop = model.vocab.visual_range
        loss_sum, losses = visual_cross_entropy(
            h[loss_mask],
            model.lm_head.weight[start:stop],
            targets[loss_mask] - start,
            self.chunk_size,
        )
        frames = s.frame[loss_mask]
        num_frames = max(int(s.frame.max()) + 1, 1)
        frame_loss = torch.zeros(num_frames, device=h.device).index_add_(0, frames, losses)
        frame_count = torch.bincount(frames, minlength=num_frames).float()
        return LossOutput(loss_sum, int(losses.numel()), frame_loss, frame_count)


def ardf_loss(
    model: LumosModel, batch: Batch, chunk_size: int = 1024, attention: str = "split"
) -> LossOutput:
    """The AR-DF loss of ``batch`` (on the model's device); ``.loss`` is the batch mean."""
    objective = ARDFObjective(model, chunk_size, attention)
    return objective(batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask)
