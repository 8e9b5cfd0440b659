"""Bad input through the real ``lumos`` command line: exit status 2, exactly one line on stderr
naming the problem, no traceback, nothing written; and the data-loss cases (inputs untouched,
earlier outputs kept, a closed stdout never stops the work).

``BAD`` is the table: one line per case, ``(argv, text the message must contain)``. ``{t}`` in
an argument is the test's working directory, which holds the inputs built by :func:`inputs`.
Cases run in-process through ``lumos.cli.main.main`` (fast); ``SUBPROCESS`` repeats a sample
of them as real ``python -m lumos.cli.main`` processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumos import Vocabulary
from lumos.cli.main import main
from lumos.generation.pipeline import DEFAULT_PIPELINE_DIR

SHIPPED = DEFAULT_PIPELINE_DIR
BIG = str(2**64)

BAD: list[tuple[list[str], str]] = [
    # ---- generate: options refused while parsing
    (["generate", "x", "--guidance", "nan"], "--guidance"),
    (["generate", "x", "--guidance", "inf"], "--guidance"),
    (["generate", "x", "--guidance", "-inf"], "--guidance"),
    (["generate", "x", "--temperature", "nan"], "--temperature"),
    (["generate", "x", "--negative-guidance", "-1"], "--negative-guidance"),
    (["generate", "x", "--negative-guidance", "nan"], "--negative-guidance"),
    (["generate", "x", "--negative-prompt", " "], "--negative-prompt is empty"),
    (["generate", "x", "--sample-temperature", "nan"], "--sample-temperature"),
    (["generate", "x", "--sample-temperature", "inf"], "--sample-temperature"),
    (["generate", "x", "--history-mask-ratio", "nan"], "--history-mask-ratio"),
    (["generate", "x", "--steps", "0"], "--steps"),
    (["generate", "x", "--steps", "2.5"], "--steps"),
    (["generate", "x", "--steps", "1000000"], "--steps"),
    (["generate", "x", "--top-k", "0"], "--top-k"),
    (["generate", "x", "--height", "0"], "--height"),
    (["generate", "x", "--width", "0"], "--width"),
    (["generate", "x", "--height", "-64"], "--height"),
    (["generate", "x", "--width", "100000"], "--width"),
    (["generate", "x", "--fps", "0"], "--fps"),
    (["generate", "x", "--frames", "0"], "--frames"),
    (["generate", "x", "--frames", "100001"], "--frames"),
    (["generate", "x", "--threads", "10000"], "--threads"),
    (["generate", "x", "--threads", "0"], "--threads"),
    (["generate", "x", "--threads", "-1"], "--threads"),
    (["generate", "x", "--seed", "-1"], "--seed"),
    (["generate", "x", "--seed", BIG], "--seed"),
    (["generate", "x", "--seed", "abc"], "--seed"),
    (["generate", "x", "--batch-size", "0"], "--batch-size"),
    (["generate", "x", "--format", "avi"], "--format"),
    # ---- generate: prompts and paths, refused before any model is loaded
    (["generate", ""], "empty"),
    (["generate", "   "], "empty"),
    (["generate"], "no prompt"),
    (["generate", "x" * 2001], "2001 characters"),
    (["generate", "--prompts-file", "{t}/latin1.txt"], "not UTF-8"),
    (["generate", "--prompts-file", "{t}/utf16.txt"], "not UTF-8"),
    (["generate", "--prompts-file", "{t}/missing.txt"], "does not exist"),
    (["generate", "--prompts-file", "{t}/folder"], "is a directory"),
    (["generate", "--prompts-file", "{t}/long_prompts.txt"], "characters"),
    (["generate", "x", "--format", "gif", "--out", "{t}/a.mp4"], "conflicts"),
    (["generate", "x", "--format", "png", "--out", "{t}/a.GIF"], "conflicts"),
    (["generate", "x", "y", "--out", "{t}/a.mp4"], "names a file"),
    (["generate", "x", "--out", "{t}/a.webm"], "not an output format"),
    (["generate", "x", "--out", "{t}/a.JPG"], "not an output format"),
    (["generate", "x", "--history-mask-ratio", "1.5"], "history_mask_ratio"),
    (["generate", "x", "--sample-temperature", "0"], "sample_temperature"),
    (["generate", "x", "--guidance", "-5"], "guidance"),
    (["generate", "x", "--image", "{t}/caps.txt"], "caps.txt"),
    (["generate", "x", "--out", "{t}/occupied/a.mp4"], "occupied is a file"),
    (["generate", "x", "y", "--out", "{t}/occupied"], "existing file"),
    (["generate", "x", "--out", "/proc/lumos-test/a.mp4"], "cannot write"),
    (["generate", "--prompts-file", "{t}/p.txt", "--out", "{t}/p.txt"], "also an input"),
    (["generate", "x", "--image", "{t}/missing.png"], "does not exist"),
    (["generate", "x", "--t2i", "--image", "{t}/frame.png"], "exclude"),
    (["generate", "x", "--checkpoint", "{t}/missing"], "does not exist"),
    (["generate", "x", "--checkpoint", "{t}/caps.txt"], "is a file"),
    # ---- generate: refused after loading the model, before generating
    (["generate", "x", "--frames", "6"], "1 + 4k"),
    (["generate", "🎉" * 600], "at most 512 are allowed"),  # short in characters, long in tokens
    (["generate", "x", "--height", "60"], "of 8"),
    (["generate", "x", "--checkpoint", "{t}/ckpt_array_header", "--text-tokenizer", str(SHIPPED / "text_tokenizer"), "--visual-tokenizer", str(SHIPPED / "visual_tokenizer")], "cannot read weights"),
    (["generate", "x", "--checkpoint", "{t}/pipe_bad_json"], "pipeline.json"),
    (["generate", "x", "--checkpoint", "{t}/pipe_array_json"], "JSON object"),
    (["generate", "x", "--checkpoint", "{t}/pipe_wrong_type"], "height"),
    (["generate", "x", "--checkpoint", "{t}/pipe_nan_guidance"], "guidance_scale"),
    (["generate", "x", "--checkpoint", "{t}/pipe_zero_threads"], "num_threads"),
    # ---- eval
    (["eval", "--guidance", "nan"], "--guidance"),
    (["eval", "--temperature", "inf"], "--temperature"),
    (["eval", "--n", "0"], "--n"),
    (["eval", "--n", "-5"], "--n"),
    (["eval", "--batch-size", "0"], "--batch-size"),
    (["eval", "--seed", "-1"], "--seed"),
    (["eval", "--height", "0"], "--height"),
    (["eval", "--groups", "bogus"], "unknown groups"),
    (["eval", "--out", "{t}/occupied"], "occupied is a file"),
    (["eval", "--out", "/proc/lumos-test"], "cannot write"),
    # ---- info
    (["info", "{t}/missing"], "does not exist"),
    (["info", "{t}/caps.txt"], "is a file"),
    (["info", "{t}/ckpt_array_header"], "cannot read weights"),
    (["info", "{t}/ckpt_truncated"], "cannot read weights"),
    (["info", "{t}/ckpt_garbage"], "cannot read weights"),
    (["info", "{t}/ckpt_wrong_type"], "hidden_size"),
    (["info", "{t}/ckpt_negative"], "num_hidden_layers"),
    (["info", "{t}/ckpt_config_array"], "JSON object"),
    (["info", "{t}/ckpt_index_outside"], "outside"),
    (["info", "{t}/ckpt_index_bad"], "safetensors index"),
    # ---- tokenize
    (["tokenize", "--world", "train", "--count", "-5", "--out", "o"], "--count"),
    (["tokenize", "--world", "train", "--count", "0", "--out", "o"], "--count"),
    (["tokenize", "--world", "train", "--count", "2", "--frames", "0", "--out", "o"], "--frames"),
    (["tokenize", "--world", "train", "--count", "2", "--fps", "0", "--out", "o"], "--fps"),
    (["tokenize", "--world", "train", "--count", "2", "--image-fraction", "5", "--out", "o"], "--image-fraction"),
    (["tokenize", "--world", "train", "--count", "2", "--image-fraction", "nan", "--out", "o"], "--image-fraction"),
    (["tokenize", "--world", "train", "--count", "2", "--height", "0", "--out", "o"], "--height"),
    (["tokenize", "--world", "train", "--count", "2", "--seed", "-1", "--out", "o"], "--seed"),
    (["tokenize", "--world", "train", "--count", "2", "--workers", "0", "--out", "o"], "--workers"),
    (["tokenize", "--world", "train", "--count", "2", "--shard", "2/2", "--out", "o"], "--shard"),
    (["tokenize", "--world", "train", "--count", "2", "--shard", "a", "--out", "o"], "--shard"),
    (["tokenize", "--world", "train", "--count", "2", "--samples-per-shard", "0", "--out", "o"], "--samples-per-shard"),
    (["tokenize", "--world", "train", "--count", "2", "--encode-batch", "0", "--out", "o"], "--encode-batch"),
    (["tokenize", "--world", "train", "--out", "o"], "--count"),
    (["tokenize", "--world", "train", "--count", "2", "--out", "{t}/occupied"], "existing file"),
    (["tokenize", "--world", "train", "--count", "2", "--out", "{t}/occupied/x"], "is a file"),
    (["tokenize", "--world", "train", "--count", "2", "--out", "/proc/lumos-test"], "cannot write"),
    (["tokenize", "{t}/manifest.csv", "--out", "{t}/manifest.csv"], "also an input"),
    (["tokenize", "--world", "train", "--count", "2", "--out", str(SHIPPED / "visual_tokenizer")], "also an input"),
    # ---- train
    (["train", "--preset", "tiny-cpu-t2i", "--set", "steps=10.7"], "steps"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "steps=true"], "steps"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "steps=0"], "steps"),
    (["train", "--preset", "tiny-cpu-t2i", "--steps", "0"], "steps"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.lr=inf"], "optim.lr"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.lr=.nan"], "optim.lr"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.lr=-1"], "optim.lr"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.lr=abc"], "optim.lr"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.grad_clip=-1"], "optim.grad_clip"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.weight_decay=-0.1"], "optim.weight_decay"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.betas=[0.9, 1.0]"], "optim.betas"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.betas=[0.9]"], "optim.betas"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.betas=5"], "optim.betas"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.betas=[0.9"], "optim.betas"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.eps=0"], "optim.eps"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "seed=-1"], "seed"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", f"seed={BIG}"], "seed"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "threads=-1"], "threads"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "threads=10000"], "threads"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "log_every=0"], "log_every"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "validate_every=-1"], "validate_every"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "data.image_ratio=2"], "data.image_ratio"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "data.image_size=[30, 64]"], "data.image_size"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "data.image_size=64"], "data.image_size"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "tensorboard=maybe"], "tensorboard"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "precision=fp8"], "precision"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "bogus_key=1"], "bogus_key"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "model.overrides={bogus: 7}"], "bogus"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "model.overrides={hidden_size: 7}"], "hidden_size"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "name=5"], "name"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "masking.min_rate=.nan"], "min"),
    (["train", "--preset", "nope"], "nope"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "model.vocabulary={t}/bad.yaml", "--output", "o"], "not valid JSON"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "model.vocabulary={t}/pipe_array_json/pipeline.json", "--output", "o"], "JSON object"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "model.vocabulary={t}/vocab_text_ids.json", "--output", "o"], "integers"),
    (["train", "--config", "{t}/missing.yaml"], "does not exist"),
    (["train", "--config", "{t}/latin1.txt"], "not UTF-8"),
    (["train", "--config", "{t}/bad.yaml"], "not valid YAML"),
    (["train", "--preset", "tiny-cpu-t2i", "--output", "{t}/occupied"], "existing file"),
    (["train", "--preset", "tiny-cpu-t2i", "--output", "/proc/lumos-test"], "cannot write"),
    (["train", "--preset", "tiny-cpu-t2i", "--output", "{t}/run", "--set", "model.init_from={t}/run/model"], "also an input"),
    # ---- train-tokenizer / eval-tokenizer
    (["train-tokenizer", "--out", "o", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train-tokenizer", "--out", "o", "--log-every", "0"], "--log-every"),
    (["train-tokenizer", "--out", "o", "--lr", "nan"], "--lr"),
    (["train-tokenizer", "--out", "o", "--lr", "0"], "--lr"),
    (["train-tokenizer", "--out", "o", "--steps", "0"], "--steps"),
    (["train-tokenizer", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["train-tokenizer", "--out", "o", "--threads", "10000"], "--threads"),
    (["train-tokenizer", "--out", "o", "--image-fraction", "2"], "--image-fraction"),
    (["train-tokenizer", "--out", "o", "--seed", "-1"], "--seed"),
    (["train-tokenizer", "--out", "o", "--levels", "0,5"], "--levels"),
    (["train-tokenizer", "--out", "{t}/occupied"], "existing file"),
    (["eval-tokenizer", "{t}/missing", "--n", "0"], "--n"),
    (["eval-tokenizer", "{t}/missing", "--batch-size", "0"], "--batch-size"),
    (["eval-tokenizer", "{t}/missing", "--split", "bogus"], "--split"),
    (["eval-tokenizer", "{t}/missing", "--threads", "0"], "--threads"),
    (["eval-tokenizer", str(SHIPPED / "visual_tokenizer"), "--json", "{t}/occupied/r.json"], "is a file"),
    (["eval-tokenizer", str(SHIPPED / "visual_tokenizer"), "--json", "{t}/folder"], "is a directory"),
    (["eval-tokenizer", str(SHIPPED / "visual_tokenizer"), "--json", "/proc/lumos-test/r.json"], "cannot write"),
    # ---- train-text-tokenizer
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "{t}/caps.txt"], "also an input"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "{t}/./caps.txt"], "also an input"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "{t}/notes.txt"], "non-JSON"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "o", "--vocab-size", "1000000000"], "--vocab-size"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "o", "--vocab-size", "5"], "--vocab-size"),
    (["train-text-tokenizer", "--world", "-1", "--out", "o"], "--world"),
    (["train-text-tokenizer", "{t}/latin1.txt", "--out", "o"], "not UTF-8"),
    (["train-text-tokenizer", "{t}/list_captions.jsonl", "--out", "o"], "caption"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "{t}/occupied/t.json"], "is a file"),
    # ---- convert-cosmos / convert-official
    (["convert-cosmos", "{t}/folder", "{t}/occupied"], "existing file"),
    (["convert-cosmos", "{t}/folder", "{t}/folder"], "also an input"),
    (["convert-cosmos", "{t}/folder", "/proc/lumos-test"], "cannot write"),
    (["convert-official", "--checkpoint", "{t}/folder", "--text-tokenizer", "{t}/caps.txt", "--cosmos", "{t}/folder", "--out", "{t}/occupied"], "existing file"),
    (["convert-official", "--checkpoint", "{t}/folder", "--text-tokenizer", "{t}/caps.txt", "--cosmos", "{t}/folder", "--out", "{t}/folder"], "also an input"),
    # ---- world
    (["world", "--out", "o", "--n", "0"], "--n"),
    (["world", "--out", "o", "--n", "-1"], "--n"),
    (["world", "--out", "o", "--scale", "0"], "--scale"),
    (["world", "--out", "o", "--fps", "0"], "--fps"),
    (["world", "--out", "o", "--fps", "nan"], "--fps"),
    (["world", "--out", "o", "--frames", "0"], "--frames"),
    (["world", "--out", "o", "--image-fraction", "5"], "--image-fraction"),
    (["world", "--out", "o", "--size", "0x64"], "--size"),
    (["world", "--out", "o", "--size", "abc"], "--size"),
    (["world", "--out", "o", "--seed", "-1"], "--seed"),
    (["world", "--out", "{t}/occupied"], "existing file"),
    (["world", "--out", "/proc/lumos-test"], "cannot write"),
]

# A sample of BAD run as real processes (the console entry point, argv parsing, exit code).
SUBPROCESS = [
    (["generate", "x", "--guidance", "nan"], "--guidance"),
    (["generate", "--prompts-file", "{t}/latin1.txt"], "not UTF-8"),
    (["eval", "--out", "{t}/occupied"], "occupied is a file"),
    (["info", "{t}/ckpt_array_header"], "cannot read weights"),
    (["tokenize", "--world", "train", "--count", "-5", "--out", "o"], "--count"),
    (["train", "--preset", "tiny-cpu-t2i", "--set", "optim.lr=inf"], "optim.lr"),
    (["train-tokenizer", "--out", "o", "--log-every", "0"], "--log-every"),
    (["train-text-tokenizer", "{t}/caps.txt", "--out", "{t}/caps.txt"], "also an input"),
    (["world", "--out", "o", "--n", "0"], "--n"),
]


def _safetensors(header: object, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def _checkpoint(root: Path, name: str, config: object = None, weights: bytes | None = None):
    d = root / name
    d.mkdir()
    shipped = json.loads((SHIPPED / "transformer" / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(shipped if config is None else config))
    if weights is not None:
        (d / "model.safetensors").write_bytes(weights)
    return d, shipped


def _pipeline(root: Path, name: str, pipeline_json: str) -> None:
    d = root / name
    d.mkdir()
    for part in ("transformer", "text_tokenizer", "visual_tokenizer"):
        (d / part).symlink_to(SHIPPED / part, target_is_directory=True)
    (d / "pipeline.json").write_text(pipeline_json)


def inputs(root: Path) -> None:
    """Every input file the table refers to."""
    (root / "caps.txt").write_text("a red circle\na blue square moves up\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / "p.txt").write_text("a red circle\n")
    (root / "latin1.txt").write_bytes("un cercle rouge \xe9t\xe9\n".encode("latin-1"))
    (root / "utf16.txt").write_bytes("a red circle\n".encode("utf-16"))
    (root / "long_prompts.txt").write_text("a red circle\n" + "word " * 1000 + "\n")
    (root / "bad.yaml").write_text("steps: [1, 2\n")
    (root / "list_captions.jsonl").write_text('{"caption": ["a", "b"]}\n{"caption": 5}\n')
    (root / "manifest.csv").write_text("path,caption\nframe.png,a red circle\n")
    (root / "occupied").write_text("a file where a directory is expected\n")
    vocab = {k: "many" for k in dataclasses.asdict(Vocabulary.official())}
    (root / "vocab_text_ids.json").write_text(json.dumps(vocab))
    (root / "folder").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "frame.png")
    _checkpoint(root, "ckpt_array_header", weights=_safetensors([1, 2, 3]))
    _checkpoint(root, "ckpt_truncated", weights=(SHIPPED / "transformer/model.safetensors").read_bytes()[:4096])
    _checkpoint(root, "ckpt_garbage", weights=b"\xff" * 64)
    _, shipped = _checkpoint(root, "ckpt_wrong_type", weights=b"")
    (root / "ckpt_wrong_type/config.json").write_text(json.dumps({**shipped, "hidden_size": "big"}))
    (root / "ckpt_negative/").mkdir()
    (root / "ckpt_negative/config.json").write_text(json.dumps({**shipped, "num_hidden_layers": -2}))
    _checkpoint(root, "ckpt_config_array", config=[1, 2])
    d, _ = _checkpoint(root, "ckpt_index_outside")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../caps.txt"}}))
    d, _ = _checkpoint(root, "ckpt_index_bad")
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    _pipeline(root, "pipe_bad_json", "{height: 64")
    _pipeline(root, "pipe_array_json", "[64, 64]")
    _pipeline(root, "pipe_wrong_type", '{"height": "tall"}')
    _pipeline(root, "pipe_nan_guidance", '{"guidance_scale": NaN}')
    _pipeline(root, "pipe_zero_threads", '{"num_threads": 0}')


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` with its content (None for directories and links)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    inputs(root)
    return root


def _argv(argv: list[str], root: Path) -> list[str]:
    return [a.replace("{t}", str(root)) for a in argv]


def _check_one_line(err: str, command: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith(f"lumos {command}: error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[" ".join(a)[:70] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, expected, workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    assert main(_argv(argv, workdir)) == 2
    captured = capsys.readouterr()
    _check_one_line(captured.err, argv[0], expected)
    assert captured.out == ""
    assert snapshot(workdir) == before  # nothing written, inputs untouched


def test_bad_input_in_real_processes(workdir):
    """The same promise from the installed entry point (run concurrently: start-up is slow)."""
    before = snapshot(workdir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lumos.cli.main", *_argv(argv, workdir)],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv, _ in SUBPROCESS
    ]
    for (argv, expected), proc in zip(SUBPROCESS, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err)
        _check_one_line(err, argv[0], expected)
        assert out == ""
    assert snapshot(workdir) == before


# ---------------------------------------------------------------------------- data loss


def _lumos(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lumos.cli.main", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_closed_stdout_never_stops_the_work(tmp_path):
    """``lumos generate a b c --out D | head -1`` and ``lumos world ... | head -1`` still write
    every output; the commands exit 0 without a BrokenPipeError."""
    gen = _lumos(
        "generate", "a red circle", "a blue square", "a green star", "--t2i", "--steps", "1",
        "--batch-size", "1", "--format", "png", "--out", "videos", cwd=tmp_path,
    )
    world = _lumos("world", "--n", "3", "--out", "world", cwd=tmp_path)
    for proc in (gen, world):
        assert proc.stdout.readline()  # like head -1: read one line, then close the pipe
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 0, err
        assert "BrokenPipe" not in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "000_a_red_circle.png",
        "001_a_blue_square.png",
        "002_a_green_star.png",
    ]
    names = sorted(p.name for p in (tmp_path / "world").iterdir())
    assert names == ["0000.gif", "0001.gif", "0002.gif", "captions.txt", "sheet.png"]


def test_outputs_never_overwrite_each_other_or_inputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = ["--t2i", "--steps", "1", "--random-init", "--format", "png"]
    # Prompts that slug to the same name: emoji-only, punctuation-only.
    assert main(["generate", "🎉", *run]) == 0
    first = (tmp_path / "outputs" / "video.png").read_bytes()
    assert main(["generate", "!!!", "--seed", "1", *run]) == 0
    assert main(["generate", "🎉", "?!", "--seed", "2", *run, "--out", "outputs"]) == 0
    assert main(["generate", "🎉", "?!", "--seed", "3", *run, "--out", "outputs"]) == 0
    names = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert names == [
        "000_video.png", "000_video_2.png", "001_video.png", "001_video_2.png",
        "video.png", "video_2.png",
    ]
    assert (tmp_path / "outputs" / "video.png").read_bytes() == first  # earlier output kept
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == names  # the real names are printed

    # A folder name with a dot is a folder, not a format.
    assert main(["generate", "a", "b", *run, "--out", "runs.v2"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs.v2").iterdir()) == ["000_a.png", "001_b.png"]
    # A prompts file is never written over, whatever --out says.
    prompts = tmp_path / "prompts"
    prompts.write_text("a red circle\n")
    assert main(["generate", "--prompts-file", str(prompts), *run, "--out", str(prompts)]) == 2
    assert prompts.read_text() == "a red circle\n"


def test_failed_run_keeps_earlier_output(tmp_path, capsys):
    out = tmp_path / "clip.png"
    assert main(["generate", "a red circle", "--t2i", "--steps", "1", "--out", str(out)]) == 0
    before = out.read_bytes()
    for bad in (["--frames", "6"], ["--height", "60"], ["--guidance", "nan"]):
        assert main(["generate", "a red circle", "--steps", "1", "--out", str(out), *bad]) == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.png"]  # no temporaries
    capsys.readouterr()


def test_refusals_midway_are_one_line(tmp_path, capsys, monkeypatch):
    """What the system refuses after the checks passed (a write, an allocation) is still one
    line and exit 2; the command's other errors are untouched."""
    out = tmp_path / "w"
    (out / "0000.gif").mkdir(parents=True)  # the first file's name is taken by a directory
    assert main(["world", "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lumos world: error: ") and "0000.gif" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["0000.gif"]  # no temporaries left

    from lumos.generation.pipeline import LumosPipeline

    def too_big(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 8741346304 bytes.")

    monkeypatch.setattr(LumosPipeline, "__call__", too_big)
    assert main(["generate", "a red circle", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0] and "--batch-size" in err[0]

    def bug(*args, **kwargs):
        raise RuntimeError("a programming error")

    monkeypatch.setattr(LumosPipeline, "__call__", bug)
    with pytest.raises(RuntimeError, match="programming error"):  # bugs keep their traceback
        main(["generate", "a red circle", "--out", str(tmp_path / "v.mp4")])


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path, capsys):
    """A writer killed mid-encode leaves ``.<name>.<pid>-<hex>.tmp<suffix>``; the next write in
    that directory removes it (a live writer's temporary is kept)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".video.{dead.pid}-0123abcd.tmp.mp4"
    live = tmp_path / f".video.{os.getpid()}-89abcdef.tmp.mp4"
    orphan.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    assert main(["generate", "a red circle", "--t2i", "--steps", "1", "--random-init",
                 "--out", str(tmp_path / "new.png")]) == 0
    assert not orphan.exists() and live.exists()
    capsys.readouterr()


def test_image_to_video_reads_an_image_without_warnings(tmp_path, capsys, recwarn):
    image = tmp_path / "first.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    argv = ["generate", "a red circle moves up", "--image", str(image), "--steps", "1",
            "--random-init", "--out", str(tmp_path / "v.gif")]
    assert main(argv) == 0
    assert not [w for w in recwarn if "not writable" in str(w.message)]
    capsys.readouterr()


def test_prompts_file_bom_and_out_of_domain_warning(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa red circle\na cat playing the piano\n".encode())
    assert main(["generate", "--prompts-file", str(prompts), "--t2i", "--steps", "1",
                 "--batch-size", "1", "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    # The BOM is not part of the first prompt (file name), and one warning names the odd one.
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "000_a_red_circle.mp4", "001_a_cat_playing_the_piano.mp4"
    ]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cat playing the piano" in warnings[0]
    assert "a red circle moves to the left" in warnings[0]  # an example that works


def test_generation_in_chunks_equals_one_batch(tmp_path, capsys):
    """--batch-size splits the prompts; prompt i keeps seed + i, so outputs are identical."""
    prompts = ["a red circle", "a blue square moves up", "a green star"]
    run = ["--t2i", "--steps", "2", "--random-init", "--format", "png"]
    assert main(["generate", *prompts, *run, "--out", str(tmp_path / "one")]) == 0
    assert main(["generate", *prompts, *run, "--batch-size", "2", "--out", str(tmp_path / "two")]) == 0
    capsys.readouterr()
    for p in (tmp_path / "one").iterdir():
        a = np.asarray(Image.open(p))
        b = np.asarray(Image.open(tmp_path / "two" / p.name))
        assert np.array_equal(a, b), p.name


def test_text_tokenizer_output_is_never_an_input(tmp_path, capsys):
    caps = tmp_path / "caps.txt"
    caps.write_text("a red circle\n")
    for out in (caps, tmp_path / "." / "caps.txt", Path(os.path.relpath(caps))):
        assert main(["train-text-tokenizer", str(caps), "--out", str(out)]) == 2
    assert caps.read_text() == "a red circle\n"
    assert main(["train-text-tokenizer", str(caps), "--out", str(tmp_path / "tok"), "--vocab-size", "600"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    capsys.readouterr()


# ---------------------------------------------------------------------------- training

TRAIN = ["train", "--preset", "tiny-cpu-t2i", "--set", "tensorboard=false",
         "--set", "validate_every=0", "--set", "checkpoint_every=2"]


def test_train_without_tensorboard_completes(tmp_path):
    """The README install has no TensorBoard: `lumos train --preset tiny-cpu-t2i --steps 20`
    must still train (TensorBoard being unimportable is simulated in the subprocess)."""
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"  # `import tensorboard` now fails
        "from lumos.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--preset", "tiny-cpu-t2i", "--steps", "20",
         "--output", "run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TensorBoard is not installed" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 20
    assert (tmp_path / "run/model/model.safetensors").is_file()
    assert not (tmp_path / "run/tensorboard").exists()


def test_train_stops_on_nan_loss_naming_step_and_checkpoint(tmp_path, capsys, monkeypatch):
    from lumos.training.train import Trainer

    original = Trainer.train_step

    def diverging(self):
        metrics = original(self)
        if self.step == 2:  # the third step's loss
            metrics["loss"] = float("nan")
        return metrics

    monkeypatch.setattr(Trainer, "train_step", diverging)
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "6", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("lumos train: error: training diverged at step 3")
    assert "step-00000002" in err[-1]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not (out / "model").exists()


def test_metrics_rows_are_always_json(tmp_path):
    from lumos.training.train import _json_safe

    row = {"step": 1, "loss": float("inf"), "frame_loss": [1.0, float("nan"), None]}
    assert json.loads(json.dumps(_json_safe(row), allow_nan=False)) == {
        "step": 1, "loss": None, "frame_loss": [1.0, None, None]
    }


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "6", "--output", str(out)]) == 0
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "step-00000002", "step-00000004", "step-00000006"
    ]
    before = snapshot(out)
    assert main([*TRAIN, "--steps", "6", "--output", str(out), "--no-resume"]) == 2
    assert "earlier run" in capsys.readouterr().err  # --no-resume never replaces a run
    assert snapshot(out) == before
    (ckpts / "step-00000006" / "rank-00000.pt").unlink()  # missing file
    (ckpts / "step-00000004" / "trainer.pt").write_bytes(b"")  # truncated file
    capsys.readouterr()
    assert main([*TRAIN, "--steps", "8", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "step-00000006 is damaged" in err and "step-00000004 is damaged" in err
    assert f"resumed from {ckpts / 'step-00000002'} at step 2" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    # Every checkpoint damaged: an error, not a silent restart.
    for p in ckpts.iterdir():
        (p / "trainer.pt").unlink()
    assert main([*TRAIN, "--steps", "10", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "lumos train: error: no intact checkpoint"
    )


def test_resume_with_another_preset_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "2", "--output", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    other = ["train", "--preset", "tiny-cpu-joint", "--set", "tensorboard=false"]
    assert main([*other, "--steps", "4", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lumos train: error: ")
    assert "tiny-cpu-t2i" in err and "--no-resume" in err
    assert snapshot(out) == before


def test_grad_clip_zero_means_no_clipping(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "2", "--set", "optim.grad_clip=0", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in rows)  # gradients are not zeroed
    capsys.readouterr()


def test_validation_layer_messages_name_the_allowed_values():
    from lumos import validate
    from lumos.errors import LumosError

    cases = [
        (lambda: validate.integer("n", True, 1, 5), "n must be an integer 1..5, got True"),
        (lambda: validate.integer("n", 2.5, 1, 5), "got 2.5"),
        (lambda: validate.integer("n", "7", 1, 5), "1..5"),
        (lambda: validate.number("x", float("nan"), 0, 1), "x must be a finite number [0, 1]"),
        (lambda: validate.number("x", 1.0, 0, 1, hi_open=True), "[0, 1)"),
        (lambda: validate.number("x", 0, 0, lo_open=True), "> 0"),
        (lambda: validate.choice("c", "z", ["a", "b"]), "one of a, b"),
        (lambda: validate.seed("seed", 2**63), "0..9223372036854775807"),
        (lambda: validate.boolean("flag", 1), "true or false"),
        (lambda: validate.pair("p", [1, 2, 3]), "pair"),
        (lambda: validate.integer("steps", 10.0, 1), "steps must be an integer >= 1, got 10.0"),
        (lambda: validate.number("g", float("inf")), "g must be a finite number, got inf"),
    ]
    for call, text in cases:
        with pytest.raises(LumosError, match=None) as info:
            call()
        assert text in str(info.value), (text, str(info.value))
    assert validate.integer("n", "3", 1, 5) == 3 and validate.integer("n", 4) == 4
    assert validate.number("x", "0.5", 0, 1) == 0.5


def test_stale_temporaries_helper(tmp_path):
    from lumos.atomic import atomic_path, remove_stale_temporaries, temporary_name

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # a failed write leaves nothing
    mine = temporary_name(tmp_path / "b.json")
    mine.write_text("mine")
    assert remove_stale_temporaries(tmp_path) == []  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = tmp_path / f".model.{dead.pid}-0123abcd.tmp"  # a killed save_checkpoint
    (stale_dir / "sub").mkdir(parents=True)
    stale_file = tmp_path / f".report.{dead.pid}-89abcdef.tmp.json"
    stale_file.write_text("{")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale_dir, stale_file])
    assert list(tmp_path.iterdir()) == [mine]
    shutil.rmtree(tmp_path)


def test_frame_pattern_prints_the_real_file_names(tmp_path, capsys):
    out = tmp_path / "frame_%04d.png"
    assert main(["generate", "a red circle", "--frames", "5", "--steps", "1", "--random-init",
                 "--out", str(out)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(1, 6)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "frame_0001.png")
