"""Videos longer than the model's context, prompt schedules and continuation, at flat cost.

A sliding window (docs/design.md, "Long videos"): the model never sees more than ``window``
latent frames at once, the length it was trained on. Each call of
:func:`~lumos.generation.generate.generate_frames` lays out a fresh context — the prompt of the
current segment, the kept frames (given frames always, then the most recent generated ones) as
history-masked given frames, and the new frames — so MM-RoPE positions restart inside the
trained range, the prompt header states the trained clip's timing, and the KV cache holds at
most ``window`` frames: memory and time per latent frame stop growing once the window is full.
Until then (and for a clip no longer than the window) a single call makes every frame exactly as
``generate_frames`` does.

A prompt schedule's later segments either carry the latent history on (the new prompt over the
previous segment's frames) or, with ``restart``, begin a new clip from the previous segment's
last RGB frame as image-to-video (its image latent given by ``restart``): the model then sees a
prompt and frames that agree, as in training, and the switch shows no transition frames.

Units: latent frames and latent tokens throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from lumos.errors import LumosError
from lumos.generation.generate import (
    GenerationConfig,
    GeneratorArg,
    StepCallback,
    device_generators,
    generate_frames,
)
from lumos.model.transformer import LumosModel


class Segment(NamedTuple):
    """A stretch of a video under one prompt (a plain ``(start, text_ids)`` tuple also works)."""

    start: int  # first latent frame
    text_ids: Sequence[Sequence[int]]  # the prompt's text ids, one list per video of the batch
    negative_ids: Sequence[Sequence[int]] | None = None  # negative prompt per video, or none


def generate_windowed(
    model: LumosModel,
    segments: Sequence[Segment],
    num_frames: int,
    height: int,
    width: int,
    window: int,
    duration: int,
    fps: int,
    given_frames: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    generator: GeneratorArg = None,
    callback: StepCallback | None = None,
    compile: bool = False,
    history: torch.Tensor | None = None,
    restart: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(f, codes [B, h, w], anchor)`` for latent frames ``t0 + th .. num_frames - 1``.

    ``given_frames`` [B, t0, h, w] stay in every window (image-to-video); ``history``
    [B, th, h, w] are frames that came before (video continuation): they slide out of the
    window like generated ones. Frame numbers count given, then history, then new frames.

    ``segments``: :class:`Segment` s (``start``, ``text_ids``, optional ``negative_ids``) in
    increasing ``start`` order, the first at 0; frame ``f`` follows the last segment starting at
    or before it. ``window``: latent frames the model sees at once (given ones included), at
    least ``t0 + 2``. ``duration``/``fps``: the header timing of a ``window``-frame clip (what
    the model was trained with).

    ``restart`` maps the codes of the clip so far [B, t, h, w] to the image latent [B, 1, h, w]
    of its last RGB frame; given, each later segment starts a new clip from it (image-to-video;
    the given frames and history of the earlier clip are no longer seen) and the first frame of
    that clip comes with ``anchor`` = that latent (the clip to decode it in is ``anchor`` then
    the new frames). Otherwise ``anchor`` is always None and one clip runs through."""
    segments = [Segment(*s) for s in segments]
    starts = [s.start for s in segments]
    if not segments or starts[0] != 0 or starts != sorted(set(starts)):
        raise LumosError("segments must start at latent frame 0 and in increasing order")
    if any(s >= num_frames for s in starts):
        raise LumosError(f"a segment starts at or after the last latent frame ({num_frames})")
    B = len(segments[0].text_ids)
    if any(len(s.text_ids) != B for s in segments):
        raise LumosError("every segment needs one prompt per video of the batch")
    if any(s.negative_ids is not None and len(s.negative_ids) != B for s in segments):
        raise LumosError("a segment's negative prompts must be one per video of the batch")
    t0 = 0 if given_frames is None else given_frames.shape[1]
    if window < t0 + 2:
        raise LumosError(f"window ({window}) must exceed the given frames ({t0}) by 2 or more")
    th = 0 if history is None else history.shape[1]
    if t0 + th >= num_frames:
        raise LumosError(f"num_frames ({num_frames}) must exceed the given frames ({t0 + th})")
    gens = device_generators(generator, B, model.lm_head.weight.device)
    return _windowed(
        model, segments, num_frames, height, width, window, duration, fps, given_frames,
        config, gens, callback, compile, history, restart,
    )  # fmt: skip


def _windowed(
    model, segments, num_frames, height, width, window, duration, fps, given_frames, config,
    gens, callback, compile, history, restart,
):  # fmt: skip
    device = model.lm_head.weight.device
    if given_frames is not None:
        given_frames = given_frames.to(device)
    t0 = 0 if given_frames is None else given_frames.shape[1]
    # frames that can slide out of the window, [B, h, w] each (device)
    made = [] if history is None else list(history.to(device).unbind(1))
    f = t0 + len(made)
    anchor = None
    while f < num_frames:
        seg = max(i for i, s in enumerate(segments) if s.start <= f)
        seg_end = segments[seg + 1].start if seg + 1 < len(segments) else num_frames
        if restart is not None and seg > 0 and f == segments[seg].start:  # a new clip
            clip = [given_frames] if t0 else []
            anchor = restart(torch.cat(clip + [c[:, None] for c in made], 1)).to(device)
            given_frames, t0, made = anchor, 1, []
        recent = made[len(made) - min(len(made), window - 1 - t0) :]
        context = ([given_frames] if t0 else []) + [c[:, None] for c in recent]
        given = torch.cat(context, 1) if context else None
        n_given = 0 if given is None else given.shape[1]
        new = min(window - n_given, seg_end - f, num_frames - f)

        def relay(frame, step, _total, steps, offset=f - n_given):
            if callback is not None:
                callback(frame + offset, step, num_frames, steps)

        for k, codes, _ in generate_frames(
            model, segments[seg].text_ids, n_given + new, height, width, duration, fps, given,
            config, gens, relay, compile, segments[seg].negative_ids,
        ):  # fmt: skip
            made.append(codes)
            yield f + k - n_given, codes, anchor
            anchor = None
        f += new
