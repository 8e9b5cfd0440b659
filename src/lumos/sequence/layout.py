"""Token sequence layout of Lumos-1 (docs/design.md, "Token layout"): builders and the inverse parser.

```
[BOS] text [SEP] VIDEO [SEP]
VIDEO = [VSTART, int(duration_s), int(fps)] FRAME_0 ... FRAME_{n-1} [VEND]
FRAME = [FSTART, int(H_px/32), int(W_px/32)] ROW_0 ... ROW_{h-1} [FEND]
ROW   = visual_0 ... visual_{w-1} [NEWLINE]
```
Grids ``codes`` are latent tokens ``[h, w]`` (visual tokenizer indices, not vocabulary ids);
pixel sizes are ``h * spatial`` by ``w * spatial``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lumos.errors import LumosError
from lumos.sequence.vocab import Vocabulary

PROMPT_TEMPLATE = (
    "Generate a video with a resolution of {width}x{height}, consisting of {num_frames} frames "
    "at {fps} frames per second, according to the following prompt:\n {caption}"
)
FRAME_HEADER_LEN = 3  # FSTART, int(H/32), int(W/32)
PIXELS_PER_HEADER_GRID = 32


def prompt_text(caption: str, width: int, height: int, fps: int, duration: int) -> str:
    """The official prompt wrapping a caption; ``width``/``height`` in pixels."""
    if not caption.strip():
        raise LumosError("the prompt is empty; give a sentence describing the video")
    return PROMPT_TEMPLATE.format(
        width=width, height=height, num_frames=fps * duration, fps=fps, caption=caption
    )


def header_timing(rgb_frames: int, fps: int) -> tuple[int, int]:
    """``(fps, duration)`` written in the prompt and the sequence header for a clip of
    ``rgb_frames`` RGB frames (not latent frames) sampled at ``fps``: an image is 1 s at 1 fps,
    a video lasts ``(rgb_frames - 1) // fps`` whole seconds, at least 1."""
    if rgb_frames == 1:
        return 1, 1
    return fps, max(1, (rgb_frames - 1) // fps)


def tokens_per_frame(h: int, w: int) -> int:
    """Tokens of one latent frame of ``h`` x ``w`` latent tokens, header and FEND included."""
    return FRAME_HEADER_LEN + h * (w + 1) + 1


def prefix_tokens(
    vocab: Vocabulary, text_ids: list[int] | None, duration: int, fps: int
) -> list[int]:
    """``[BOS] text [SEP] [VSTART, dur, fps]``; ``text_ids=None`` gives the unconditional
    prefix that starts at VSTART (classifier-free guidance)."""
    video = [vocab.video_start, vocab.int_token(duration), vocab.int_token(fps)]
    if text_ids is None:
        return video
    return [vocab.bos, *text_ids, vocab.sep, *video]


def frame_tokens(
    vocab: Vocabulary, codes: torch.Tensor | None, h: int, w: int, spatial: int = 8
) -> list[int]:
    """One latent frame. ``codes`` [h, w] visual indices, or None for an all-MASK frame."""
    if codes is not None and tuple(codes.shape) != (h, w):
        raise LumosError(f"frame codes have shape {tuple(codes.shape)}, expected {(h, w)}")
    grid_h = vocab.int_token(h * spatial // PIXELS_PER_HEADER_GRID)
    grid_w = vocab.int_token(w * spatial // PIXELS_PER_HEADER_GRID)
    if codes is None:
        body = torch.full((h, w), vocab.mask, dtype=torch.long)
    else:
        body = vocab.codes_to_ids(codes.long().cpu())
    rows = torch.cat([body, torch.full((h, 1), vocab.newline, dtype=torch.long)], dim=1)
    return [vocab.frame_start, grid_h, grid_w, *rows.flatten().tolist(), vocab.frame_end]


def build_sequence(
    vocab: Vocabulary,
    text_ids: list[int] | None,
    frames: torch.Tensor,
    duration: int,
    fps: int,
    spatial: int = 8,
    close: bool = True,
) -> torch.Tensor:
    """A full training sequence for one sample.

    ``frames``: latent codes [t, h, w] (t = 1 for an image; use duration = fps = 1 then).
    ``close`` appends ``[VEND, SEP]``. Returns a LongTensor [L].
    """
    if frames.dim() != 3:
        raise LumosError(f"frames must be latent codes [t, h, w], got shape {tuple(frames.shape)}")
    _, h, w = frames.shape
    ids = prefix_tokens(vocab, text_ids, duration, fps)
    for codes in frames:
        ids += frame_tokens(vocab, codes, h, w, spatial)
    if close:
        ids += [vocab.video_end, vocab.sep]
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class ParsedSequence:
    """A sequence split into its parts. ``frames`` are vocabulary ids [h, w] per latent frame
    (visual ids or MASK); use ``Vocabulary.ids_to_codes`` for tokenizer indices."""

    text_ids: list[int] | None
    duration: int
    fps: int
    frames: list[torch.Tensor] = field(default_factory=list)
    header_grid: tuple[int, int] | None = None  # (H_px/32, W_px/32) from the frame headers
    complete: bool = False  # VEND seen


def parse_sequence(vocab: Vocabulary, ids: torch.Tensor | list[int]) -> ParsedSequence:
    """Inverse of :func:`build_sequence` (a trailing partial frame is an error).

    Accepts sequences with or without the text part, with or without ``[VEND, SEP]``.
    """
    seq = [int(x) for x in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    while seq and seq[-1] == vocab.pad:
        seq.pop()
    try:
        vstart = seq.index(vocab.video_start)
    except ValueError:
        raise LumosError("malformed sequence: no video-start token") from None
    text_ids = None
    if vstart > 0:
        if seq[0] != vocab.bos or seq[vstart - 1] != vocab.sep:
            raise LumosError("malformed sequence: text must be [BOS] ... [SEP] before video start")
        text_ids = seq[1 : vstart - 1]
    if len(seq) < vstart + 3:
        raise LumosError("malformed sequence: video header is cut short")
    parsed = ParsedSequence(
        text_ids, vocab.int_value(seq[vstart + 1]), vocab.int_value(seq[vstart + 2])
    )
    pos = vstart + 3
    shape = None
    while pos < len(seq):
        tok = seq[pos]
        if tok == vocab.video_end:
            parsed.complete = True
            rest = seq[pos + 1 :]
            if rest not in ([], [vocab.sep]):
                raise LumosError(
                    f"malformed sequence: {len(rest)} unexpected tokens after video end"
                )
            break
        if tok != vocab.frame_start:
            raise LumosError(
                f"malformed sequence: expected frame start at position {pos}, got {tok}"
            )
        try:
            end = seq.index(vocab.frame_end, pos)
        except ValueError:
            raise LumosError(
                f"malformed sequence: frame at position {pos} has no frame end"
            ) from None
        grid = (vocab.int_value(seq[pos + 1]), vocab.int_value(seq[pos + 2]))
        body = torch.tensor(seq[pos + FRAME_HEADER_LEN : end], dtype=torch.long)
        rows = _split_rows(vocab, body, pos)
        if shape is not None and rows.shape != shape:
            raise LumosError(
                f"malformed sequence: frame at position {pos} has grid {tuple(rows.shape)}, "
                f"earlier frames {tuple(shape)}"
            )
        shape = rows.shape
        parsed.header_grid = grid
        parsed.frames.append(rows)
        pos = end + 1
    return parsed


def _split_rows(vocab: Vocabulary, body: torch.Tensor, pos: int) -> torch.Tensor:
    newlines = (body == vocab.newline).nonzero().flatten()
    if len(newlines) == 0 or newlines[-1] != len(body) - 1:
        raise LumosError(f"malformed sequence: frame at position {pos} does not end its last row")
    w = int(newlines[0])
    h = len(newlines)
    if len(body) != h * (w + 1) or not bool((newlines == torch.arange(h) * (w + 1) + w).all()):
        raise LumosError(f"malformed sequence: frame at position {pos} has rows of unequal length")
    rows = body.view(h, w + 1)[:, :w]
    if not bool((vocab.is_visual(rows) | (rows == vocab.mask)).all()):
        raise LumosError(f"malformed sequence: frame at position {pos} holds non-visual tokens")
    return rows
