import numpy as np
import pytest
import torch

import lumos.generation.long_video as lv
from helpers import tiny_model
from lumos import LumosError
from lumos.generation.generate import GenerationConfig, generate
from lumos.generation.long_video import generate_windowed
from lumos.generation.pipeline import LumosPipeline

CFG = GenerationConfig(num_steps=3, guidance_scale=3.0)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def windowed(model, segments, num_frames, window, **kw):
    out = generate_windowed(model, segments, num_frames, 2, 3, window, 1, 8, config=CFG,
                            generator=gens(len(segments[0][1])), **kw)  # fmt: skip
    return torch.stack([c for _, c, _ in out], 1)


def test_a_clip_that_fits_the_window_is_plain_generation():
    model = tiny_model()
    prompts = [[5, 6, 7], [8]]
    plain = generate(model, prompts, 4, 2, 3, 1, 8, None, CFG, gens(2)).codes
    assert torch.equal(windowed(model, [(0, prompts)], 4, window=4), plain)


def test_the_model_never_sees_more_than_the_window(monkeypatch):
    model = tiny_model()
    seen = []
    real = lv.generate_frames

    def spy(model, text_ids, num_frames, *args, **kw):
        seen.append(num_frames)
        return real(model, text_ids, num_frames, *args, **kw)

    monkeypatch.setattr(lv, "generate_frames", spy)
    codes = windowed(model, [(0, [[5, 6]])], 9, window=3)
    assert codes.shape == (1, 9, 2, 3)
    assert seen == [3] + [3] * 6  # the first window, then one new frame per shifted window
    # each shifted window starts from the two latest frames, given as history
    seen.clear()
    given = torch.randint(0, 256, (1, 1, 2, 3))
    codes = generate_windowed(model, [(0, [[5, 6]])], 6, 2, 3, 3, 1, 8, given, CFG, gens(1))
    assert [f for f, _, _ in codes] == [1, 2, 3, 4, 5] and seen == [3, 3, 3, 3]


def test_prompt_schedule_switches_text_at_segment_boundaries(monkeypatch):
    model = tiny_model()
    texts = []
    real = lv.generate_frames

    def spy(model, text_ids, *args, **kw):
        texts.append(text_ids[0][0])
        return real(model, text_ids, *args, **kw)

    monkeypatch.setattr(lv, "generate_frames", spy)
    windowed(model, [(0, [[5]]), (2, [[6]]), (4, [[7]])], 6, window=5)
    assert texts == [5, 6, 7, 7]  # frames 0-1, 2-3 (window not full yet), then 4 and 5 alone
    with pytest.raises(LumosError, match="segments"):
        windowed(model, [(1, [[5]])], 6, window=5)


def test_restart_begins_each_later_segment_as_image_to_video(monkeypatch):
    model = tiny_model()
    calls = []
    real = lv.generate_frames

    def spy(model, text_ids, num_frames, h, w, duration, fps, given, *args, **kw):
        calls.append((text_ids[0][0], num_frames, None if given is None else given.clone()))
        return real(model, text_ids, num_frames, h, w, duration, fps, given, *args, **kw)

    monkeypatch.setattr(lv, "generate_frames", spy)
    clips = []

    def restart(clip):  # stands in for "image latent of the clip's last RGB frame"
        clips.append(clip.clone())
        return (clip[:, -1:] + 1) % 256

    out = list(generate_windowed(model, [(0, [[5]]), (3, [[6]]), (5, [[7]])], 8, 2, 3, 3, 1, 8,
                                 config=CFG, generator=gens(1), restart=restart))  # fmt: skip
    assert [f for f, _, _ in out] == list(range(8))
    made = torch.stack([c for _, c, _ in out], 1)
    anchors = [f for f, _, a in out if a is not None]
    assert anchors == [3, 5]  # the first frame of each later segment carries its anchor
    # segment 0: frames 0-2 in one window; segment 1 restarts from frames 0-2's last frame
    assert torch.equal(clips[0], made[:, :3]) and torch.equal(clips[1], torch.cat(
        [(made[:, 2:3] + 1) % 256, made[:, 3:5]], 1))  # fmt: skip
    assert [t for t, _, _ in calls] == [5, 6, 7, 7]
    seg1 = calls[1]  # the anchor then segment 1's two frames
    assert seg1[1] == 3 and torch.equal(seg1[2], (made[:, 2:3] + 1) % 256)
    assert torch.equal(out[3][2], seg1[2])
    # within a restarted clip the anchor stays as a given frame while frames slide
    anchor2 = (made[:, 4:5] + 1) % 256
    assert torch.equal(calls[3][2], torch.cat([anchor2, made[:, 6:7]], 1))


def test_pipeline_continuation_and_schedule():
    pipe = LumosPipeline.from_pretrained()
    clip = pipe("a red circle moves up", num_frames=9, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    out = pipe("a red circle moves up", num_frames=17, video=clip, num_inference_steps=2,
               generator=torch.Generator().manual_seed(1))  # fmt: skip
    start = pipe.continuation_start(len(clip))  # the last 1 + 4k frames that fit the window
    assert start == 5 and pipe.continuation_start(len(clip), window=17) == 9
    assert pipe.continuation_start(3) == 1 and pipe.continuation_start(8, window=33) == 5
    history = pipe.visual_tokenizer.encode(
        torch.as_tensor(clip[-start:]).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    )
    assert out.frames.shape == (1, 17, 64, 64, 3)
    assert torch.equal(out.codes[:, : history.shape[1]], history)
    sched = pipe(["a red circle moves to the left", "a red circle moves to the right"],
                 num_frames=17, segment_frames=8, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert sched.frames.shape == (1, 17, 64, 64, 3)
    with pytest.raises(LumosError, match="last segment starts"):
        pipe(["a", "b", "c"], num_frames=9, segment_frames=8)
    with pytest.raises(LumosError, match="latent frames"):
        pipe(["a", "b"], num_frames=17, segment_frames=[0, 6])
    explicit = pipe(["a red circle moves to the left", "a red circle moves to the right"],
                    num_frames=17, segment_frames=[0, 9], num_inference_steps=2,
                    generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert torch.equal(explicit.codes, sched.codes)
    with pytest.raises(LumosError, match="not both"):
        pipe("a red circle", num_frames=9, video=clip, image=clip[0])
    assert np.isfinite(out.frames).all()


def test_cli_stream_schedule_and_continuation(tmp_path, capsys):
    from lumos.cli.main import main
    from lumos.data.video_io import read_video

    out = tmp_path / "s.mp4"
    assert main(["generate", "a blue square moves to the right", "--frames", "17", "--stream",
                 "--steps", "2", "--out", str(out)]) == 0  # fmt: skip
    pngs = sorted((tmp_path / "s_frames").glob("*.png"))
    assert len(pngs) == 17 and len(read_video(out)[0]) == 17
    assert "latent frame 4: frames 13-16" in capsys.readouterr().err
    assert main(["generate", "x", "--stream", "--out", str(out)]) == 2  # frame folder exists
    sched = tmp_path / "sched.mp4"
    assert main(["generate", "--prompt-schedule",
                 "0:a red circle moves to the left;9:a red circle moves to the right",
                 "--frames", "17", "--steps", "2", "--out", str(sched)]) == 0  # fmt: skip
    cont = tmp_path / "cont.mp4"
    assert main(["generate", "a red circle moves up", "--video", str(sched), "--frames", "17",
                 "--steps", "2", "--out", str(cont)]) == 0  # fmt: skip
    assert len(read_video(cont)[0]) == 17
    assert main(["generate", "--prompt-schedule", "0:a;6:b", "--frames", "17"]) == 2


def test_schedule_segments_are_contrasted_with_their_neighbours(monkeypatch):
    """A schedule's default negative prompts: the previous segment's prompt (the first
    segment: the second's); an explicit one applies to every segment; scale 0 drops them."""
    pipe = LumosPipeline.from_pretrained()
    negatives = []
    real = lv.generate_frames

    def spy(*args, **kw):
        negatives.append(args[12])
        return real(*args, **kw)

    monkeypatch.setattr(lv, "generate_frames", spy)
    prompts = ["a red circle moves to the left", "a red circle moves to the right",
               "a red circle moves up"]  # fmt: skip

    def run(**kw):
        negatives.clear()
        pipe(prompts, num_frames=25, segment_frames=8, num_inference_steps=1, decode=False,
             generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
        return list(negatives)  # one generate_frames call per segment here

    def enc(p):
        return pipe.encode_prompts([p], 9, 64, 64)

    assert run() == [enc(prompts[1]), enc(prompts[0]), enc(prompts[1])]
    assert run(negative_prompt="a blue square") == [enc("a blue square")] * 3
    assert run(negative_guidance_scale=0) == [None] * 3
    with pytest.raises(LumosError, match="2 negative prompts for 3 schedule segments"):
        run(negative_prompt=["a", "b"])
    with pytest.raises(LumosError, match="negative prompt is empty"):
        pipe("a red circle", num_frames=9, negative_prompt="  ")
