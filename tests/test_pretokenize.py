"""lumos tokenize: world/manifest -> Parquet token shards; workers, kill + resume, --shard i/N,
2-rank torchrun against one process, batched against one-clip encoding, precision as a setting,
bad inputs. The visual tokenizers are untrained (seeded) CausalVideoTokenizer and a tiny Cosmos
network: the pipeline, not the tokenizers' quality, is under test."""

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
from lumos.data.pretokenize import (
    ManifestSource,
    WorldSource,
    make_job,
    pretokenize,
    rank_part,
)
from lumos.data.video_io import write_video
from lumos.data.world import ProceduralWorld
from lumos.errors import LumosError
from lumos.sequence.layout import parse_sequence, prompt_text
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.causal_video import CausalVideoTokenizer
from lumos.tokenizers.cosmos_native import CosmosConfig, CosmosVideoTokenizer
from lumos.tokenizers.text import TextTokenizer, train_text_tokenizer

# 48 world samples in 8 shards of 6, non-square 32x64 (H x W) frames, 9 RGB frames at 4 fps.
WORLD = dict(split="train", count=48, height=32, width=64, frames=9, fps=4, image_fraction=0.3)
SETTINGS = dict(samples_per_shard=6, encode_batch=4)
CLI_WORLD = shlex.split(
    "--world train --count 48 --height 32 --width 64 --frames 9 --image-fraction 0.3 "
    "--fps 4 --samples-per-shard 6 --encode-batch 4 --quiet --device cpu"  # as the reference
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


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory):
    """A tiny random Cosmos network (the structure of the released GPU tokenizer); its
    quantiser input is scaled up so that the codes vary (about 80 distinct codes in 384)."""
    torch.manual_seed(0)
    model = CosmosVideoTokenizer(CosmosConfig(channels=8))
    with torch.no_grad():
        model.quant_conv.conv3d.weight.mul_(20)
    path = tmp_path_factory.mktemp("cosmos") / "visual"
    model.save_pretrained(path)
    return path


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
    text = TextTokenizer.from_file(tokenizers[1])
    for s in samples[:12]:
        clip = world[s.index]
        assert s.kind == ("image" if clip.frames.shape[0] == 1 else "video")
        assert (s.width, s.height) == (64, 32)
        t = 1 if s.kind == "image" else 3
        assert s.codes.shape == (t, 4, 8)
        fps, duration = (1, 1) if s.kind == "image" else (4, 2)
        assert (s.fps, s.duration) == (fps, duration)
        assert text.decode(s.text_ids) == prompt_text(clip.caption, 64, 32, fps, duration)
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


@pytest.mark.parametrize("kind", ["causal", "cosmos"])
def test_batched_encoding_equals_one_clip_at_a_time(kind, tokenizers, cosmos, tmp_path):
    """On the CPU in fp32, codes of clips encoded several per call (videos and images of a
    chunk in separate calls) equal those of each clip encoded alone, exactly."""
    visual = tokenizers[0] if kind == "causal" else cosmos
    world = dict(WORLD, count=12)
    job, toks = make_job(WorldSource(**world), tmp_path, visual, tokenizers[1], 6, 4)
    calls, encode = [], toks.visual.encode
    toks.visual.encode = lambda video: calls.append(tuple(video.shape)) or encode(video)
    pretokenize(job, toks, progress=False)
    assert sum(c[0] for c in calls) == 12 and len(calls) < 12
    assert any(c[0] > 1 and c[2] == 9 for c in calls) and any(c[0] > 1 and c[2] == 1 for c in calls)
    alone = load_visual_tokenizer(visual)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the arithmetic of the run
    try:
        source = WorldSource(**world)
        samples = list(fmt.iter_samples(tmp_path))
        for s in samples:
            codes = alone.encode(source.load(s.index).video[None])[0].numpy()
            np.testing.assert_array_equal(codes, s.codes)
    finally:
        torch.set_num_threads(threads)
    assert len({int(c) for s in samples for c in s.codes.flat}) > 20  # codes that can differ


def test_precision_is_a_setting(tokenizers, cosmos, tmp_path):
    """bf16 encoding (slow on the CPU, hence tiny) is recorded in the index and fingerprint: it
    gives codes close to fp32 ones, and an fp32 run refuses to resume in its directory. Our
    own tokenizer runs in fp32 whatever is asked."""
    world = WorldSource(**WORLD | {"count": 6})
    fp32, _ = make_job(world, tmp_path / "fp32", cosmos, tokenizers[1], 6, 3)
    bf16, toks = make_job(
        world, tmp_path / "bf16", cosmos, tokenizers[1], 6, 3, "cpu", torch.bfloat16
    )
    assert bf16.encoding == {"encode_device": "cpu", "encode_dtype": "bfloat16"}
    assert fp32.encoding["encode_dtype"] == "float32" and bf16.fingerprint != fp32.fingerprint
    assert "encode_dtype" not in fp32.settings  # CPU fp32: the fingerprints of earlier versions
    pretokenize(bf16, toks, progress=False)
    settings = fmt.read_index(tmp_path / "bf16").data["settings"]
    assert settings["encode_dtype"] == "bfloat16" and settings["encode_device"] == "cpu"
    pretokenize(
        fp32, make_job(world, tmp_path / "fp32", cosmos, tokenizers[1], 6, 3)[1], progress=False
    )
    low, full = (
        np.concatenate([s.codes.ravel() for s in fmt.iter_samples(tmp_path / d)])
        for d in ("bf16", "fp32")
    )
    assert 0.5 < (low == full).mean() < 1  # bf16 rounding moves some codes, not most
    fp32.out_dir = bf16.out_dir
    with pytest.raises(LumosError, match="new --out"):
        pretokenize(fp32, toks, progress=False)
    ours, _ = make_job(world, tmp_path / "ours", *tokenizers, 6, 3, "cpu", torch.bfloat16)
    assert ours.encoding["encode_dtype"] == "float32"


def test_rank_shares_split_a_part():
    shards = range(53)
    for i, n in [(0, 1), (1, 3)]:
        for world in (1, 2, 4):
            shares = []
            for rank in range(world):
                mine, every = rank_part((i, n), rank, world)
                shares.append({j for j in shards if j % every == mine})
            assert sum(map(len, shares)) == len(set().union(*shares))  # disjoint
            assert set().union(*shares) == {j for j in shards if j % n == i}


def torchrun(args: list[str], cwd: Path) -> str:
    """``lumos tokenize ARGS`` in 2 processes (gloo, CPU: no GPU visible) under torchrun;
    returns stdout."""
    script = cwd / "tokenize_cli.py"
    script.write_text(CLI)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), "tokenize", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_two_ranks_give_the_bytes_of_one_process(reference, tokenizers, tmp_path):
    out = tmp_path / "out"
    visual, text = tokenizers
    args = [*CLI_WORLD, "--out", str(out), "--visual-tokenizer", str(visual)]
    printed = torchrun([*args, "--text-tokenizer", str(text)], tmp_path)
    assert printed.count("48 samples written") == 1  # rank 0 reports for both
    assert "8 tokenized, 0 already done, of 8 in total" in printed and "by 2 processes" in printed
    assert output_files(out) == output_files(reference)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processes"], summary["samples"], summary["part"]) == (2, 48, "0/1")


def test_two_ranks_resume_their_part(reference, tokenizers, tmp_path):
    """--shard 1/2 under 2 ranks: rank 0 takes shards 1 and 5, rank 1 shards 3 and 7. Shards
    0, 2, 4, 6 (the other part) and 5 are done, a killed writer left a temporary file: the
    ranks do 1, 3 and 7, and rank 0 writes the index once every shard is there."""
    out = tmp_path / "out"
    out.mkdir()
    for j in (0, 2, 4, 5, 6):
        name = f"shard-{j:05d}-of-00008.parquet"
        (out / name).write_bytes((reference / name).read_bytes())
    (out / ".shard-00003-of-00008.parquet.999.tmp").write_bytes(b"partial")
    visual, text = tokenizers
    args = [*CLI_WORLD, "--out", str(out), "--shard", "1/2", "--visual-tokenizer", str(visual)]
    printed = torchrun([*args, "--text-tokenizer", str(text)], tmp_path)
    assert "shards 1/2: 3 tokenized, 1 already done, of 8 in total" in printed
    assert output_files(out) == output_files(reference)
    summary = json.loads((out / "summary-1-of-2.json").read_text())
    assert summary["shards_assigned"] == 4 and summary["samples"] == 24
    assert not (out / "summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
@pytest.mark.parametrize(
    "option,message",
    [
        (["--device", "cuda"], "no CUDA GPU is visible"),
        (["--precision", "bf16"], "needs a CUDA GPU"),
    ],
)
def test_gpu_options_without_a_gpu(option, message, tokenizers, tmp_path, capsys):
    visual, text = tokenizers
    args = ["tokenize", *CLI_WORLD, "--out", str(tmp_path), "--visual-tokenizer", str(visual)]
    assert main([*args, "--text-tokenizer", str(text), *option]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
