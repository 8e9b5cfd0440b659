import itertools
import json

import numpy as np
import pytest
import torch

from lumos.cli.main import main
from lumos.errors import LumosError
from lumos.evaluation.tokenizer import evaluate_tokenizer, psnr, ssim
from lumos.tokenizers import load_visual_tokenizer
from lumos.tokenizers.causal_video import CausalVideoTokenizer, CausalVideoTokenizerConfig
from lumos.training.visual_tokenizer import (
    CHECKPOINT_DIR,
    TRAINER_STATE,
    ClipStream,
    TrainSettings,
    train_tokenizer,
)

TINY = CausalVideoTokenizerConfig(
    levels=[4, 3], channels=[8, 16], encoder_blocks=1, decoder_blocks=1, norm_groups=4
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and share the CPU best) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(**kw) -> TrainSettings:
    base = dict(
        steps=4,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        height=16,
        width=24,
        frames=5,
        image_fraction=0.5,
        checkpoint_every=2,
        log_every=1,
    )
    return TrainSettings(**(base | kw))


def test_ssim_hand_computed_values():
    x = torch.rand(3, 3, 20, 24)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, 0.01**2
    sa, sb = torch.full((2, 3, 16, 16), a), torch.full((2, 3, 16, 16), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert torch.allclose(ssim(sa, sb), torch.full((2,), expected), atol=1e-5)
    # symmetric, and noise lowers it
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    assert (ssim(x, y) < 0.99).all()
    with pytest.raises(LumosError, match="ssim"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_psnr_values():
    x = torch.zeros(2, 3, 4, 4)
    y = x + 0.1
    assert torch.allclose(psnr(x, y), torch.full((2,), 20.0), atol=1e-4)
    assert psnr(x, x)[0] == pytest.approx(100.0)


def test_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    straight = train_tokenizer(tmp_path / "a", settings(), TINY, progress=False)
    torch.manual_seed(0)
    train_tokenizer(tmp_path / "b", settings(), TINY, progress=False, stop_after=2)
    with (tmp_path / "b" / "train_log.jsonl").open("a") as f:  # a step logged after the
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")  # checkpoint, then a crash
    torch.manual_seed(123)  # resuming must not depend on the global RNG
    resumed = train_tokenizer(tmp_path / "b", settings(steps=4), resume=True, progress=False)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    log = [
        json.loads(line)
        for line in (tmp_path / "b" / "train_log.jsonl").read_text().split("\n")
        if line
    ]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {r["frames"] for r in log} <= {1, 5}
    # the output directory is a loadable tokenizer
    tok = load_visual_tokenizer(tmp_path / "b")
    assert isinstance(tok, CausalVideoTokenizer)
    assert not (tmp_path / "b" / f"{CHECKPOINT_DIR}.tmp").exists()


def test_training_reduces_loss(tmp_path):
    torch.manual_seed(0)
    train_tokenizer(
        tmp_path,
        settings(steps=20, lr=3e-3, warmup_steps=5, checkpoint_every=20),
        TINY,
        progress=False,
    )
    log = [
        json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().split("\n") if line
    ]
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]])


def test_run_guards(tmp_path):
    with pytest.raises(LumosError, match="--resume"):
        train_tokenizer(tmp_path, settings(), TINY, resume=True, progress=False)
    train_tokenizer(tmp_path, settings(steps=2), TINY, progress=False)
    with pytest.raises(LumosError, match="already holds"):
        train_tokenizer(tmp_path, settings(steps=2), TINY, progress=False)
    with pytest.raises(LumosError, match="1 \\+ 4k"):
        train_tokenizer(tmp_path / "c", settings(frames=6), TINY, progress=False)
    state_path = tmp_path / CHECKPOINT_DIR / TRAINER_STATE
    state = torch.load(state_path, weights_only=True)
    state["settings"]["option_from_another_version"] = 1.0
    torch.save(state, state_path)
    with pytest.raises(LumosError, match="option_from_another_version"):
        train_tokenizer(tmp_path, settings(steps=4), resume=True, progress=False)


def test_decoder_only_fine_tuning_keeps_every_code(tmp_path, capsys):
    torch.manual_seed(0)
    train_tokenizer(tmp_path / "base", settings(steps=2), TINY, progress=False)
    base = CausalVideoTokenizer.from_pretrained(tmp_path / "base").eval()
    tuned = train_tokenizer(
        tmp_path / "tuned",
        settings(steps=4, lr=1e-2, frames=[5, 13], image_fraction=0.0,
                 init_from=str(tmp_path / "base"), decoder_only=True),
        progress=False,
    )  # fmt: skip
    log = (tmp_path / "tuned" / "train_log.jsonl").read_text().splitlines()
    assert {json.loads(line)["frames"] for line in log} == {5, 13}  # both lengths drawn
    tuned = CausalVideoTokenizer.from_pretrained(tmp_path / "tuned").eval()
    for name, w in base.state_dict().items():
        same = torch.equal(w, tuned.state_dict()[name])
        assert same == name.startswith("encoder."), name  # only the decoder side learned
    clip = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    assert torch.equal(base.encode(clip), tuned.encode(clip))
    assert not torch.equal(base.decode(base.encode(clip)), tuned.decode(tuned.encode(clip)))
    with pytest.raises(LumosError, match="init_from"):
        train_tokenizer(tmp_path / "x", settings(decoder_only=True), TINY, progress=False)
    assert main(["train-tokenizer", "--out", str(tmp_path / "y"), "--decoder-only"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(["train-tokenizer", "--out", str(tmp_path / "base"), "--init-from",
                 str(tmp_path / "base"), "--steps", "1"]) == 2  # fmt: skip
    assert "also an input" in capsys.readouterr().err
    assert main(["train-tokenizer", "--out", str(tmp_path / "z"), "--frames", "9,6"]) == 2
    assert "1 + 4k" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_evaluate_reports_metrics(tmp_path):
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(TINY).eval()
    result = evaluate_tokenizer(
        tok, "heldout", n=3, height=16, width=24, frames=5, batch_size=2, progress=False
    )
    assert result["clips"] == 3 and 0 < result["psnr"] < 100 and -1 <= result["ssim"] <= 1
    assert 0 <= result["analyser_accuracy"] <= 1
    assert set(result["analyser"]) >= {"color", "shape", "all"}
    by_object = result["shape_by_object"]
    assert by_object and all(k.split()[0] in ("small", "large") for k in by_object)
    assert all(0 <= v <= 1 for v in by_object.values())
    json.dumps(result)


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "tok"
    args = [
        "train-tokenizer",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--height",
        "16",
        "--width",
        "16",
        "--frames",
        "5",
        "--levels",
        "4,3",
        "--channels",
        "8,16",
        "--threads",
        "1",
        "--checkpoint-every",
        "1",
    ]
    assert main(args) == 0
    assert (
        main(
            [
                "eval-tokenizer",
                str(out),
                "--n",
                "2",
                "--height",
                "16",
                "--width",
                "16",
                "--frames",
                "5",
                "--json",
                str(tmp_path / "r.json"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["clips"] == 2
    assert "PSNR" in capsys.readouterr().out
    assert main(["eval-tokenizer", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_color_augmentation_permutes_channels():
    plain = ClipStream(settings(color_augment_from=10**9, batch_size=6))
    augmented = ClipStream(settings(color_augment_from=3, batch_size=6))
    assert torch.equal(plain.batch(2), augmented.batch(2))  # before color_augment_from
    a, b = plain.batch(7), augmented.batch(7)
    assert torch.equal(b, augmented.batch(7))  # a pure function of the step
    assert not torch.equal(a, b)
    for x, y in zip(a, b, strict=True):  # each clip: the same channels, reordered
        assert any(torch.equal(x[list(p)], y) for p in itertools.permutations(range(3)))
