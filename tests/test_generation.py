import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lumos.generation.generate as gen
import lumos.generation.scheduler as scheduler
from generation_reference import MaskedRowAttention, reference_generate
from helpers import tiny_model
from lumos import LumosError
from lumos.generation.generate import GenerationConfig, generate
from lumos.generation.scheduler import (
    MaskGITScheduler,
    cdf_blocks,
    inverse_cdf,
    unmask_schedule,
)
from lumos.sequence.layout import FRAME_HEADER_LEN, build_sequence, frame_tokens
from lumos.sequence.masking import history_mask_indices


@pytest.fixture
def record_steps(monkeypatch):
    """Record the guided hidden states, scored slots and tau handed to the scheduler."""
    calls = []
    real = MaskGITScheduler.step

    def spy(self, hidden, head, noise, state, keep_masked, tau, slots=None):
        calls.append((hidden.clone(), slots, float(tau)))
        return real(self, hidden, head, noise, state, keep_masked, tau, slots)

    monkeypatch.setattr(MaskGITScheduler, "step", spy)
    return calls


def gens(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def run(model, prompts, seed=0, shared_generator=False, **kw):
    cfg = GenerationConfig(**{"num_steps": 4, "guidance_scale": 3.0, **kw.pop("config", {})})
    g = torch.Generator().manual_seed(seed) if shared_generator else gens(seed, len(prompts))
    return generate(model, prompts, config=cfg, generator=g, duration=1, fps=8, **kw)


@pytest.mark.parametrize(
    "case",
    [
        dict(prompts=[[5, 6, 7, 8], [9], [10, 11]], num_frames=3, height=3, width=5),  # t2v
        dict(prompts=[[5, 6, 7], [9]], num_frames=3, height=2, width=4, i2v=True),
        dict(prompts=[[5, 6], [7, 8, 9]], num_frames=1, height=4, width=3),  # t2i
        dict(prompts=[[5, 6], [7]], num_frames=2, height=2, width=3, guidance=1.0),
        dict(prompts=[[5, 6, 7, 8], [9]], num_frames=2, height=3, width=5, vocab_chunk=256),
        dict(prompts=[[5, 6, 7], [9]], num_frames=3, height=2, width=3, negative=[[8], [10, 11, 12]]),
        dict(prompts=[[5, 6], [7]], num_frames=2, height=3, width=2, guidance=1.0, negative=[[9], [6]]),
    ],
)
def test_generation_equals_plain_reference(case, monkeypatch):
    """Cache, row groups, gathered scoring, two-level sampling (the codebook in one piece, or
    streamed in pieces) and batched steps against the plainest loop drawing the same random
    numbers (no cache, float64 sampling, one prompt at a time)."""
    if "vocab_chunk" in case:
        monkeypatch.setitem(scheduler.VOCAB_CHUNK, "cpu", case["vocab_chunk"])
    model = tiny_model(codebook_size=300)  # not a multiple of the CDF block
    prompts, F_, h, w = case["prompts"], case["num_frames"], case["height"], case["width"]
    given = torch.randint(0, 300, (len(prompts), 1, h, w)) if case.get("i2v") else None
    cfg = GenerationConfig(
        num_steps=5, guidance_scale=case.get("guidance", 3.0), history_mask_ratio=0.5,
        temperature=2.0, negative_guidance_scale=2.5,
    )  # fmt: skip
    neg = case.get("negative")
    out = generate(model, prompts, F_, h, w, 1, 8, given, cfg, gens(3, len(prompts)),
                   negative_ids=neg)  # fmt: skip
    ref = reference_generate(model, prompts, F_, h, w, 1, 8, cfg, gens(3, len(prompts)), given,
                             neg)  # fmt: skip
    assert torch.equal(out.codes, ref)
    if given is not None:
        assert torch.equal(out.codes[:, :1], given)


@pytest.mark.parametrize("i2v", [False, True])
def test_row_groups_equal_masked_attention(record_steps, monkeypatch, i2v):
    """Swapping the mask-free row-group attention for a key-padding mask changes nothing."""
    model = tiny_model()
    prompts = [[5, 6, 7, 8], [9], [10, 11], [12]]  # three padding lengths + the uncond rows
    given = torch.randint(0, 256, (4, 1, 3, 5)) if i2v else None
    kw = dict(num_frames=3, height=3, width=5, given_frames=given)
    free = run(model, prompts, **kw)
    n = len(record_steps)
    monkeypatch.setattr(gen, "RowGroupAttention", MaskedRowAttention)
    masked = run(model, prompts, **kw)
    assert torch.equal(free.codes, masked.codes)
    for (a, _, _), (b, _, _) in zip(record_steps[:n], record_steps[n:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class CountMaskedAttention:
    def __init__(self):
        self.calls = self.masked = 0

    def __call__(self, real):
        def sdpa(*args, **kwargs):
            self.calls += 1
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.masked += mask is not None
            return real(*args, **kwargs)

        return sdpa


@pytest.mark.parametrize(
    "kw",
    [
        dict(prompts=[[5, 6, 7, 8], [9], [10, 11]], num_frames=2),  # lengths differ, guidance
        dict(prompts=[[5, 6, 7], [9]], num_frames=1),  # text-to-image
        dict(prompts=[[5, 6, 7], [9]], num_frames=3, i2v=True),
        dict(prompts=[[5, 6, 7], [9]], num_frames=2, negative_ids=[[8], [10, 11, 12, 13]]),
    ],
)
def test_no_attention_call_carries_a_mask(monkeypatch, kw):
    counter = CountMaskedAttention()
    monkeypatch.setattr(F, "scaled_dot_product_attention", counter(F.scaled_dot_product_attention))
    model = tiny_model()
    given = torch.randint(0, 256, (len(kw["prompts"]), 1, 2, 3)) if kw.get("i2v") else None
    run(model, kw["prompts"], num_frames=kw["num_frames"], height=2, width=3, given_frames=given,
        negative_ids=kw.get("negative_ids"))  # fmt: skip
    assert counter.calls > 0 and counter.masked == 0


def test_negative_prompts_steer_and_scale_zero_drops_their_branch():
    model = tiny_model()
    prompts, negatives = [[5, 6, 7], [9]], [[8], [10, 11]]
    kw = dict(num_frames=2, height=2, width=3)
    plain = run(model, prompts, **kw)
    off = run(model, prompts, negative_ids=negatives, config={"negative_guidance_scale": 0.0}, **kw)
    steered = run(model, prompts, negative_ids=negatives, **kw)
    assert torch.equal(plain.codes, off.codes)
    assert not torch.equal(plain.codes, steered.codes)
    with pytest.raises(LumosError, match="negative prompts"):
        run(model, prompts, negative_ids=negatives[:1], **kw)


def test_fixed_shape_steps_equal_gathered_steps(record_steps):
    model = tiny_model()
    kw = dict(num_frames=3, height=3, width=4)
    gathered = run(model, [[5, 6, 7], [8]], **kw)
    assert all(slots is not None for _, slots, _ in record_steps)
    record_steps.clear()
    fixed = run(model, [[5, 6, 7], [8]], config={"fixed_shapes": True}, **kw)
    assert all(slots is None and h.shape[1] == 12 for h, slots, _ in record_steps)
    assert torch.equal(gathered.codes, fixed.codes)


def test_batch_equals_single_runs():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12]]
    kw = dict(num_frames=2, height=2, width=4, config={"guidance_scale": 5.0, "num_steps": 5})
    batch = run(model, prompts, seed=7, **kw)
    for i, p in enumerate(prompts):
        single = run(model, [p], seed=7 + i, **kw)
        assert torch.equal(batch.codes[i], single.codes[0])
        assert torch.equal(batch.sequences[i], single.sequences[0])


def test_i2v_first_frame_is_history_masked_in_cache(record_steps):
    """Independent reference: the first step of frame 1 sees exactly [prefix, masked given frame,
    all-MASK frame], built by hand and run through the plain full-sequence forward. At 2 x 4 the
    mask hits a NEWLINE: positions still follow the unmasked layout."""
    model = tiny_model()
    h, w = 2, 4
    given = torch.randint(0, 256, (1, 1, h, w))
    cfg = {"guidance_scale": 1.0, "history_mask_ratio": 0.5, "fixed_shapes": True}
    run(model, [[5, 6]], num_frames=2, height=h, width=w, given_frames=given, config=cfg)
    v = model.vocab
    seq = build_sequence(v, [5, 6], given[0], 1, 8, close=False)
    hist = history_mask_indices(h, w, 0.5)
    frame0 = seq.clone()
    start = len(seq) - (FRAME_HEADER_LEN + h * (w + 1) + 1)
    frame0[start + FRAME_HEADER_LEN + hist] = v.mask
    assert (frame0 == v.mask).sum() == 5 and (frame0 == v.newline).sum() == 1
    full = torch.cat([frame0, torch.tensor(frame_tokens(v, None, h, w))])[None]
    positions, s = model.positions(
        torch.cat([seq, torch.tensor(frame_tokens(v, None, h, w))])[None]
    )
    hidden = model.hidden(full, positions, model.attention_mask(s, None))[0]
    slots = len(seq) + FRAME_HEADER_LEN + torch.arange(h * (w + 1)).view(h, w + 1)[:, :w].flatten()
    torch.testing.assert_close(record_steps[0][0][0], hidden[0, slots], atol=1e-5, rtol=1e-5)


def test_text_to_image_and_non_square():
    model = tiny_model()
    out = run(model, [[3, 4]], num_frames=1, height=4, width=7)
    assert out.codes.shape == (1, 1, 4, 7)
    assert out.codes.min() >= 0 and out.codes.max() < 256
    seq = out.sequences[0]
    assert (seq == model.vocab.mask).sum() == 0 and seq[-1] == model.vocab.video_end


def test_seeded_generation_is_reproducible_and_seed_sensitive():
    model = tiny_model()
    for shared in (False, True):
        a = run(
            model, [[1, 2], [3]], seed=3, shared_generator=shared, num_frames=2, height=2, width=2
        )
        b = run(
            model, [[1, 2], [3]], seed=3, shared_generator=shared, num_frames=2, height=2, width=2
        )
        c = run(
            model, [[1, 2], [3]], seed=4, shared_generator=shared, num_frames=2, height=2, width=2
        )
        assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)


def test_temperature_annealing_restarts_per_frame_unless_official(record_steps):
    model = tiny_model()
    run(model, [[1]], num_frames=3, height=2, width=2, config={"temperature": 2.0})
    taus = [t for _, _, t in record_steps]
    assert taus == pytest.approx([2.0 * (1 - (s + 1) / 4) for s in range(4)] * 3)
    record_steps.clear()
    cfg = {"temperature": 2.0, "official_temperature": True}
    run(model, [[1]], num_frames=3, height=2, width=2, config=cfg)
    taus = [t for _, _, t in record_steps]
    expected, tau = [], 2.0
    for s in range(4):
        tau *= 1 - (s + 1) / 4
        expected.append(tau)
    assert taus[:4] == pytest.approx(expected) and taus[4:] == [0.0] * 8


def test_history_mask_indices():
    idx = history_mask_indices(4, 5, 0.7)  # L = 24, n = 17
    assert idx.tolist() == [round(k * 24 / 17) for k in range(17)]
    assert len(set(idx.tolist())) == 17 and idx.max() < 24
    assert len(history_mask_indices(4, 5, 0.0)) == 0


@pytest.mark.parametrize("N,S", [(64, 8), (256, 50), (3, 10), (7, 7), (1, 3), (1792, 50)])
def test_unmask_schedule_is_the_official_rule(N, S):
    """left_s = floor(N cos(pi/2 (s+1)/S)) clamped to [1, remaining-1]; the last step keeps 0."""
    left, remaining = unmask_schedule(N, S), N
    for s, n in enumerate(left):
        if s == S - 1:
            assert n == 0
            continue
        expected = max(1, min(math.floor(N * math.cos(math.pi / 2 * (s + 1) / S)), remaining - 1))
        assert n == expected
        remaining = n
    assert len(left) == S


def test_unmask_schedule_small_frames_stall_at_one_token():
    # 3 tokens in 10 steps: two are revealed at once, then one waits for the last step.
    assert unmask_schedule(3, 10) == [2, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert unmask_schedule(64, 8)[0] == math.floor(64 * math.cos(math.pi / 16))


def pieces_of(logits, piece):
    """``inverse_cdf``'s inputs for ``logits`` [..., V] cut into pieces of ``piece`` entries."""
    chunks = (logits * scheduler.LOG2E).split(piece, -1)  # base 2
    maxima = torch.cat([c.amax(-1, keepdim=True) for c in chunks], -1)
    blocks = [cdf_blocks((c - c.amax(-1, keepdim=True)).exp2()) for c in chunks]
    return blocks, maxima, torch.cat([b.sum(-1) for b in blocks], -1)


def plain_inverse_cdf(logits, u):
    """float64 softmax, one cumulative sum over the whole codebook."""
    p = logits.double().softmax(-1)
    cdf = p.cumsum(-1)
    pick = torch.searchsorted(cdf, (u.double() * cdf[..., -1])[..., None], right=True)
    pick = pick.clamp(max=logits.shape[-1] - 1)
    return pick.squeeze(-1), p.gather(-1, pick).squeeze(-1)


@pytest.mark.parametrize("V", [5, 256, 300, 1000])
@pytest.mark.parametrize("piece", [256, 512, None])
def test_inverse_cdf_matches_a_plain_cumulative_sum(V, piece):
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(7, 9, V, generator=g) * 3
    logits[0, 0] = torch.where(torch.arange(V) % 7 == 3, logits[0, 0], float("-inf"))  # zeros
    logits[1, :, 256:] -= 200.0  # later pieces far below the first: scaled to zero, never hit
    u = torch.rand(7, 9, generator=g)
    pick, p = inverse_cdf(*pieces_of(logits, piece or V), u)
    plain, plain_p = plain_inverse_cdf(logits, u)
    assert torch.equal(pick, plain)
    torch.testing.assert_close(p, plain_p.float())
    assert (p > 0).all()  # never a zero-weight entry


def test_inverse_cdf_edges_never_pick_zero_weights():
    weights = torch.zeros(1, 600)
    weights[0, [1, 255]] = 1.0
    weights[0, 300] = 2.0**-30  # a piece far below the others
    weights[0, 520] = 2.0
    for piece in (256, 600):
        blocks, maxima, sums = pieces_of(weights.log(), piece)
        for u, expected in [(0.0, 1), (1 - 2**-24, 520)]:
            pick, p = inverse_cdf(blocks, maxima, sums, torch.tensor([u]))
            assert pick.tolist() == [expected]
            torch.testing.assert_close(p, weights[:, expected] / weights.sum())


@pytest.mark.parametrize(
    "kw", [{}, {"sample_temperature": 0.6}, {"top_k": 7}, {"top_k": 7, "vocab_chunk": 256}]
)
def test_streamed_sampling_equals_whole_codebook(kw):
    """The codebook streamed in pieces (the last one padded) samples what one softmax over the
    whole codebook samples, batch > 1, positions chunked; top_k takes the codebook whole."""
    g = torch.Generator().manual_seed(1)
    V, d = 1000, 32
    head = torch.randn(V, d, generator=g)
    hidden = torch.randn(2, 37, d, generator=g)
    u = torch.rand(2, 37, generator=g)
    streamed = MaskGITScheduler(chunk_size=16, **{"vocab_chunk": 256, **kw})
    codes, logp = streamed.sample(hidden, head, u)
    logits = hidden.double() @ head.double().T / kw.get("sample_temperature", 1.0)
    if "top_k" in kw:
        kth = logits.topk(kw["top_k"], -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
        assert (logits.gather(-1, codes[..., None]) >= kth).all()
    plain, plain_p = plain_inverse_cdf(logits, u)
    assert torch.equal(codes, plain)
    torch.testing.assert_close(logp, plain_p.log().float(), atol=1e-4, rtol=1e-4)


def test_streamed_sampling_in_bf16():
    """A bf16 head (F.linear, logits widened to fp32 per piece): the picked codes' probabilities
    are those of a float64 softmax over the same bf16 inputs, within bf16 rounding."""
    g = torch.Generator().manual_seed(2)
    head = torch.randn(1000, 32, generator=g).bfloat16()
    hidden = torch.randn(2, 37, 32, generator=g).bfloat16()
    codes, logp = MaskGITScheduler(vocab_chunk=256).sample(hidden, head, torch.rand(2, 37))
    exact = (hidden.double() @ head.double().T).log_softmax(-1).gather(-1, codes[..., None])
    torch.testing.assert_close(logp, exact.squeeze(-1).float(), atol=0.1, rtol=0.0)


def test_vocab_chunk_must_be_a_multiple_of_the_cdf_block():
    for bad in (0, 100, 4000):
        with pytest.raises(LumosError, match="vocab_chunk"):
            MaskGITScheduler(vocab_chunk=bad)


class CountHostSyncs(TorchDispatchMode):
    """Counts the ops that read a device value back to the host."""

    SYNC_OPS = ("_local_scalar_dense", "nonzero", "item", "equal", "is_nonzero")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_host_syncs_per_frame_do_not_depend_on_steps():
    model = tiny_model()
    counts = {}
    for steps in (8, 16):
        with CountHostSyncs() as mode:
            run(model, [[5, 6, 7], [8]], num_frames=2, height=3, width=4,
                config={"num_steps": steps})  # fmt: skip
        counts[steps] = mode.count
    assert counts[8] == counts[16]
    assert counts[8] <= 2  # nothing per step; at most one per frame


def test_compiled_generation_equals_eager_with_two_graphs(monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setitem(scheduler.VOCAB_CHUNK, "cpu", 256)  # the codebook streamed in 2 pieces
    model = tiny_model(codebook_size=300)
    kw = dict(num_frames=4, height=3, width=5, config={"fixed_shapes": True})
    eager = run(model, [[5, 6, 7, 8], [9]], seed=1, **kw)
    compiled = run(model, [[5, 6, 7, 8], [9]], seed=1, compile=True, **kw)
    assert torch.equal(eager.codes, compiled.codes)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] <= 2
    run(model, [[5, 6, 7, 8], [9]], seed=2, compile=True, **kw)  # same shapes: no new graph
    assert counters["stats"]["unique_graphs"] <= 2


def test_bad_inputs():
    model = tiny_model()
    with pytest.raises(LumosError, match="num_steps"):
        run(model, [[1]], num_frames=1, height=2, width=2, config={"num_steps": 0})
    for key, value in [("guidance_scale", float("nan")), ("temperature", float("inf")),
                       ("sample_temperature", 0.0), ("history_mask_ratio", float("nan"))]:  # fmt: skip
        with pytest.raises(LumosError, match=key):
            run(model, [[1]], num_frames=1, height=2, width=2, config={key: value})
    with pytest.raises(LumosError, match="given frames"):
        run(model, [[1]], num_frames=2, height=2, width=2, given_frames=torch.zeros(1, 1, 3, 2))
    with pytest.raises(LumosError, match="generators"):
        generate(model, [[1], [2]], 1, 2, 2, generator=[torch.Generator()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_accepted_on_cuda():
    model = tiny_model().cuda()
    a = run(model, [[1, 2]], seed=5, num_frames=2, height=2, width=3)
    b = run(model, [[1, 2]], seed=5, num_frames=2, height=2, width=3)
    assert torch.equal(a.codes, b.codes)
