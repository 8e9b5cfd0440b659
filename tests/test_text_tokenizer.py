import argparse
import csv
import json
import os
import random
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import lumos.cli.text_tokenizer as text_tokenizer_cli
from lumos.errors import LumosError
from lumos.sequence.layout import prompt_text
from lumos.tokenizers.text import (
    NUM_INT_TOKENS,
    SPECIAL_TOKENS,
    TextTokenizer,
    int_token,
    train_text_tokenizer,
)

COLORS = ["red", "blue", "green", "yellow", "purple", "white", "black", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "ball", "cube"]
MOTIONS = ["moves left", "moves right", "bounces", "spins slowly", "falls down", "stays still"]
SCENES = ["on a grey background", "in a dark room", "near the sea", "under a blue sky"]


def captions(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [
        f"A {rng.choice(COLORS)} {rng.choice(SHAPES)} {rng.choice(MOTIONS)} {rng.choice(SCENES)}."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_text_tokenizer(captions(0), vocab_size=1000, path=path), path


def test_special_token_ids(trained):
    tok, _ = trained
    assert len(SPECIAL_TOKENS) == 10 + NUM_INT_TOKENS
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i
        assert tok.id_to_token(i) == name
    assert tok.token_to_id("<s>") == 0 and tok.token_to_id("<mask>") == 9
    assert tok.token_to_id(int_token(0)) == 10 and tok.token_to_id("<int_255>") == 265
    assert tok.token_to_id("<int_256>") is None
    assert len(SPECIAL_TOKENS) + 256 < tok.vocab_size < 1000  # the corpus runs out of merges


def test_round_trip_and_compression(trained):
    tok, _ = trained
    held_out = captions(seed=123, n=50)
    n_ids = n_bytes = 0
    for text in held_out:
        ids = tok.encode(text)
        assert all(len(SPECIAL_TOKENS) <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        n_ids += len(ids)
        n_bytes += len(text.encode())
    assert n_bytes / n_ids > 4.0  # whole words are tokens after training
    assert tok.encode_batch(held_out[:5]) == [tok.encode(t) for t in held_out[:5]]


def test_arbitrary_unicode_and_special_strings(trained):
    tok, _ = trained
    for text in ["héllo wörld 漢字 🙂", "  two  spaces\nnew line\t", "", "<s> <mask> <int_3>"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # special-token strings in user text stay text: they never become layout ids
    assert not set(tok.encode("<s><video_start><int_3>")) & set(range(len(SPECIAL_TOKENS)))
    assert tok.decode([0, 4, 10 + 12, 3]) == "<s><video_start><int_12><sep>"
    assert tok.decode([0, 4, 3], skip_special_tokens=True) == ""
    with pytest.raises(LumosError, match="not text ids"):
        tok.decode([tok.vocab_size + 5])


def test_deterministic(tmp_path):
    # vocab 600 stops mid-way through the merges, where ties between equal counts matter
    first, again, other = (tmp_path / f"{name}.json" for name in ("first", "again", "other"))
    train_text_tokenizer(captions(0), vocab_size=600, path=first)
    train_text_tokenizer(captions(0), vocab_size=600, path=again)
    assert again.read_text() == first.read_text()
    # a fresh process (different hash seeds) writes the same file
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(captions(0)))
    code = (
        "import json, sys; from lumos.tokenizers.text import train_text_tokenizer;"
        "train_text_tokenizer(json.load(open(sys.argv[1])), 600, sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(corpus), str(other)],
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    assert other.read_text() == first.read_text()


def test_save_load(trained, tmp_path):
    tok, path = trained
    loaded = TextTokenizer.from_file(path)
    text = "A purple star spins slowly near the sea."
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size
    loaded.save(tmp_path)  # a directory gets tokenizer.json
    assert TextTokenizer.from_file(tmp_path).encode(text) == tok.encode(text)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_foreign_tokenizer_file(tmp_path):
    # a tokenizer.json with other special tokens (like the official Chameleon one) still loads
    vocab = {"<unk>": 0, "<racm3:break>": 1, "hello": 2, "world": 3}
    foreign = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(tmp_path / "tokenizer.json"))
    tok = TextTokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.encode("hello world") == [2, 3]
    assert tok.token_to_id("<racm3:break>") == 1
    assert tok.token_to_id("<s>") is None and tok.token_to_id("<int_0>") is None
    assert tok.vocab_size == 4


def test_errors(tmp_path):
    with pytest.raises(LumosError, match="no such text tokenizer"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(LumosError, match="not a valid"):
        TextTokenizer.from_file(corrupt)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"hello": 1}))
    with pytest.raises(LumosError, match="not a valid"):
        TextTokenizer.from_file(wrong)
    with pytest.raises(LumosError, match="too small"):
        train_text_tokenizer(captions(0), vocab_size=300)
    with pytest.raises(LumosError, match="empty"):
        train_text_tokenizer(["", "  "], vocab_size=1000)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    text_tokenizer_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-text-tokenizer", *argv])
    return args.func(args)


def test_cli_train_text_tokenizer(tmp_path, capsys):
    texts = captions(4, n=60)
    (tmp_path / "a.txt").write_text("\n".join(texts[:20]) + "\n\n")
    (tmp_path / "b.jsonl").write_text(
        "\n".join(
            json.dumps({"path": f"{i}.mp4", "caption": t}) for i, t in enumerate(texts[20:40])
        )
    )
    with (tmp_path / "c.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows([f"{i}.mp4", t] for i, t in enumerate(texts[40:]))
    inputs = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.csv")]
    out = tmp_path / "new_dir"  # created
    assert run_cli(*inputs, "--world", "30", "--vocab-size", "900", "--out", str(out)) == 0
    assert "from 90 texts" in capsys.readouterr().out
    tok = TextTokenizer.from_file(out)
    assert tok.token_to_id("<int_7>") == 17
    prompt = prompt_text(texts[0], 448, 256, 12, 2)
    assert tok.decode(tok.encode(prompt)) == prompt
    assert len(tok.encode(prompt)) < len(prompt.encode()) / 3  # the template words are merged

    (tmp_path / "bad.jsonl").write_text('{"caption": "ok"}\n{"path": "x.mp4"}\n')
    with pytest.raises(LumosError, match="bad.jsonl:2"):
        run_cli(str(tmp_path / "bad.jsonl"), "--out", str(out))
    with pytest.raises(LumosError, match="no captions"):
        run_cli("--out", str(out))
    with pytest.raises(LumosError, match="unsupported"):
        run_cli(str(out / "tokenizer.json"), "--out", str(tmp_path / "other"))
    with pytest.raises(LumosError, match="also an input"):  # never written over an input
        run_cli(str(out / "tokenizer.json"), "--out", str(out))
