"""Small shared builders for tests."""

import dataclasses

from lumos import LumosConfig, LumosModel, Vocabulary


def small_vocab(codebook_size: int = 256) -> Vocabulary:
    """Official special ids with a small visual codebook (ids 65536 .. 65536+codebook)."""
    return dataclasses.replace(Vocabulary.official(), codebook_size=codebook_size)


def tiny_model(codebook_size: int = 256, **overrides) -> LumosModel:
    vocab = small_vocab(codebook_size)
    kw = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128)
    cfg = LumosConfig.tiny(vocabulary=vocab, vocab_size=vocab.size, **{**kw, **overrides})
    return LumosModel(cfg).eval()
