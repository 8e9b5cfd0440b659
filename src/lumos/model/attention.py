"""Frame-causal training attention without a dense L x L mask (docs/design.md, "Frame-causal
attention"): split per frame run (SDPA; any device) or in one FlexAttention call (CUDA).

``allowed(q, k) = k <= q or (q, k in the same frame span)`` means a query inside frame span
``[a, b)`` sees exactly the keys ``[0, b)``, and a query outside every frame sees ``[0, q]``.
So a training sequence splits into runs of equal ``TokenStructure.frame``: a frame run is one
unmasked attention call over its prefix, a run outside frames (text, SEP, VSTART, VEND, padding)
is causal. Samples with identical runs are batched together.

:class:`SplitFrameAttention` carries that plan through the model: it is passed where the dense
boolean mask would go (``LumosModel.hidden(ids, positions, mask)``), and the model's attention
calls it instead of ``F.scaled_dot_product_attention``. It survives activation checkpointing
(the recomputation receives the same argument) and FSDP2 (it is not a tensor).

Measured on CPU (``benchmarks/bench_training.py``): the decoder stack's forward + backward is
1.1-1.5x faster than with the dense mask at 1k-8k tokens, and no L x L mask is kept per layer,
so activation memory grows linearly with the length.

On a GPU the split is launch-bound (one call per run per sample group, more in the backward):
:class:`FlexFrameAttention` makes the same rule one FlexAttention call per layer, with a block
mask built once per batch from the token structure (blocks wholly inside the causal part or a
frame are computed without evaluating the mask, blocks outside it are skipped). Keys and values
keep their ``H_kv`` heads (``enable_gqa``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from lumos.sequence.structure import TokenStructure


class AttentionFunction(Protocol):
    """Replaces ``F.scaled_dot_product_attention`` inside the model's attention layers:
    ``q`` [B, H, L, D], ``k``/``v`` [B, H_kv, S, D] (already rotated and cached) -> [B, H, L, D]."""

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool
    ) -> torch.Tensor: ...


# What the model's layers take as ``mask``: a boolean mask broadcastable to [B, H, L, S]
# (True = may attend), an attention function, or None (every query sees every key).
AttentionMask = torch.Tensor | AttentionFunction | None

PAD_RUN = -2  # frame value given to padding so it never joins a real run


@dataclass(frozen=True)
class Run:
    """Queries ``[start, stop)``; keys ``[0, stop)``; ``causal``: key j only for j <= query."""

    start: int
    stop: int
    causal: bool


@dataclass(frozen=True)
class RunGroup:
    """Samples (batch rows) that share one list of runs."""

    rows: tuple[int, ...]
    runs: tuple[Run, ...]


def plan_runs(s: TokenStructure, valid: torch.Tensor | None = None) -> tuple[RunGroup, ...]:
    """Group the batch by run lists. ``valid`` [B, L] must be right padding (a prefix of 1s)."""
    frame = s.frame
    B, L = frame.shape
    if valid is not None:
        lengths = valid.sum(1)
        if not bool((valid == (torch.arange(L, device=valid.device) < lengths[:, None])).all()):
            raise ValueError("split-per-frame attention needs right padding")
        frame = torch.where(valid, frame, PAD_RUN)
    change = torch.ones(B, L, dtype=torch.bool, device=frame.device)
    change[:, 1:] = frame[:, 1:] != frame[:, :-1]
    starts = change.nonzero().tolist()  # one Python entry per run, not per token
    run_frames = frame[change].tolist()
    per_row: list[list[tuple[int, int]]] = [[] for _ in range(B)]
    for (b, start), f in zip(starts, run_frames, strict=True):
        per_row[b].append((start, f))
    groups: dict[tuple[Run, ...], list[int]] = {}
    for b, row in enumerate(per_row):
        bounds = [start for start, _ in row] + [L]
        runs = tuple(
            Run(start, stop, f < 0) for (start, f), stop in zip(row, bounds[1:], strict=True)
        )
        groups.setdefault(runs, []).append(b)
    return tuple(RunGroup(tuple(rows), runs) for runs, rows in groups.items())


class _Prefixes(torch.autograd.Function):
    """Views ``x[:, :, :stop]`` for every stop; the backward adds their gradients into one
    buffer. (Slicing with autograd would expand each run's key gradient to the full length.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stops: tuple[int, ...]):
        ctx.shape, ctx.stops = x.shape, stops
        return tuple(x[:, :, :stop] for stop in stops)

    @staticmethod
    def backward(ctx, *grads):
        total = None
        for stop, grad in zip(ctx.stops, grads, strict=True):
            if grad is not None:
                if total is None:
                    total = grad.new_zeros(ctx.shape)
                total[:, :, :stop] += grad
        return total, None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, run: Run, gqa: bool):
    if not run.causal:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if run.start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    keys = torch.arange(run.stop, device=q.device)
    queries = torch.arange(run.start, run.stop, device=q.device)
    mask = keys[None, :] <= queries[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def split_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    groups: tuple[RunGroup, ...],
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Frame-causal attention of ``q`` [B, H, L, D] over ``k``/``v`` [B, H_kv, L, D] by runs."""
    B = q.shape[0]
    outputs, order = [], []
    for group in groups:
        rows = None if len(group.rows) == B else torch.tensor(group.rows, device=q.device)
        qg, kg, vg = (x if rows is None else x.index_select(0, rows) for x in (q, k, v))
        stops = tuple(run.stop for run in group.runs)
        queries = qg.split([run.stop - run.start for run in group.runs], dim=2)
        parts = [
            _attend(qr, kr, vr, run, enable_gqa)
            for qr, kr, vr, run in zip(
                queries,
                _Prefixes.apply(kg, stops),
                _Prefixes.apply(vg, stops),
                group.runs,
                strict=True,
            )
        ]
        outputs.append(torch.cat(parts, dim=2))
        order.extend(group.rows)
    out = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    if order == list(range(B)):
        return out
    inverse = torch.empty(B, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(B)
    return out.index_select(0, inverse.to(q.device))


class SplitFrameAttention:
    """Per-frame-run attention for full-sequence training forwards, passed to the model in
    place of a dense mask (``LumosModel.hidden(ids, positions, SplitFrameAttention(s, valid))``):
    the model calls it as ``attend(q, k, v, enable_gqa)``. Not for KV-cached forwards."""

    def __init__(self, s: TokenStructure, valid: torch.Tensor | None = None) -> None:
        self.groups = plan_runs(s, valid)
        self.attend = _eager_split_attention()  # resolved here, outside any compiled region

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool = False
    ) -> torch.Tensor:
        if k.shape[2] != q.shape[2]:
            raise ValueError("SplitFrameAttention needs a full-sequence forward (no KV cache)")
        return self.attend(q, k, v, self.groups, enable_gqa)


@functools.cache
def _eager_split_attention():
    """``split_attention`` kept out of compiled graphs (a Python loop over the batch's runs: eager
    inside compiled layers). Disabled on first use, not at import: ``torch.compiler.disable``
    imports ``torch._dynamo``, about 70 MB of resident memory that generation never needs."""
    return torch.compiler.disable(split_attention)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class FlexFrameAttention:
    """Frame-causal attention in one FlexAttention call per layer, passed to the model in place
    of a dense mask like :class:`SplitFrameAttention`. The block mask is built once (here, per
    batch) and shared by every layer; the rule is :func:`lumos.sequence.structure.
    frame_causal_mask`'s exactly (padding keys excluded, a padding query sees itself).

    On CUDA FlexAttention runs compiled (a fused kernel with a backward); on the CPU only its
    unfused forward exists, which the tests compare with the dense mask. ``block_size``: the
    mask's tile (FlexAttention's default 128)."""

    def __init__(
        self, s: TokenStructure, valid: torch.Tensor | None = None, block_size: int = 128
    ) -> None:
        from torch.nn.attention.flex_attention import create_block_mask

        frame = s.frame
        B, L = frame.shape
        keep = torch.ones_like(frame, dtype=torch.bool) if valid is None else valid.bool()

        def frame_causal(b, h, q, k):
            same_frame = (frame[b, q] == frame[b, k]) & (frame[b, q] >= 0)
            return (((k <= q) | same_frame) & keep[b, k]) | (q == k)

        self.mask_mod = frame_causal
        self.block_mask = create_block_mask(
            frame_causal,
            B,
            None,
            L,
            L,
            device=frame.device,
            BLOCK_SIZE=block_size,
            _compile=frame.device.type != "cpu",
        )

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool = False
    ) -> torch.Tensor:
        if k.shape[2] != q.shape[2]:
            raise ValueError("FlexFrameAttention needs a full-sequence forward (no KV cache)")
        if q.device.type != "cpu" and not torch.compiler.is_compiling():
            attend = _compiled_flex_attention()
            return attend(q, k, v, block_mask=self.block_mask, enable_gqa=enable_gqa)
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():  # the CPU (test) path is the unfused one on purpose
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=self.block_mask, enable_gqa=enable_gqa)
