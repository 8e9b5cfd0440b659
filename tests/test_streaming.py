import numpy as np
import pytest
import torch

from lumos.generation.pipeline import LumosPipeline


@pytest.fixture(scope="module")
def pipe():
    return LumosPipeline.from_pretrained()


def test_decode_last_reads_only_its_receptive_field(pipe):
    tok = pipe.visual_tokenizer
    ctx = tok.decode_context
    assert ctx is not None and ctx >= 1
    t = ctx + 4  # longer than the receptive field: the window really is shorter
    codes = torch.randint(
        0, tok.codebook_size, (2, t, 3, 5), generator=torch.Generator().manual_seed(0)
    )
    whole = tok.decode(codes)
    seen = []
    real = tok._decode
    tok._decode = lambda x: seen.append(x.shape[1]) or real(x)
    try:
        for k in range(t):
            last = tok.decode_last(codes[:, : k + 1])
            n = 1 if k == 0 else tok.temporal_compression
            lo = 0 if k == 0 else 1 + tok.temporal_compression * (k - 1)
            torch.testing.assert_close(last, whole[:, :, lo : lo + n], atol=1e-5, rtol=1e-5)
    finally:
        del tok._decode
    assert max(seen) == ctx + 1  # never the whole clip


@pytest.mark.parametrize("i2v", [False, True])
def test_stream_equals_call(pipe, i2v):
    prompts = ["a red circle moves to the left", "a blue star moves up"]
    kw = dict(num_frames=13, height=48, width=64, num_inference_steps=3)
    if i2v:
        kw["image"] = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    out = pipe(prompts, generator=gens(), **kw)
    chunks = list(pipe.stream(prompts, generator=gens(), **kw))
    assert [c.frames.shape[1] for c in chunks] == [1, 4, 4, 4]
    assert [c.latent_frame for c in chunks] == [0, 1, 2, 3]
    assert torch.equal(torch.cat([c.codes for c in chunks], 1), out.codes)
    # Same codes; the frames agree up to float rounding of convolutions over clips of other
    # lengths (exact decode equality is checked in float above): uint8 off by at most one level.
    streamed = np.concatenate([c.frames for c in chunks], axis=1).astype(int)
    assert np.abs(streamed - out.frames).max() <= 1
    assert (streamed != out.frames).mean() < 1e-3


def test_stream_checks_inputs_before_the_first_frame(pipe):
    from lumos import LumosError

    with pytest.raises(LumosError):
        pipe.stream("a red circle moves up", num_frames=6)
