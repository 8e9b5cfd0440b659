"""``lumos sample``: the layouts VBench and GenEval read, resuming, ``--part`` and bad input.

Every run uses the shipped model at tiny sizes (a few frames of 64 x 48 pixels, 2 steps), on
small prompt files in each benchmark's format built here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lumos.cli.main import main
from lumos.cli.sample import output_seed, part_range
from lumos.data.video_io import read_video

FAST = ["--steps", "2", "--height", "64", "--width", "48"]
VBENCH = [
    {"prompt_en": "a red circle moves to the left", "dimension": ["subject_consistency"]},
    {"prompt_en": "a small blue cross moves up", "dimension": ["motion_smoothness", "color"]},
    {"prompt_en": "a red circle moves to the left", "dimension": ["dynamic_degree"]},  # again
    {"prompt_en": "a green triangle stands still", "dimension": ["color"]},
]
GENEVAL = [
    '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], '
    '"prompt": "a photo of a red circle"}',
    '{"tag": "colors", "include": [{"class": "cross", "count": 1, "color": "blue"}], '
    '"prompt": "a photo of a blue cross"}',
    '{"tag": "single_object", "prompt": "a photo of a yellow triangle"}',
]


def sample(*argv: str | Path) -> int:
    return main(["sample", *map(str, argv)])


def files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its relative path."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def outputs(root: Path) -> dict[str, Path]:
    return {k: p for k, p in files(root).items() if not k.startswith("manifest")}


@pytest.fixture
def written(monkeypatch) -> dict[Path, np.ndarray]:
    """The frames handed to the writer, by output path. The libx264 of this machine does not
    always encode the same frames to the same mp4 (bytes and decoded pixels: the same frames
    written by two processes can differ), so mp4 outputs are compared on these."""
    import lumos.generation.pipeline as pipeline

    frames_of, save = {}, pipeline.save_frames

    def record(frames, path, fps):
        frames_of[Path(path)] = frames.copy()
        return save(frames, path, fps)

    monkeypatch.setattr(pipeline, "save_frames", record)
    return frames_of


@pytest.fixture
def vbench_json(tmp_path: Path) -> Path:
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(VBENCH, indent=1))
    return path


@pytest.fixture
def geneval_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(GENEVAL[0] + "\n\n" + "\n".join(GENEVAL[1:]) + "\n")  # a blank line
    return path


def test_vbench_layout_from_full_info_json_and_from_a_text_file(
    tmp_path, vbench_json, capsys, written
):
    out = tmp_path / "vbench"
    argv = ["--suite", "vbench", "--frames", "5", "--samples-per-prompt", "2", *FAST]
    assert sample(*argv, "--prompts", vbench_json, "--out", out) == 0
    prompts = ["a red circle moves to the left", "a small blue cross moves up"]
    prompts.append("a green triangle stands still")  # the repeated prompt is dropped
    expected = {f"{p}-{k}.mp4" for p in prompts for k in range(2)}
    assert set(files(out)) == expected | {"manifest.json"}
    printed = capsys.readouterr().out.split("\n")
    assert {Path(line).name for line in printed if line} == expected
    for name in expected:
        frames, _ = read_video(out / name)
        assert frames.shape == (5, 64, 48, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["settings"]["num_frames"] == 5 and manifest["settings"]["samples_per_prompt"] == 2
    )
    seeds = {(o["prompt_index"], o["sample"]): o["seed"] for o in manifest["outputs"]}
    assert seeds == {(i, k): output_seed(0, i, k) for i in range(3) for k in range(2)}
    assert len(set(seeds.values())) == 6
    # A text file of the same prompts (VBench's per-dimension prompt lists) gives the same videos.
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join(v["prompt_en"] for v in VBENCH) + "\n")
    assert sample(*argv, "--prompts", text, "--out", tmp_path / "text") == 0
    assert set(outputs(tmp_path / "text")) == expected
    for name in expected:
        assert np.array_equal(written[out / name], written[tmp_path / "text" / name]), name


def test_geneval_layout(tmp_path, geneval_jsonl):
    out = tmp_path / "geneval"
    assert sample("--suite", "geneval", "--prompts", geneval_jsonl, "--out", out, *FAST) == 0
    expected = {f"{i:05d}/samples/{k:04d}.png" for i in range(3) for k in range(4)}
    expected |= {f"{i:05d}/metadata.jsonl" for i in range(3)}
    assert set(files(out)) == expected | {"manifest.json"}
    for i, line in enumerate(GENEVAL):
        # GenEval's evaluator json.load()s this file: the prompt's line, as one object
        assert (out / f"{i:05d}" / "metadata.jsonl").read_text() == line + "\n"
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text())["prompt"]
        frames, _ = read_video(out / f"{i:05d}" / "samples" / "0000.png")
        assert frames.shape == (1, 64, 48, 3)
    images = [read_video(p)[0] for k, p in files(out).items() if k.endswith(".png")]
    assert len({im.tobytes() for im in images}) == len(images)  # every seed its own sample


def test_prompts_suite_names_outputs_by_index(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves up\n\na red circle moves up\na white cross\n")
    out = tmp_path / "out"
    argv = ["--suite", "prompts", "--prompts", prompts, "--frames", "1", *FAST]
    assert sample(*argv, "--out", out) == 0
    assert set(outputs(out)) == {"00000-0.png", "00001-0.png", "00002-0.png"}
    a, b = (read_video(out / f"0000{i}-0.png")[0] for i in (0, 1))
    assert not np.array_equal(a, b)  # the same prompt twice: two indices, two seeds
    assert sample(*argv, "--format", "gif", "--out", tmp_path / "gif") == 0
    assert set(outputs(tmp_path / "gif")) == {"00000-0.gif", "00001-0.gif", "00002-0.gif"}


def test_parts_together_equal_one_run(tmp_path, geneval_jsonl, vbench_json, written):
    """Byte for byte for PNG; for mp4, the frames written (see ``written``). The batch size
    cuts the two runs' batches differently."""
    for suite, prompts, extra in [
        ("geneval", geneval_jsonl, ["--samples-per-prompt", "2"]),
        ("vbench", vbench_json, ["--samples-per-prompt", "1", "--frames", "5"]),
    ]:
        one, split = tmp_path / f"{suite}-one", tmp_path / f"{suite}-split"
        argv = ["--suite", suite, "--prompts", prompts, *FAST, *extra, "--batch-size", "3"]
        assert sample(*argv, "--out", one) == 0
        for part in ("1/2", "0/2"):
            assert sample(*argv, "--out", split, "--part", part) == 0
        assert set(outputs(one)) == set(outputs(split))
        assert {"manifest-part-0-of-2.json", "manifest-part-1-of-2.json"} <= set(files(split))
        for name, path in outputs(one).items():
            if name.endswith(".mp4"):
                assert np.array_equal(written[path], written[split / name]), name
            else:
                assert path.read_bytes() == (split / name).read_bytes(), name
        parts = [json.loads((split / f"manifest-part-{i}-of-2.json").read_text()) for i in (0, 1)]
        whole = json.loads((one / "manifest.json").read_text())
        assert parts[0]["outputs"] + parts[1]["outputs"] == whole["outputs"]
        assert parts[0]["settings"] == parts[1]["settings"] == whole["settings"]


def test_part_ranges_cover_every_prompt_once():
    for n in range(0, 12):
        for parts in range(1, 7):
            got = [i for p in range(parts) for i in part_range(n, (p, parts))]
            assert got == list(range(n))
            sizes = [len(part_range(n, (p, parts))) for p in range(parts)]
            assert max(sizes) - min(sizes) <= 1


def test_resume_after_an_interruption_redoes_nothing_finished(tmp_path, geneval_jsonl, monkeypatch):
    """A run stopped after three outputs (Ctrl-C while writing the fourth) and a temporary left
    by a killed writer: the resumed run writes only the missing outputs, leaves the finished
    files untouched (same inode and modification time), removes the stale temporary, and ends
    with the files of an uninterrupted run."""
    import lumos.generation.pipeline as pipeline

    argv = ["--suite", "geneval", "--prompts", geneval_jsonl, *FAST, "--samples-per-prompt", "2"]
    assert sample(*argv, "--out", tmp_path / "whole") == 0

    out = tmp_path / "resumed"
    save, calls = pipeline.save_frames, []

    def interrupted(frames, path, fps):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return save(frames, path, fps)

    monkeypatch.setattr(pipeline, "save_frames", interrupted)
    assert sample(*argv, "--out", out, "--batch-size", "4") == 130
    monkeypatch.undo()
    done = {k: p.stat() for k, p in outputs(out).items() if k.endswith(".png")}
    assert len(done) == 3
    dead_pid = 2**22 + 4321  # above Linux's pid_max: no such process
    (out / "00002" / "samples").mkdir(parents=True)  # not yet written to by this process
    stale = out / "00002" / "samples" / f".0001.{dead_pid}-0123abcd.tmp.png"
    stale.write_bytes(b"half a png")

    assert sample(*argv, "--out", out, "--batch-size", "4") == 0
    assert not stale.exists()
    for name, before in done.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert set(outputs(out)) == set(outputs(tmp_path / "whole"))
    for name, path in outputs(tmp_path / "whole").items():
        assert path.read_bytes() == (out / name).read_bytes(), name
    # A third run finds everything done and writes nothing.
    before = {k: p.stat().st_mtime_ns for k, p in outputs(out).items()}
    assert sample(*argv, "--out", out) == 0
    assert {k: p.stat().st_mtime_ns for k, p in outputs(out).items()} == before


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD = [
    # (suite, prompt file text (None: no file), extra options, text the message must contain)
    ("geneval", "not json\n", [], "line 1"),
    ("geneval", '{"tag": "x"}\n', [], '"prompt"'),
    ("geneval", '["a prompt"]\n', [], '"prompt"'),
    ("geneval", "\n\n", [], "holds no prompt"),
    ("geneval", GENEVAL[0], ["--frames", "5"], "text-to-image"),
    ("geneval", GENEVAL[0], ["--format", "mp4"], "--format"),
    ("vbench", '{"prompt_en": "x"}', [], "JSON list"),
    ("vbench", '[{"dimension": ["color"]}]', [], "prompt_en"),
    ("vbench", "[1, 2", [], "not valid JSON"),
    ("vbench", '[{"prompt_en": "a red/blue circle"}]', [], "cannot name a file"),
    ("vbench", '[{"prompt_en": "' + "a" * 300 + '"}]', [], "cannot name a file"),
    ("vbench", '[{"prompt_en": "a red circle"}]', ["--frames", "1"], "videos"),
    ("prompts", None, [], "does not exist"),
    ("prompts", "x" * 2001, [], "at most 2000"),
    ("prompts", "a red circle", ["--part", "2/2"], "I/N"),
    ("prompts", "a red circle", ["--part", "1/0"], "I/N"),
    ("prompts", "a red circle", ["--part", "half"], "I/N"),
    ("prompts", "a red circle", ["--samples-per-prompt", "0"], "--samples-per-prompt"),
    ("prompts", "a red circle", ["--height", "60"], "multiple"),
    ("prompts", "a red circle", ["--frames", "4"], "1 + 4k"),
    ("prompts", "a red circle", ["--history-mask-ratio", "1.5"], "history_mask_ratio"),
    ("prompts", "a red circle", ["--checkpoint", "{t}/nowhere"], "does not exist"),
    ("prompts", "é" * 600, [], "tokens"),
]


@pytest.mark.parametrize("suite, text, extra, message", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, suite, text, extra, message
):
    prompts = tmp_path / "prompts.txt" if text is None else write(tmp_path / "prompts.in", text)
    if suite == "vbench":
        prompts = prompts.rename(prompts.with_suffix(".json")) if text is not None else prompts
    out = tmp_path / "out"
    extra = [e.replace("{t}", str(tmp_path)) for e in extra]
    code = sample("--suite", suite, "--prompts", prompts, "--out", out, "--steps", "1", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists()


def test_outputs_checked_before_work(tmp_path, capsys):
    prompts = write(tmp_path / "p.txt", "a red circle moves up\na white cross\n")
    argv = ["--suite", "prompts", "--prompts", prompts, "--frames", "1", *FAST]
    (tmp_path / "file").write_text("x")
    assert sample(*argv, "--out", tmp_path / "file") == 2
    assert "existing file" in capsys.readouterr().err
    # a directory holding files with this run's names but no manifest is not resumed
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "00001-0.png").write_bytes(b"someone else's")
    assert sample(*argv, "--out", foreign) == 2
    assert "no manifest" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["00001-0.png"]
    # resuming with other settings is refused, naming them; nothing is touched
    out = tmp_path / "out"
    assert sample(*argv, "--out", out) == 0
    before = {k: p.stat().st_mtime_ns for k, p in files(out).items()}
    capsys.readouterr()
    assert sample(*argv, "--out", out, "--guidance", "5", "--seed", "3") == 2
    err = capsys.readouterr().err
    assert "guidance_scale, seed differ" in err and len(err.strip().splitlines()) == 1
    assert {k: p.stat().st_mtime_ns for k, p in files(out).items()} == before
