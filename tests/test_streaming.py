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


def test_schedule_stream_equals_call(pipe):
    """A prompt schedule restarts the clip at each later segment; streaming follows it."""
    prompts = ["a red circle moves to the right", "a red circle moves to the left"]
    kw = dict(num_frames=21, num_inference_steps=2, segment_frames=8)  # segments 0-8, 9-20
    out = pipe(prompts, generator=torch.Generator().manual_seed(3), **kw)
    chunks = list(pipe.stream(prompts, generator=torch.Generator().manual_seed(3), **kw))
    assert torch.equal(torch.cat([c.codes for c in chunks], 1), out.codes)
    streamed = np.concatenate([c.frames for c in chunks], axis=1).astype(int)
    assert streamed.shape == out.frames.shape == (1, 21, 64, 64, 3)
    assert np.abs(streamed - out.frames).max() <= 1
    # the second segment is its own clip: decoding all codes as one clip differs there
    whole = pipe.decode(out.codes)
    assert np.array_equal(whole[:, :9], out.frames[:, :9])
    assert not np.array_equal(whole[:, 9:], out.frames[:, 9:])


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory):
    """The native Cosmos tokenizer converted from the narrow official fixture."""
    from conftest import OFFICIAL
    from lumos.cli.main import main
    from lumos.tokenizers import load_visual_tokenizer

    out = tmp_path_factory.mktemp("cosmos") / "native"
    narrow = OFFICIAL / "cosmos_dv4x8x8_narrow"
    assert main(["convert-cosmos", str(narrow), str(out), "--trust-torchscript"]) == 0
    return load_visual_tokenizer(out)


@pytest.mark.parametrize("which", ["ours", "cosmos"])
def test_stream_decoder_decodes_each_latent_frame_once(pipe, cosmos, which):
    tok = pipe.visual_tokenizer if which == "ours" else cosmos
    gen = torch.Generator().manual_seed(1)
    t = 13  # past our decoder's receptive field (10 latent frames)
    codes = torch.randint(0, tok.codebook_size, (2, t, 3, 4), generator=gen)
    whole = tok.decode(codes)
    seen = []
    real = tok._decode_chunk
    tok._decode_chunk = lambda x, *a, **k: seen.append(x.shape[1]) or real(x, *a, **k)
    try:
        dec = tok.stream_decoder()
        cuts = [0, 1, 2, 3, 6, *range(7, t + 1)]
        parts = [dec(codes[:, a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    finally:
        del tok._decode_chunk
    tc = tok.temporal_compression
    assert [p.shape[2] for p in parts] == [1, tc, tc, 3 * tc] + [tc] * (t - 6)
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-5, rtol=1e-5)
    assert sum(seen) == t  # every latent frame decoded once: no re-decoding of earlier ones


@pytest.mark.parametrize("schedule", [False, True])
def test_stream_equals_call_with_cosmos(pipe, cosmos, schedule):
    import dataclasses

    from lumos import LumosConfig, LumosModel
    from lumos.generation.pipeline import PipelineDefaults

    torch.manual_seed(0)
    vocab = dataclasses.replace(pipe.model.vocab, codebook_size=cosmos.codebook_size)
    model = LumosModel(LumosConfig.tiny(vocabulary=vocab, vocab_size=vocab.size)).eval()
    defaults = PipelineDefaults(height=32, width=48, num_frames=9, num_inference_steps=2)
    cpipe = LumosPipeline(model, pipe.text_tokenizer, cosmos, defaults)
    prompts = ["a red circle moves up", "a red circle moves down"]
    kw = dict(num_frames=17)  # 5 latent frames through a 3-frame window
    if schedule:
        kw["segment_frames"] = 8
    else:
        prompts = prompts[:1]
    out = cpipe(prompts, generator=torch.Generator().manual_seed(4), **kw)
    chunks = list(cpipe.stream(prompts, generator=torch.Generator().manual_seed(4), **kw))
    assert [c.frames.shape[1] for c in chunks] == [1, 4, 4, 4, 4]
    assert torch.equal(torch.cat([c.codes for c in chunks], 1), out.codes)
    streamed = np.concatenate([c.frames for c in chunks], axis=1).astype(int)
    assert streamed.shape == out.frames.shape == (1, 17, 32, 48, 3)
    assert np.abs(streamed - out.frames).max() <= 1


@pytest.mark.parametrize("which", ["ours", "cosmos"])
def test_clip_decode_is_chunked_and_equals_whole_decode(pipe, cosmos, which):
    """``LumosPipeline.decode`` (``decode_clip``) decodes a clip ``CLIP_DECODE_CHUNK`` latent
    frames at a time from the cached state, so memory does not grow with the clip; same
    frames as one whole-clip decode up to a level of rounding."""
    from lumos.tokenizers.visual import CLIP_DECODE_CHUNK, decode_clip, video_to_frames

    tok = pipe.visual_tokenizer if which == "ours" else cosmos
    gen = torch.Generator().manual_seed(2)
    t = 2 * CLIP_DECODE_CHUNK + 3
    codes = torch.randint(0, tok.codebook_size, (2, t, 3, 5), generator=gen)
    whole = video_to_frames(tok.decode(codes)).astype(int)
    seen = []
    real = tok._decode_chunk
    tok._decode_chunk = lambda x, *a, **k: seen.append(x.shape[1]) or real(x, *a, **k)
    try:
        chunked = decode_clip(tok, codes).astype(int)
    finally:
        del tok._decode_chunk
    assert max(seen) <= CLIP_DECODE_CHUNK and sum(seen) == t
    assert chunked.shape == whole.shape
    assert np.abs(chunked - whole).max() <= 1 and (chunked != whole).mean() < 1e-3
