"""Stand-ins of the released Lumos-1 files, built by the tests (the real ones cannot be
downloaded here): Chameleon's ``tokenizer.json``, Lumos-1's ``text_tokenizer.json`` with the
official builder's quirks, and a tiny random checkpoint in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from conftest import OFFICIAL
from lumos.model.config import LumosConfig
from lumos.model.transformer import LumosModel
from lumos.tokenizers.official_text import VIDEO_TOKEN_PATTERN, video_token

COSMOS_NARROW = OFFICIAL / "cosmos_dv4x8x8_narrow"
TEXT_IDS = 65536


def chameleon_tokenizer_json() -> dict:
    """A Chameleon-format tokenizer.json: 65,536 ids, ``<s>``/``<pad>``/``</s>``/``<unk>`` at
    0-3, ``<eoss>`` 8196, ``<racm3:break>`` 8197, ``<reservedNNNNN>`` at NNNNN + 4 from 8198,
    a byte-level alphabet (no merges) and fillers up to 65,535."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab |= {f"IMGIMG{i}Z": i for i in range(4, 8196)}
    vocab |= {"<eoss>": 8196, "<racm3:break>": 8197}
    vocab |= {f"<reserved{i - 4:05d}>": i for i in range(8198, 9300)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    vocab |= {f"filler{i}": i for i in range(len(vocab), TEXT_IDS)}
    assert len(vocab) == TEXT_IDS and max(vocab.values()) == TEXT_IDS - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in vocab if t.startswith("<")]
    tok.add_special_tokens(specials)
    return json.loads(tok.to_str())


def write_chameleon_tokenizer(path: Path) -> Path:
    path.write_text(json.dumps(chameleon_tokenizer_json()))
    return path


def write_lumos_text_tokenizer(path: Path, quirks: bool = True, drop: int = 0) -> Path:
    """Lumos-1's text_tokenizer.json as the official builder writes it: the 64,000 video
    tokens as ONE nested list in ``added_tokens`` and ``"version": "2.0"`` (``quirks``), the
    Split pre-tokenizer in front. ``drop`` leaves out the last ``drop`` video tokens."""
    data = chameleon_tokenizer_json()
    entries = [
        {
            "id": TEXT_IDS + i,
            "content": video_token(i),
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in range(64000 - drop)
    ]
    if quirks:
        data["added_tokens"].append(entries)
        data["version"] = "2.0"
    else:
        data["added_tokens"] += entries
    split = {
        "type": "Split",
        "pattern": {"Regex": VIDEO_TOKEN_PATTERN},
        "behavior": "Isolated",
        "invert": False,
    }
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, data["pre_tokenizer"]]}
    path.write_text(json.dumps(data))
    return path


def write_official_checkpoint(path: Path, vocab_size: int = 129536, shards: int = 1) -> Path:
    """A tiny random checkpoint in the official layout: the official fixture's config.json
    (Chameleon keys) with ``vocab_size`` and a small body, official key names, ``shards``
    safetensors files (with an index when > 1)."""
    config = json.loads((OFFICIAL / "weights" / "config.json").read_text())
    config |= {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
    }
    torch.manual_seed(0)
    model = LumosModel(LumosConfig.from_official(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
        return path
    keys = sorted(state)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[s::shards]}
        save_file(part, path / name, metadata={"format": "pt"})
        weight_map |= {k: name for k in part}
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path
