"""lumos tokenize: world/manifest -> Parquet token shards; workers, kill + resume, --shard i/N,
bad inputs. The visual tokenizer is an untrained (seeded) CausalVideoTokenizer: the pipeline,
not the tokenizer's quality, is under test."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lumos.cli.main
from lumos.data import shards as fmt
from lumos.data.pretokenize import ManifestSource, WorldSource, make_job, pretokenize
from lumos.data.video_io import write_video
from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.sequence.layout import parse_sequence, prompt_text
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.causal_video import CausalVideoTokenizer
from lumos.tokenizers.text import TextTokenizer, train_text_tokenizer
from lumos.tokenizers.visual import frames_to_video

# 48 world samples in 8 shards of 6, non-square 32x64 (H x W) frames, 9 RGB frames at 4 fps.
WORLD = dict(split="train", count=48, height=32, width=64, frames=9, fps=4, image_fraction=0.3)
SETTINGS = dict(samples_per_shard=6, encode_batch=4)
CLI_WORLD = shlex.split(
    "--world train --count 48 --height 32 --width 64 --frames 9 --image-fraction 0.3 "
    "--fps 4 --samples-per-shard 6 --encode-batch 4 --quiet"
)


# The CLI is run with only this subcommand registered, so that the test does not depend on
# other subcommands' modules.
CLI = "import sys, lumos.cli.main as m; m.COMMANDS = ['tokenize']; sys.exit(m.main(sys.argv[1:]))"


def main(args: list[str]) -> int:
    commands = lumos.cli.main.COMMANDS
    lumos.cli.main.COMMANDS = ["tokenize"]
    try:
        return lumos.cli.main.main(args)
    finally:
        lumos.cli.main.COMMANDS = commands


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    torch.manual_seed(0)
    CausalVideoTokenizer().save_pretrained(root / "visual")
    world = ProceduralWorld("train", 32, 32, 1, image_fraction=0.5)
    train_text_tokenizer([world[i].caption for i in range(100)], 700, root / "text")
    return root / "visual", root / "text"


def run_world(out, tokenizers, workers=1, part=(0, 1)):
    job, toks = make_job(WorldSource(**WORLD), out, *tokenizers, **SETTINGS)
    return pretokenize(job, toks, workers, part, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizers):
    """An uninterrupted run with 2 workers."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_world(out, tokenizers, workers=2)
    assert summary["index_written"] and summary["failed"] == 0
    return out


def output_files(out: Path) -> dict[str, bytes]:
    """Shards and index; no temporary leftovers."""
    assert not list(out.glob(".*tmp")), "temporary files left behind"
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.parquet")) + [out / "index.json"]}


def test_world_shards_content(reference, tokenizers):
    index = fmt.read_index(reference)
    assert len(index.files) == 8 and index.data["num_samples"] == 48
    world = ProceduralWorld("train", 32, 64, 9, seed=0, image_fraction=0.3)
    samples = list(fmt.iter_samples(reference))
    assert [s.index for s in samples] == list(range(48))
    images = [s for s in samples if s.kind == "image"]
    assert 0 < len(images) == index.data["num_images"] < 48
    visual = load_visual_tokenizer(tokenizers[0])
    text = TextTokenizer.from_file(tokenizers[1])
    torch.set_num_threads(1)
    for s in samples[:12]:
        clip = world[s.index]
        assert s.kind == ("image" if clip.frames.shape[0] == 1 else "video")
        assert (s.width, s.height) == (64, 32)
        t = 1 if s.kind == "image" else 3
        assert s.codes.shape == (t, 4, 8)
        fps, duration = (1, 1) if s.kind == "image" else (4, 2)
        assert (s.fps, s.duration) == (fps, duration)
        assert text.decode(s.text_ids) == prompt_text(clip.caption, 64, 32, fps, duration)
        direct = visual.encode(frames_to_video(clip.frames)[None])[0].numpy()
        assert (direct == s.codes).mean() > 0.99  # batching may move a rare rounding tie
        seq = s.sequence(index.vocab, index.spatial_compression)
        parsed = parse_sequence(index.vocab, seq)
        assert parsed.header_grid == (1, 2) and len(parsed.frames) == t
        assert parsed.text_ids == s.text_ids.tolist()


def test_worker_count_does_not_change_bytes(reference, tokenizers, tmp_path):
    summary = run_world(tmp_path, tokenizers, workers=1)
    assert summary["samples"] == 48 and summary["shards_tokenized"] == 8
    assert output_files(tmp_path) == output_files(reference)
    again = run_world(tmp_path, tokenizers, workers=1)  # everything done: only skips
    assert again["shards_skipped"] == 8 and again["samples_tokenized"] == 0
    assert output_files(tmp_path) == output_files(reference)


def test_killed_run_resumes_to_identical_shards(reference, tokenizers, tmp_path, capsys):
    out = tmp_path / "out"
    visual, text = tokenizers
    args = ["tokenize", *CLI_WORLD, "--out", str(out), "--workers", "2"]
    args += ["--visual-tokenizer", str(visual), "--text-tokenizer", str(text)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.parquet")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: main process and workers
    proc.wait()
    done = len(list(out.glob("shard-*.parquet")))
    assert 1 <= done < 8 and not (out / "index.json").exists()

    assert main([*args, "--workers", "1"]) == 0  # restart (with another worker count)
    printed = capsys.readouterr().out
    assert f"{8 - done} tokenized, {done} already done" in printed
    assert output_files(out) == output_files(reference)


def test_shard_parts_cover_everything_once(reference, tokenizers, tmp_path):
    first = run_world(tmp_path, tokenizers, part=(0, 2))
    assert not first["index_written"] and not (tmp_path / "index.json").exists()
    assert sorted(p.name[6:11] for p in tmp_path.glob("shard-*")) == [
        "00000",
        "00002",
        "00004",
        "00006",
    ]
    second = run_world(tmp_path, tokenizers, part=(1, 2))
    assert second["index_written"] and first["samples"] + second["samples"] == 48
    keys = [s.key for s in fmt.iter_samples(tmp_path)]
    assert sorted(keys) == [f"world-train-{i:09d}" for i in range(48)]
    assert output_files(tmp_path) == output_files(reference)


def test_other_settings_in_the_output_directory_are_refused(reference, tokenizers):
    job, toks = make_job(
        WorldSource(**WORLD), reference, *tokenizers, **SETTINGS | {"encode_batch": 3}
    )
    with pytest.raises(LumosError, match="new --out"):
        pretokenize(job, toks, progress=False)


def test_manifest_with_bad_inputs(tokenizers, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    world = ProceduralWorld("train", 48, 80, 12)
    write_video(media / "good.mp4", world[0].frames, fps=4)
    (media / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    rows = [
        ("media/good.mp4", world[0].caption),
        ("media/corrupt.mp4", "a red circle"),
        ("media/missing.mp4", "a blue square"),
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,caption\n" + "".join(f'{p},"{c}"\n' for p, c in rows))
    visual, text = tokenizers
    out = tmp_path / "out"
    args = ["tokenize", str(manifest), "--out", str(out), "--size", "64x32", "--frames", "9"]
    args += [
        "--fps",
        "4",
        "--quiet",
        "--visual-tokenizer",
        str(visual),
        "--text-tokenizer",
        str(text),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 samples written, 2 inputs failed" in printed
    assert "failed: media/corrupt.mp4" in printed and "failed: media/missing.mp4" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [f["key"] for f in summary["failures"]] == ["media/corrupt.mp4", "media/missing.mp4"]
    assert "no such file" in summary["failures"][1]["error"]
    (sample,) = fmt.iter_samples(out)
    assert (sample.key, sample.kind, sample.codes.shape) == ("media/good.mp4", "video", (3, 4, 8))
    assert fmt.read_index(out).data["num_failed"] == 2


def test_jsonl_manifest_with_images_and_buckets(tokenizers, tmp_path):
    world = ProceduralWorld("train", 64, 96, 9)
    write_video(tmp_path / "clip.mp4", world[1].frames, fps=4)
    write_video(tmp_path / "still.png", world[2].frames[0], fps=1)
    lines = [
        {"path": "clip.mp4", "caption": world[1].caption, "id": "v1"},
        {"path": str(tmp_path / "still.png"), "caption": "a still", "id": "i1"},
        {"path": "clip.mp4", "caption": "  "},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    source = ManifestSource.open(manifest, frames=9, fps=4, buckets=[(64, 64), (96, 64)])
    job, toks = make_job(source, tmp_path / "out", *tokenizers)
    summary = pretokenize(job, toks, progress=False)
    assert summary["samples"] == 2 and summary["failures"][0]["error"].endswith("empty caption")
    video, image = fmt.iter_samples(tmp_path / "out")
    assert (video.key, video.kind, video.width, video.height, video.codes.shape) == (
        "v1",
        "video",
        96,
        64,
        (3, 8, 12),
    )
    assert (image.key, image.kind, image.fps, image.duration, image.codes.shape) == (
        "i1",
        "image",
        1,
        1,
        (1, 8, 12),
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"frames": 8}, "1 \\+ 4k"),
        ({"frames": 13}, "whole number of seconds"),
        ({"height": 48}, "multiples of 32"),
        ({"split": "bogus"}, "unknown world split"),
    ],
)
def test_bad_settings(tokenizers, tmp_path, change, message):
    with pytest.raises(LumosError, match=message):
        make_job(WorldSource(**WORLD | change | {"fps": 8}), tmp_path, *tokenizers, **SETTINGS)
