import math

import pytest
import torch
import torch.nn.functional as F

from lumos.errors import LumosError
from lumos.model.attention import SplitFrameAttention, plan_runs
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.sequence.layout import build_sequence
from lumos.sequence.structure import token_structure
from lumos.sequence.vocab import Vocabulary
from lumos.training.config import MaskingConfig
from lumos.training.objective import (
    ARDFObjective,
    ardf_loss,
    collate,
    mask_rate,
    visual_cross_entropy,
)

VOCAB = Vocabulary.compact(text_size=128, codebook_size=64, num_ints=40)


def make_sequences(n, frames=3, h=3, w=5, text_lens=None, gen=None):
    """Random samples with different text lengths; ``frames`` latent frames of h x w."""
    gen = gen or torch.Generator().manual_seed(1)
    text_lens = text_lens or [3 + 4 * i for i in range(n)]
    seqs = []
    for t in text_lens[:n]:
        text = torch.randint(50, 128, (t,), generator=gen).tolist()
        codes = torch.randint(0, VOCAB.codebook_size, (frames, h, w), generator=gen)
        dur, fps = (1, 1) if frames == 1 else (2, 4)
        seqs.append(build_sequence(VOCAB, text, codes, dur, fps))
    return seqs


def frame_grids(batch, b):
    """Masked flags of sample ``b`` as [frames, h*(w+1)] over the content grid."""
    valid = batch.attention_mask.bool()
    s = token_structure(batch.targets, VOCAB, valid)
    content = s.content[b]
    frames = s.frame[b][content]
    masked = (batch.input_ids[b] == VOCAB.mask)[content]
    num_frames = int(frames.max()) + 1
    return masked.view(num_frames, -1)


def expected_counts(gen_state, n, grid_len, per_frame=0):
    """Replays the documented draw order: text-drop coins [B], then ratios."""
    g = torch.Generator().set_state(gen_state)
    torch.rand(n, generator=g)
    u = torch.rand(n, max(per_frame, 1), generator=g, dtype=torch.float64)
    p = mask_rate(u, "cosine", 0.7)
    return torch.round(p * grid_len).long()


def test_mask_rate_schedules():
    u = torch.rand(1000, dtype=torch.float64)
    p = mask_rate(u, "cosine", 0.7)
    assert torch.allclose(p, torch.cos(math.pi / 2 * u).clamp(min=0.7))
    assert p.min() >= 0.7 and p.max() <= 1.0
    assert torch.allclose(mask_rate(u, "linear", 0.0), 1 - u)
    assert (mask_rate(u, "arccos", 0.2) >= 0.2).all()


def test_tube_masks_identical_across_frames_with_counts():
    masking = MaskingConfig(type="tube", text_drop=0.0)
    seqs = make_sequences(4, frames=3, h=3, w=5)
    gen = torch.Generator().manual_seed(torch.randint(0, 2**30, ()).item())
    state = gen.get_state()
    batch = collate(seqs, VOCAB, masking, gen)
    L = 3 * (5 + 1)
    counts = expected_counts(state, 4, L)[:, 0]
    assert (counts >= round(0.7 * L)).all()
    for b in range(4):
        grids = frame_grids(batch, b)
        assert grids.shape == (3, L)
        assert (grids == grids[0]).all()
        assert int(grids[0].sum()) == counts[b]
    # Loss positions: masked and visual; masked NEWLINEs are corrupted but not scored.
    assert (batch.loss_mask <= (batch.input_ids == VOCAB.mask)).all()
    assert (batch.loss_mask <= VOCAB.is_visual(batch.targets)).all()
    masked_newlines = (batch.input_ids == VOCAB.mask) & (batch.targets == VOCAB.newline)
    assert masked_newlines.any() and not (batch.loss_mask & masked_newlines).any()
    # Only content is corrupted.
    changed = batch.input_ids != batch.targets
    assert (changed == ((batch.input_ids == VOCAB.mask) & (batch.targets != VOCAB.mask))).all()


def test_min_rate_is_respected():
    seqs = make_sequences(8, frames=2, h=4, w=3)
    for min_rate in (0.0, 0.5, 0.9, 1.0):
        batch = collate(
            seqs, VOCAB, MaskingConfig(min_rate=min_rate, text_drop=0.0), torch.Generator()
        )
        for b in range(8):
            frac = frame_grids(batch, b).float().mean(1)
            assert (frac >= round(min_rate * 16) / 16 - 1e-9).all()
        if min_rate == 1.0:
            assert (
                (batch.input_ids == VOCAB.mask)
                == token_structure(batch.targets, VOCAB, batch.attention_mask.bool()).content
            ).all()


def test_random_and_diffusion_forcing_masks():
    seqs = make_sequences(4, frames=4, h=4, w=6, text_lens=[2, 9, 5, 3])
    L = 4 * 7
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    batch = collate(seqs, VOCAB, MaskingConfig(type="random", text_drop=0.0), gen)
    counts = expected_counts(state, 4, L)[:, 0]
    differ = 0
    for b in range(4):
        grids = frame_grids(batch, b)
        assert (grids.sum(1) == counts[b]).all()  # same ratio in every frame
        differ += int(not (grids == grids[0]).all())
    assert differ >= 3  # positions drawn independently per frame

    gen = torch.Generator().manual_seed(6)
    state = gen.get_state()
    batch = collate(seqs, VOCAB, MaskingConfig(type="diffusion_forcing", text_drop=0.0), gen)
    counts = expected_counts(state, 4, L, per_frame=4)
    assert (counts != counts[:, :1]).any()  # ratios differ between frames
    for b in range(4):
        assert (frame_grids(batch, b).sum(1) == counts[b]).all()


def test_text_drop_strips_prefix_and_restarts_positions():
    seqs = make_sequences(3, frames=2, h=2, w=3)
    batch = collate(seqs, VOCAB, MaskingConfig(text_drop=1.0), torch.Generator())
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB))
    valid = batch.attention_mask.bool()
    positions, _ = model.positions(batch.targets, valid)
    codes_seq = [x[(x == VOCAB.video_start).nonzero()[0, 0] :] for x in seqs]
    for b, ref in enumerate(codes_seq):
        n = int(valid[b].sum())
        assert n == len(ref)
        assert torch.equal(batch.targets[b, :n], ref)
        assert batch.targets[b, 0] == VOCAB.video_start
        assert (batch.targets[b, n:] == VOCAB.pad).all()
        assert positions[b, :, 0].tolist() == [0, 0, 0]
    # With probability 0 nothing is dropped.
    batch = collate(seqs, VOCAB, MaskingConfig(text_drop=0.0), torch.Generator())
    assert (batch.targets[:, 0] == VOCAB.bos).all()


def naive_loss(model, batch):
    """Reference: dense mask, full-vocabulary logits, -inf outside the visual slice."""
    valid = batch.attention_mask.bool()
    positions, s = model.positions(batch.targets, valid)
    h, _ = model.hidden(batch.input_ids, positions, model.attention_mask(s, valid))
    logits = model.lm_head(h).float()
    start, stop = VOCAB.visual_range
    outside = torch.ones(logits.shape[-1], dtype=torch.bool)
    outside[start:stop] = False
    logits = logits.masked_fill(outside, float("-inf"))
    return F.cross_entropy(logits[batch.loss_mask], batch.targets[batch.loss_mask])


@pytest.mark.parametrize("attention", ["split", "dense"])
def test_chunked_loss_matches_naive_reference(attention):
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB))
    seqs = make_sequences(3, frames=3, h=3, w=5, text_lens=[4, 11, 7])
    batch = collate(seqs, VOCAB, MaskingConfig(text_drop=0.3), torch.Generator().manual_seed(3))

    ref = naive_loss(model, batch)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    out = ardf_loss(model, batch, chunk_size=7, attention=attention)
    out.loss.backward()
    assert out.count == batch.num_loss_tokens
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    # Per-frame losses sum to the total.
    assert out.frame_count.sum() == out.count
    torch.testing.assert_close(
        out.frame_loss_sum.sum(), out.loss_sum.detach(), atol=1e-4, rtol=1e-6
    )
    assert out.frame_loss_sum.shape == (3,)


def test_visual_cross_entropy_no_grad_matches_grad_path():
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(11, 16, requires_grad=True)
    t = torch.randint(0, 11, (37,))
    total, per = visual_cross_entropy(h, w, t, chunk_size=5)
    with torch.no_grad():
        total2, per2 = visual_cross_entropy(h, w, t, chunk_size=8)
    torch.testing.assert_close(per, per2)
    torch.testing.assert_close(per, F.cross_entropy(h @ w.T, t, reduction="none"))
    (total * 0.5).backward()
    hr, wr = h.detach().requires_grad_(), w.detach().requires_grad_()
    (F.cross_entropy(hr @ wr.T, t, reduction="sum") * 0.5).backward()
    torch.testing.assert_close(h.grad, hr.grad)
    torch.testing.assert_close(w.grad, wr.grad)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_split_attention_matches_dense(checkpointing):
    # float64: both paths must agree to rounding, so any masking difference would show.
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB)).double().train()
    model.gradient_checkpointing = checkpointing
    # Two samples share a layout (batched together), one image sample differs; padding.
    seqs = make_sequences(2, frames=3, h=2, w=4, text_lens=[5, 5])
    seqs += make_sequences(1, frames=1, h=3, w=2, text_lens=[2])
    seqs += make_sequences(1, frames=2, h=2, w=4, text_lens=[9])
    batch = collate(seqs, VOCAB, MaskingConfig(text_drop=0.0), torch.Generator())
    valid = batch.attention_mask.bool()
    positions, s = model.positions(batch.targets, valid)
    groups = plan_runs(s, valid)
    assert len(groups) == 3 and groups[0].rows == (0, 1)

    probe = torch.randn(*batch.input_ids.shape, 128, dtype=torch.float64) * valid[..., None]
    outs = []
    for mask in (model.attention_mask(s, valid), SplitFrameAttention(s, valid)):
        h, _ = model.hidden(batch.input_ids, positions, mask)
        (h * probe).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        outs.append((h[valid], grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-10, rtol=1e-10)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_objective_module_forward_matches_function():
    model = LumosModel(LumosConfig.tiny(vocabulary=VOCAB))
    seqs = make_sequences(2, frames=2, h=3, w=3)
    batch = collate(seqs, VOCAB, MaskingConfig(), torch.Generator().manual_seed(0))
    module = ARDFObjective(model, chunk_size=16)
    out = module(batch.input_ids, batch.attention_mask, batch.targets, batch.loss_mask)
    torch.testing.assert_close(out.loss, ardf_loss(model, batch).loss)


def test_visual_cross_entropy_under_bf16_autocast():
    h = torch.randn(40, 32, requires_grad=True)
    w = torch.randn(50, 32, requires_grad=True)
    t = torch.randint(0, 50, (40,))
    ref = F.cross_entropy(h @ w.T, t, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, per = visual_cross_entropy(h, w, t, chunk_size=16)
    assert per.dtype == torch.float32
    torch.testing.assert_close(total, ref, rtol=2e-2, atol=0.5)
    total.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    hr, wr = h.detach().requires_grad_(), w.detach().requires_grad_()
    F.cross_entropy(hr @ wr.T, t, reduction="sum").backward()
    torch.testing.assert_close(h.grad, hr.grad, rtol=0.1, atol=0.05)


def test_masking_config_names_every_schedule_and_rejects_unknown_values():
    from typing import get_args

    from lumos.sequence.masking import SCHEDULES
    from lumos.training.config import MaskSchedule

    assert set(get_args(MaskSchedule)) == set(SCHEDULES)
    for bad in ({"type": "stripes"}, {"schedule": "cubic"}, {"min_rate": 1.5}):
        with pytest.raises(LumosError, match="masking"):
            MaskingConfig(**bad)


def test_history_noise_replaces_only_visible_history_tokens():
    """``history_noise``: the same masks and loss as without it (the noise is drawn after them);
    only visible visual tokens of frames before a sample's last are replaced, by visual ids;
    images, text, masked positions and the last frame are untouched."""
    seqs = make_sequences(6, frames=3, h=4, w=5, text_lens=[3, 8, 5, 2, 6, 4])
    seqs += make_sequences(2, frames=1, h=4, w=5, text_lens=[4, 7])  # images: no history
    seed = torch.randint(0, 2**30, ()).item()
    clean = collate(seqs, VOCAB, MaskingConfig(text_drop=0.0), torch.Generator().manual_seed(seed))
    noisy = collate(
        seqs, VOCAB, MaskingConfig(text_drop=0.0, history_noise=1.0),
        torch.Generator().manual_seed(seed),
    )  # fmt: skip
    assert torch.equal(clean.targets, noisy.targets)
    assert torch.equal(clean.loss_mask, noisy.loss_mask)
    assert torch.equal(clean.input_ids == VOCAB.mask, noisy.input_ids == VOCAB.mask)
    s = token_structure(clean.targets, VOCAB, clean.attention_mask.bool())
    last = s.frame.max(1).values[:, None]
    history = VOCAB.is_visual(clean.targets) & (clean.input_ids != VOCAB.mask)
    history &= (s.frame >= 0) & (s.frame < last)
    changed = noisy.input_ids != clean.input_ids
    assert (changed <= history).all()
    assert VOCAB.is_visual(noisy.input_ids[changed]).all()
    assert not changed[6:].any()  # images
    # Rates are drawn per sample in [0, 1): some visible history changes, not all of it.
    frac = changed.sum() / history.sum()
    assert 0.1 < frac < 0.9, frac
    with pytest.raises(LumosError, match="history_noise"):
        MaskingConfig(history_noise=1.5)
