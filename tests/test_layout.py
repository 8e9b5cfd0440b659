import pytest
import torch

from lumos import LumosError, Vocabulary
from lumos.sequence.layout import (
    build_sequence,
    frame_tokens,
    header_timing,
    parse_sequence,
    prompt_text,
    tokens_per_frame,
)
from lumos.sequence.structure import frame_causal_mask, rope_positions, token_structure

V = Vocabulary.official()


def test_frame_tokens_layout_non_square():
    codes = torch.arange(6).view(2, 3)
    ids = frame_tokens(V, codes, 2, 3)
    # 2 latent rows x 3 cols -> 16 x 24 pixels -> header ints 0 and 0 (H/32, W/32, floored)
    assert ids[:3] == [V.frame_start, V.int_token(0), V.int_token(0)]
    body = [65536, 65537, 65538, V.newline, 65539, 65540, 65541, V.newline]
    assert ids[3:-1] == body and ids[-1] == V.frame_end
    assert len(ids) == tokens_per_frame(2, 3) == 4 + 2 * 4
    big = frame_tokens(V, None, 32, 56)  # 256 x 448 pixels
    assert big[1:3] == [V.int_token(8), V.int_token(14)]
    assert big.count(V.mask) == 32 * 56


def test_build_and_parse_round_trip():
    frames = torch.randint(0, 64000, (3, 4, 6))
    seq = build_sequence(V, [11, 12, 13], frames, duration=2, fps=12)
    assert seq[0] == V.bos and seq[4] == V.sep and seq[5] == V.video_start
    assert seq[-2:].tolist() == [V.video_end, V.sep]
    parsed = parse_sequence(V, seq)
    assert parsed.text_ids == [11, 12, 13] and (parsed.duration, parsed.fps) == (2, 12)
    assert parsed.complete and len(parsed.frames) == 3
    for got, want in zip(parsed.frames, frames, strict=True):
        assert torch.equal(V.ids_to_codes(got), want)
    uncond = build_sequence(V, None, frames[:1], 1, 1, close=False)
    p = parse_sequence(V, uncond)
    assert p.text_ids is None and not p.complete and len(p.frames) == 1


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s[: len(s) // 2],  # cut inside a frame
        lambda s: [t for t in s if t != V.video_start],
        lambda s: s[:12] + [V.newline] + s[12:],  # a row of unequal length
        lambda s: s[:-2] + [5, 5, 5],
    ],
)
def test_parse_malformed_sequences(corrupt):
    seq = build_sequence(V, [7], torch.randint(0, 100, (2, 2, 3)), 1, 8).tolist()
    with pytest.raises(LumosError, match="malformed|integer"):
        parse_sequence(V, corrupt(seq))


def test_prompt_text():
    text = prompt_text("a cat", 448, 256, 12, 2)
    assert text.startswith("Generate a video with a resolution of 448x256, consisting of 24 frames")
    assert text.endswith("prompt:\n a cat")
    with pytest.raises(LumosError):
        prompt_text("  ", 448, 256, 12, 2)


def reference_positions(ids: list[int], scale_t=4, scale_hw=8):
    """Per-token loop reference of the position formula (docs/design.md, "MM-RoPE")."""
    t, h, w = list(range(len(ids))), list(range(len(ids))), list(range(len(ids)))
    content, frame, i, p0 = [], -1, 0, None
    while i < len(ids):
        if ids[i] == V.frame_start:
            frame += 1
            i += 3
            row, col = 0, 0
            while ids[i] != V.frame_end:
                content.append((i, frame, row, col))
                if ids[i] == V.newline:
                    row, col = row + 1, 0
                else:
                    col += 1
                i += 1
        i += 1
    p0 = content[0][0]
    for i, f, r, c in content:
        t[i], h[i], w[i] = scale_t * f + p0, scale_hw * r + p0, scale_hw * c + p0
    return torch.tensor([t, h, w])


def test_mm_rope_positions_non_square_i2v_prefix_hand_values():
    # text of 2 ids, a given 2x3 frame, then a masked frame (an I2V prefix plus the frame to make)
    frames = torch.randint(0, 100, (1, 2, 3))
    seq = build_sequence(V, [21, 22], frames, 1, 8, close=False).tolist()
    seq += frame_tokens(V, None, 2, 3)
    s = token_structure(torch.tensor([seq]), V)
    pos = rope_positions(s)[0]
    # [BOS, 21, 22, SEP, VSTART, 1, 8] = 7 tokens, FSTART at 7, header to 9, content from 10
    assert int(s.p0) == 10
    assert pos[:, 9].tolist() == [9, 9, 9]  # a frame-header token keeps its index
    assert pos[:, 10].tolist() == [10, 10, 10]  # frame 0, row 0, col 0
    assert pos[:, 13].tolist() == [10, 10, 10 + 24]  # the NEWLINE of row 0 has col = w = 3
    assert pos[:, 14].tolist() == [10, 18, 10]  # row 1
    assert pos[:, 18].tolist() == [18, 18, 18]  # FEND: its index
    # second frame: FSTART at 19, content from 22 -> t = 4 + P0
    assert pos[:, 22].tolist() == [14, 10, 10]
    assert pos[:, 29].tolist() == [14, 18, 10 + 24]
    assert torch.equal(pos, reference_positions(seq))


def test_left_padding_does_not_shift_positions_or_leak():
    a = build_sequence(V, [1, 2, 3, 4], torch.randint(0, 99, (2, 2, 2)), 1, 4)
    b = build_sequence(V, [5], torch.randint(0, 99, (2, 2, 2)), 1, 4)
    pad = len(a) - len(b)
    batch = torch.stack([a, torch.cat([torch.full((pad,), V.pad), b])])
    valid = batch != V.pad
    valid[0] = True
    s = token_structure(batch, V, valid)
    pos = rope_positions(s)
    single = rope_positions(token_structure(b[None], V))
    assert torch.equal(pos[1, :, pad:], single[0])
    mask = frame_causal_mask(s, valid)
    assert not mask[1, 0, pad:, :pad].any()  # real tokens never see padding
    single_mask = frame_causal_mask(token_structure(b[None], V))
    assert torch.equal(mask[1, 0, pad:, pad:], single_mask[0, 0])


def test_structure_slice_keeps_positions_of_the_full_sequence():
    frames = torch.randint(0, 99, (3, 2, 3))
    seqs = [build_sequence(V, [7, 8, 9], frames, 1, 8), build_sequence(V, [5, 6, 4], frames, 1, 8)]
    s = token_structure(torch.stack(seqs), V)
    full = rope_positions(s)
    for start, end in [(0, 5), (12, 30), (20, len(seqs[0]))]:
        part = s.slice(start, end)
        assert part.frame.shape == (2, end - start) and torch.equal(part.p0, s.p0)
        assert torch.equal(rope_positions(part), full[:, :, start:end])
        assert torch.equal(part.content, s.content[:, start:end])


def test_header_timing_counts_rgb_frames():
    assert header_timing(1, 12) == (1, 1)  # an image: 1 s at 1 fps
    assert header_timing(25, 12) == (12, 2)  # 7 latent frames of a 4x temporal tokenizer
    assert header_timing(9, 4) == (4, 2) and header_timing(5, 12) == (12, 1)  # at least 1 s
