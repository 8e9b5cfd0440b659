import json

import pytest

from lumos import LumosError
from lumos.cli.main import main
from lumos.data.world import HELDOUT_PAIRS, parse_caption
from lumos.evaluation.evaluate import GROUPS, build_cases


def test_cases_are_deterministic_and_split_correctly():
    a = build_cases(5, 64, 64, 9, seed=1)
    b = build_cases(5, 64, 64, 9, seed=1)
    assert [c.prompt for c in a] == [c.prompt for c in b]
    assert [c.group for c in a] == [g for g in GROUPS for _ in range(5)]
    for c in a:
        spec = parse_caption(c.prompt)
        pairs = {(o.color, o.shape) for o in spec.objects}
        assert bool(pairs & HELDOUT_PAIRS) == ("heldout" in c.group)
        assert (c.image is not None) == c.group.startswith("i2v")
        if c.image is not None:
            assert c.image.shape == (64, 64, 3)


def test_case_sets_do_not_depend_on_other_groups_or_overlap_across_seeds():
    alone = build_cases(6, 64, 64, 9, seed=0, groups=("t2i",))
    together = [c for c in build_cases(6, 64, 64, 9, seed=0) if c.group == "t2i"]
    assert [(c.prompt, c.seed) for c in alone] == [(c.prompt, c.seed) for c in together]
    cases = {s: build_cases(50, 64, 64, 9, seed=s) for s in (0, 1, 2)}
    seeds = {s: {c.seed for c in v} for s, v in cases.items()}
    assert all(len(v) == 200 for v in seeds.values())
    assert not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2]) and not (seeds[0] & seeds[2])
    same = sum(a.prompt == b.prompt for a, b in zip(cases[0], cases[1], strict=True))
    assert same < 100  # a different prompt set


def test_cli_eval_writes_report_and_sheet(tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval", "--random-init", "--n", "1", "--steps", "1", "--top-k", "5", "--out", str(out)]
    assert main([*argv, "--official-temperature"]) == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["num_inference_steps"] == 1 and settings["top_k"] == 5
    assert settings["official_temperature"] is True
    assert settings["guidance_scale"] == 3.0  # unset options: the model's defaults
    assert set(report["accuracy"]) == set(GROUPS) and len(report["cases"]) == 4
    assert all("color" in c["scores"] for c in report["cases"])
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert "t2v_heldout" in capsys.readouterr().out
    assert main(["eval", "--random-init", "--groups", "nope"]) == 2
    assert main(["eval", "--random-init", "--n", "0"]) == 2
    assert main(["eval", "--random-init", "--seed", "-1"]) == 2


def test_build_cases_rejects_bad_counts_as_user_errors():
    for n, seed in ((0, 0), (5, -1)):
        with pytest.raises(LumosError, match="0 < n"):
            build_cases(n, 64, 64, 9, seed=seed)
