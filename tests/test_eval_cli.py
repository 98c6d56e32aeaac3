"""`vidrl eval` argument handling and `--compare`, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidrl.cli import main
from vidrl.cluster.config import load_run_config
from vidrl.cluster.eval_job import model_names, variant_configs

EXAMPLE = Path(__file__).parents[1] / "examples" / "synthetic.yaml"


def test_compare_prints_runs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, miou in (("base", 10.0), ("rl", 12.25)):
        (tmp_path / name).mkdir()
        summary = {"variants": {"think": {"tvg": {"mIoU": miou, "n": 2}}}}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert main(["eval", "--compare", str(tmp_path / "base"), str(tmp_path / "rl")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "base", "rl"]
    assert lines[1].split() == ["think", "tvg", "mIoU", "10.0", "12.2"]  # 12.25 -> 12.2 (half to even)


def test_compare_rejects_a_file_that_is_not_a_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a `vidrl eval` summary"):
        main(["eval", "--compare", str(tmp_path)])


def test_eval_needs_a_config_and_known_variants() -> None:
    with pytest.raises(SystemExit, match="give a run config"):
        main(["eval", "--model", "m"])
    with pytest.raises(SystemExit, match="--variants takes think, no_think"):
        main(["eval", str(EXAMPLE), "--model", "m", "--variants", "think,maybe"])


def test_model_names_from_paths_or_given() -> None:
    assert model_names(["runs/x/sft/hf", "grpo=runs/x/checkpoints/step_000020/hf"]) == {
        "hf": "runs/x/sft/hf",
        "grpo": "runs/x/checkpoints/step_000020/hf",
    }
    with pytest.raises(ValueError, match="two models named 'hf'"):
        model_names(["a/hf", "b/hf"])


def test_variants_set_prompt_and_reward_thinking_together() -> None:
    cfg = load_run_config(EXAMPLE)  # prompt.think = rewards.think = false
    assert list(variant_configs(cfg, None)) == ["no_think"]
    both = variant_configs(cfg, ["think", "no_think"])
    assert (both["think"].prompt.think, both["think"].rewards.think) == (True, True)
    assert (both["no_think"].prompt.think, both["no_think"].rewards.think) == (False, False)
