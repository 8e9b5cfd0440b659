import math

import pytest
import torch

import lumos.generation.generate as gen
from helpers import tiny_model
from lumos import LumosError
from lumos.generation.generate import (
    GenerationConfig,
    generate,
    history_mask_indices,
    unmask_schedule,
)
from lumos.sequence.layout import FRAME_HEADER_LEN, build_sequence, frame_tokens


@pytest.fixture
def record_sampling(monkeypatch):
    """Record the hidden states and tau handed to the sampler at every step."""
    calls = []
    real = gen._sample

    def spy(model, h_at, B, cfg, gens, tau):
        calls.append((h_at.clone(), tau))
        return real(model, h_at, B, cfg, gens, tau)

    monkeypatch.setattr(gen, "_sample", spy)
    return calls


def run(model, prompts, seed=0, per_prompt_generators=False, **kw):
    cfg = GenerationConfig(**{"num_steps": 4, "guidance_scale": 3.0, **kw.pop("config", {})})
    if per_prompt_generators:
        g = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    else:
        g = torch.Generator().manual_seed(seed)
    return generate(model, prompts, config=cfg, generator=g, duration=1, fps=8, **kw)


@pytest.mark.parametrize("i2v", [False, True])
def test_cached_generation_equals_full_recomputation(record_sampling, i2v):
    model = tiny_model()
    prompts = [[5, 6, 7, 8], [9]]  # different lengths -> left padding
    given = torch.randint(0, 256, (2, 1, 3, 5)) if i2v else None
    kw = dict(num_frames=3, height=3, width=5, given_frames=given)
    cached = run(model, prompts, **kw)
    n_cached = len(record_sampling)
    full = run(model, prompts, config={"use_cache": False}, **kw)
    assert len(record_sampling) == 2 * n_cached
    for (a, _), (b, _) in zip(record_sampling[:n_cached], record_sampling[n_cached:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        la, lb = model.visual_logits(a), model.visual_logits(b)
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.codes, full.codes)
    if i2v:
        assert torch.equal(cached.codes[:, 0], given[:, 0])


def test_batch_equals_single_runs():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12]]
    kw = dict(num_frames=2, height=2, width=4, config={"guidance_scale": 5.0, "num_steps": 5})
    batch = run(model, prompts, seed=7, per_prompt_generators=True, **kw)
    for i, p in enumerate(prompts):
        single = run(model, [p], seed=7 + i, per_prompt_generators=True, **kw)
        assert torch.equal(batch.codes[i], single.codes[0])
        assert torch.equal(batch.sequences[i], single.sequences[0])


def test_i2v_first_frame_is_history_masked_in_cache(record_sampling):
    """Independent reference: the first step of frame 1 sees exactly [prefix, masked given frame,
    all-MASK frame], built by hand and run through the plain full-sequence forward."""
    model = tiny_model()
    h, w = 2, 3
    given = torch.randint(0, 256, (1, 1, h, w))
    run(
        model,
        [[5, 6]],
        num_frames=2,
        height=h,
        width=w,
        given_frames=given,
        config={"guidance_scale": 1.0, "history_mask_ratio": 0.5},
    )
    v = model.vocab
    seq = build_sequence(v, [5, 6], given[0], 1, 8, close=False)
    hist = history_mask_indices(h, w, 0.5)
    frame0 = seq.clone()
    start = len(seq) - (FRAME_HEADER_LEN + h * (w + 1) + 1)
    frame0[start + FRAME_HEADER_LEN + hist] = v.mask
    full = torch.cat([frame0, torch.tensor(frame_tokens(v, None, h, w))])[None]
    positions, s = model.positions(full)
    hidden = model.hidden(full, positions, model.attention_mask(s, None))[0]
    slots = len(seq) + FRAME_HEADER_LEN + torch.arange(h * (w + 1)).view(h, w + 1)[:, :w].flatten()
    first_step = record_sampling[0][0]
    torch.testing.assert_close(first_step[0], hidden[0, slots], atol=1e-5, rtol=1e-5)


def test_text_to_image_and_non_square():
    model = tiny_model()
    out = run(model, [[3, 4]], num_frames=1, height=4, width=7)
    assert out.codes.shape == (1, 1, 4, 7)
    assert out.codes.min() >= 0 and out.codes.max() < 256
    seq = out.sequences[0]
    assert (seq == model.vocab.mask).sum() == 0 and seq[-1] == model.vocab.video_end


def test_seeded_generation_is_reproducible_and_seed_sensitive():
    model = tiny_model()
    a = run(model, [[1, 2]], seed=3, num_frames=2, height=2, width=2)
    b = run(model, [[1, 2]], seed=3, num_frames=2, height=2, width=2)
    c = run(model, [[1, 2]], seed=4, num_frames=2, height=2, width=2)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)


def test_temperature_annealing_restarts_per_frame_unless_official(record_sampling):
    model = tiny_model()
    run(model, [[1]], num_frames=3, height=2, width=2, config={"temperature": 2.0})
    taus = [t for _, t in record_sampling]
    assert taus == [2.0 * (1 - (s + 1) / 4) for s in range(4)] * 3
    record_sampling.clear()
    run(
        model,
        [[1]],
        num_frames=3,
        height=2,
        width=2,
        config={"temperature": 2.0, "official_temperature": True},
    )
    taus = [t for _, t in record_sampling]
    expected, tau = [], 2.0
    for s in range(4):
        tau *= 1 - (s + 1) / 4
        expected.append(tau)
    assert taus[:4] == pytest.approx(expected) and taus[4:] == [0.0] * 8


def test_schedules():
    idx = history_mask_indices(4, 5, 0.7)  # L = 24, n = 17
    assert len(idx) == 17 and idx[0] == 0 and len(set(idx.tolist())) == 17 and idx.max() < 24
    assert idx.tolist() == [round(k * 24 / 17) for k in range(17)]
    assert len(history_mask_indices(4, 5, 0.0)) == 0
    left = unmask_schedule(64, 8)
    assert left[-1] == 0 and all(a > b for a, b in zip([64] + left, left, strict=False))
    assert left[0] == math.floor(64 * math.cos(math.pi / 2 / 8))
    assert unmask_schedule(3, 10)[-1] == 0 and min(unmask_schedule(3, 10)[:-1]) >= 0


def test_bad_inputs():
    model = tiny_model()
    with pytest.raises(LumosError, match="num_steps"):
        run(model, [[1]], num_frames=1, height=2, width=2, config={"num_steps": 0})
    with pytest.raises(LumosError, match="given frames"):
        run(model, [[1]], num_frames=2, height=2, width=2, given_frames=torch.zeros(1, 1, 3, 2))
    with pytest.raises(LumosError, match="generators"):
        generate(model, [[1], [2]], 1, 2, 2, generator=[torch.Generator()])
