"""TokenLoader: determinism, exact resume, image/video ratio, length grouping, rank split."""

import dataclasses
import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from lumos import LumosError, Vocabulary
from lumos.data import shards as fmt
from lumos.data.loader import TokenLoader
from lumos.sequence.layout import parse_sequence

VOCAB = dataclasses.replace(Vocabulary.official(), codebook_size=512)


def make_dataset(root, rng, shard_sizes, image_share=0.3, fingerprint="test"):
    """Shards of random samples: videos of 2-3 latent frames or images, on 4x4 or 4x8 latent
    grids, with text lengths spread over 3..120 tokens. Returns the samples by key."""
    root.mkdir(parents=True, exist_ok=True)
    infos, samples, index = [], {}, 0
    for j, size in enumerate(shard_sizes):
        rows = []
        for _ in range(size):
            image = rng.random() < image_share
            t, h, w = (1 if image else int(rng.integers(2, 4))), 4, int(rng.choice([4, 8]))
            rows.append(
                fmt.TokenizedSample(
                    key=f"{fingerprint}-{index}",
                    index=index,
                    kind="image" if image else "video",
                    codes=rng.integers(0, VOCAB.codebook_size, (t, h, w)).astype(np.int32),
                    text_ids=rng.integers(300, 5000, int(rng.integers(3, 121))).astype(np.int32),
                    width=8 * w,
                    height=8 * h,
                    fps=1 if image else 4,
                    duration=1 if image else 2,
                    caption="a caption",
                    source="test",
                )
            )
            samples[rows[-1].key] = rows[-1]
            index += 1
        name = fmt.shard_name(j, len(shard_sizes))
        fmt.write_shard(root / name, rows, {"fingerprint": fingerprint})
        images = sum(r.kind == "image" for r in rows)
        infos.append({"file": name, "samples": size, "images": images, "videos": size - images})
    index_data = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "fingerprint": fingerprint,
        "shards": infos,
        "vocab": VOCAB.to_dict(),
        "visual_tokenizer": {"spatial_compression": 8},
    }
    (root / fmt.INDEX_NAME).write_text(json.dumps(index_data))
    return samples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(1234)
    samples = make_dataset(root, rng, [23, 17, 30, 11, 25, 19])
    return root, samples


def batches(loader, n):
    return [[x.tolist() for x in b] for b in itertools.islice(loader, n)]


def identify(samples):
    """Map sequence -> sample key (sequences are unique: random codes)."""
    return {tuple(s.sequence(VOCAB, 8).tolist()): k for k, s in samples.items()}


def test_batches_are_valid_sequences_of_one_kind(dataset):
    root, samples = dataset
    ids = identify(samples)
    loader = TokenLoader(root, 3, image_batch_size=5, image_ratio=0.5, window_samples=40)
    for step, batch in enumerate(itertools.islice(loader, 12)):
        keys = [ids[tuple(x.tolist())] for x in batch]
        kinds = {samples[k].kind for k in keys}
        assert kinds == {"video" if step % 2 == 0 else "image"}
        assert len(batch) == (3 if kinds == {"video"} else 5)
        for x, k in zip(batch, keys, strict=True):
            assert x.dtype == torch.long and x.dim() == 1
            parsed = parse_sequence(VOCAB, x)
            codes = torch.stack([VOCAB.ids_to_codes(f) for f in parsed.frames])
            assert torch.equal(codes, torch.from_numpy(samples[k].codes).long())


def test_deterministic_for_a_seed(dataset):
    root, _ = dataset
    a = batches(TokenLoader(root, 4, seed=7, window_samples=30), 25)
    b = batches(TokenLoader(root, 4, seed=7, window_samples=30), 25)
    c = batches(TokenLoader(root, 4, seed=8, window_samples=30), 25)
    assert a == b
    assert a != c


@pytest.mark.parametrize("world_size,accumulation", [(1, 1), (2, 3)])
def test_resume_gives_the_uninterrupted_batches(dataset, world_size, accumulation):
    root, _ = dataset
    kw = dict(
        image_ratio=0.4, seed=3, world_size=world_size, rank=world_size - 1,
        grad_accumulation=accumulation, window_samples=25,
    )  # fmt: skip
    full = batches(TokenLoader(root, 3, **kw), 60)  # several epochs of both streams
    for stop in (1, 17, 41):
        first = TokenLoader(root, 3, **kw)
        head = batches(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
        resumed = TokenLoader(root, 3, **kw)
        resumed.load_state_dict(state)
        assert head + batches(resumed, 60 - stop) == full


def test_resume_rejects_other_settings(dataset):
    root, _ = dataset
    state = TokenLoader(root, 4).state_dict()
    with pytest.raises(LumosError, match="batch_sizes"):
        TokenLoader(root, 5).load_state_dict(state)


def test_image_ratio_and_accumulation(dataset):
    root, samples = dataset
    ids = identify(samples)

    def kinds(loader, n):
        return [samples[ids[tuple(b[0].tolist())]].kind[0] for b in itertools.islice(loader, n)]

    assert "".join(kinds(TokenLoader(root, 2, image_ratio=0.5), 8)) == "vivivivi"
    assert "".join(kinds(TokenLoader(root, 2, image_ratio=0.25), 8)) == "vvvivvvi"
    assert set(kinds(TokenLoader(root, 2, image_ratio=0.0), 10)) == {"v"}
    assert set(kinds(TokenLoader(root, 2, image_ratio=1.0), 10)) == {"i"}
    acc = TokenLoader(root, 2, image_ratio=0.5, grad_accumulation=3)
    assert "".join(kinds(acc, 12)) == "vvviiivvviii"
    odd = TokenLoader(root, 2, image_ratio=0.29)
    assert [odd.kind_at(k) for k in range(100)].count("image") == 29
    natural = TokenLoader(root, 2)
    share = sum(s.kind == "image" for s in samples.values()) / len(samples)
    assert natural.image_ratio == pytest.approx(share)
    assert kinds(natural, 200).count("i") == pytest.approx(200 * share, abs=1)


def test_length_grouping_reduces_padding(dataset):
    root, _ = dataset

    def padding(group_batches):
        loader = TokenLoader(root, 4, image_ratio=0.0, group_batches=group_batches)
        pad = total = 0
        for batch in itertools.islice(loader, 60):
            lengths = [len(x) for x in batch]
            pad += max(lengths) * len(lengths) - sum(lengths)
            total += max(lengths) * len(lengths)
        return pad / total

    grouped, ungrouped = padding(16), padding(1)
    assert grouped < 0.3 * ungrouped


def test_ranks_split_each_global_batch(dataset):
    root, samples = dataset
    ids = identify(samples)
    kw = dict(image_ratio=0.5, seed=5, window_samples=30)
    whole = batches(TokenLoader(root, 6, image_batch_size=9, **kw), 20)
    ranks = [
        batches(TokenLoader(root, 2, image_batch_size=3, rank=r, world_size=3, **kw), 20)
        for r in range(3)
    ]
    for step, global_batch in enumerate(whole):
        parts = [ranks[r][step] for r in range(3)]
        assert [x for r in range(3) for x in global_batch[r::3]] == [x for p in parts for x in p]
    # One epoch of the video stream (one window): ranks see disjoint samples, every video once,
    # apart from the few repeated to fill the last global batch of 10.
    videos = {k for k, s in samples.items() if s.kind == "video"}
    steps = -(-len(videos) // 10)
    pad = steps * 10 - len(videos)
    seen = [
        [
            ids[tuple(x)]
            for b in batches(TokenLoader(root, 5, rank=r, world_size=2, image_ratio=0.0), steps)
            for x in b
        ]
        for r in range(2)
    ]
    assert set(seen[0]) | set(seen[1]) == videos
    assert len(seen[0]) + len(seen[1]) == steps * 10
    assert len(set(seen[0]) & set(seen[1])) <= pad
    assert max(Counter(seen[0] + seen[1]).values()) <= 2


def test_streams_one_window_at_a_time(dataset):
    root, _ = dataset
    loader = TokenLoader(root, 2, image_ratio=0.0, window_samples=20)
    next(loader)
    window = loader.streams["video"]._cached[1]
    assert len(window.samples) < 20 + 30  # at most one shard past the window size


def test_pooled_datasets_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    images = make_dataset(tmp_path / "img", rng, [6, 6], image_share=1.0, fingerprint="img")
    videos = make_dataset(tmp_path / "vid", rng, [5, 7], image_share=0.0, fingerprint="vid")
    ids = identify(images | videos)
    loader = TokenLoader([tmp_path / "img", tmp_path / "vid"], 2, image_ratio=0.5)
    seen = [ids[tuple(x.tolist())] for b in itertools.islice(loader, 40) for x in b]
    assert set(seen) == set(images) | set(videos)
    with pytest.raises(LumosError, match="no images"):
        TokenLoader(tmp_path / "vid", 2, image_ratio=0.5)
    with pytest.raises(LumosError, match="rank"):
        TokenLoader(tmp_path / "vid", 2, rank=2, world_size=2)
    with pytest.raises(LumosError, match="no such token index"):
        TokenLoader(tmp_path, 2)
