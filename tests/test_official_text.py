"""The official Lumos-1 text tokenizer: Lumos-1's text_tokenizer.json as published (quirks
included) or Chameleon's tokenizer.json, checked against the official ids (docs/design.md,
"Vocabulary" and "Tokenizers")."""

import json

import pytest
from tokenizers import Tokenizer

from lumos.errors import LumosError
from lumos.sequence.vocab import Vocabulary
from lumos.tokenizers.official_text import (
    VIDEO_TOKEN_PATTERN,
    build_official_text_tokenizer,
    official_special_tokens,
    video_token,
)
from lumos.tokenizers.text import TextTokenizer
from official_stand_ins import (
    chameleon_tokenizer_json,
    write_chameleon_tokenizer,
    write_lumos_text_tokenizer,
)

SAMPLES = [0, 1, 9, 10, 407, 9999, 12345, 63999]


def test_video_token_strings():
    assert video_token(0) == "VIDVIDAZ"
    assert video_token(407) == "VIDVIDEAHZ"
    assert video_token(63999) == "VIDVIDGDJJJZ"


def test_official_special_token_strings():
    tokens = official_special_tokens(Vocabulary.official())
    assert tokens["<racm3:break>"] == 8197 and tokens["<eoss>"] == 8196
    assert tokens["<reserved08706>"] == 8710 and tokens["<reserved08799>"] == 8803
    assert tokens["<reserved08999>"] == 9003  # MASK
    assert tokens["<reserved09000>"] == 9004 and tokens["<reserved09001>"] == 9005
    assert tokens["<reserved08800>"] == 8804 and tokens["<reserved08998>"] == 9002  # ints


def check_result(tok: TextTokenizer, tmp_path):
    """The result is a valid tokenizer.json (HF loads it) with every official id in place."""
    tok.save(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert data["version"] == "1.0"
    assert all(isinstance(a, dict) for a in data["added_tokens"])
    reloaded = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert reloaded.get_vocab_size(with_added_tokens=True) == 129536
    for i in SAMPLES:
        assert reloaded.token_to_id(video_token(i)) == 65536 + i
        assert reloaded.id_to_token(65536 + i) == video_token(i)
    for token, tid in official_special_tokens(Vocabulary.official()).items():
        assert reloaded.token_to_id(token) == tid
    pre = data["pre_tokenizer"]
    assert pre["type"] == "Sequence" and pre["pretokenizers"][0]["pattern"] == {
        "Regex": VIDEO_TOKEN_PATTERN
    }
    assert pre["pretokenizers"][0]["behavior"] == "Isolated"
    ids = tok.encode("a red ball rolls left")
    assert ids and max(ids) < 65536  # plain text stays text
    return data


def test_lumos_format_with_both_quirks(tmp_path):
    src = write_lumos_text_tokenizer(tmp_path / "text_tokenizer.json", quirks=True)
    raw = json.loads(src.read_text())
    assert raw["version"] == "2.0" and isinstance(raw["added_tokens"][-1], list)
    with pytest.raises(Exception, match="version"):
        Tokenizer.from_file(str(src))  # what the published file does to Hugging Face
    check_result(build_official_text_tokenizer(src), tmp_path)


def test_chameleon_format_gets_the_video_tokens(tmp_path):
    src = write_chameleon_tokenizer(tmp_path / "tokenizer.json")
    data = check_result(build_official_text_tokenizer(src), tmp_path)
    video = [a for a in data["added_tokens"] if a["content"].startswith("VIDVID")]
    assert len(video) == 64000
    assert all(a["special"] and not a["normalized"] for a in video)
    assert [a["id"] for a in video] == list(range(65536, 129536))
    # the same file as the published one, read through its quirks
    lumos = build_official_text_tokenizer(
        write_lumos_text_tokenizer(tmp_path / "lumos.json", quirks=True)
    )
    ours = build_official_text_tokenizer(src)
    text = "a small blue cube, VIDVIDEAHZ <s> <reserved08706>"
    assert ours.encode(text) == lumos.encode(text)


def edited(tmp_path, edit):
    data = chameleon_tokenizer_json()
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_errors(tmp_path):
    with pytest.raises(LumosError, match="has 63995 video tokens, not 64000"):
        build_official_text_tokenizer(write_lumos_text_tokenizer(tmp_path / "a.json", drop=5))

    def move_video_token(data):
        data["added_tokens"] += [
            {"id": 65536 + i, "content": video_token(i), "special": True} for i in range(64000)
        ]
        data["added_tokens"][-1]["id"], data["added_tokens"][-2]["id"] = 129534, 129535

    with pytest.raises(LumosError, match="video token VIDVIDGDJJIZ has id 129535, expected 129534"):
        build_official_text_tokenizer(edited(tmp_path, move_video_token))

    def swap_break(data):
        vocab = data["model"]["vocab"]
        vocab["<racm3:break>"], vocab["<eoss>"] = 8196, 8197
        for a in data["added_tokens"]:
            if a["content"] in ("<racm3:break>", "<eoss>"):
                a["id"] = vocab[a["content"]]

    with pytest.raises(LumosError, match="<racm3:break> has id 8196, the checkpoint expects 8197"):
        build_official_text_tokenizer(edited(tmp_path, swap_break))

    def no_reserved(data):
        del data["model"]["vocab"]["<reserved08999>"]
        data["added_tokens"] = [
            a for a in data["added_tokens"] if a["content"] != "<reserved08999>"
        ]

    with pytest.raises(LumosError, match="Chameleon's 65536 text ids"):
        build_official_text_tokenizer(edited(tmp_path, no_reserved))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LumosError, match="cannot read text tokenizer"):
        build_official_text_tokenizer(tmp_path / "bad.json")
    (tmp_path / "nomodel.json").write_text("{}")
    with pytest.raises(LumosError, match="model.vocab"):
        build_official_text_tokenizer(tmp_path / "nomodel.json")
    with pytest.raises(LumosError, match="does not exist"):
        build_official_text_tokenizer(tmp_path / "missing.json")
