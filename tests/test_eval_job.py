"""`vidrl eval` end to end: the tiny model on synthetic videos through a real vLLM rollout
worker, with a corrupt video in the evaluation set, both prompt variants, and the predictions
file read back by `vidrl metrics`."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[1] / "examples" / "synthetic.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vidrl.data.config import DataConfig
    from vidrl.data.readers import load_samples, write_samples
    from vidrl.data.synth import synthesize
    from vidrl.data.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval")
    data = synthesize(root / "data", num_videos=4, seed=3)
    samples = load_samples(data.test_yaml, DataConfig())
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 8)
    # One extra sample whose video decord cannot read: skipped and counted, never a crash.
    broken = replace(samples[0], id="broken", video=str(corrupt))
    return {
        "model": build_tiny_model(root / "model"),
        "eval": write_samples(root / "eval.jsonl", [*samples, broken]),
        "num_good": len(samples),
        "out": root / "out",
    }


def test_vidrl_eval_on_two_checkpoints_with_one_pool(
    assets: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Model a, then b pushed into the same engine, then a again: b gives its own answers, a's
    come back exactly; every predictions file gives `vidrl metrics` the summary's numbers."""
    from vidrl.cli import main
    from vidrl.data.tiny import build_tiny_model
    from vidrl.evaluation.report import main_metrics

    other = build_tiny_model(assets["out"].parent / "model_b", seed=1)
    out = assets["out"]
    argv = ["eval", str(EXAMPLE), "rollout.max_response_tokens=24", "--data", str(assets["eval"])]
    argv += [
        "--model",
        f"a={assets['model']}",
        "--model",
        f"b={other}",
        "--model",
        f"a_again={assets['model']}",
    ]
    argv += ["--out", str(out), "--variants", "think,no_think"]
    assert main(argv) == 0  # starts its own local Ray cluster, and stops it
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header == ["metric", "a", "b", "a_again"]

    answers: dict[str, list[str]] = {}
    for model in ("a", "b", "a_again"):
        summary = json.loads((out / model / "summary.json").read_text())
        assert set(summary["variants"]) == {"think", "no_think"}
        for variant, result in summary["variants"].items():
            assert result["skipped_videos"] == 1 and "broken" in result["skip_reasons"][0]
            assert result["samples"] == assets["num_good"]  # every other sample answered once
            rows = [json.loads(r) for r in (out / model / result["predictions"]).read_text().splitlines()]
            assert len(rows) == assets["num_good"] and {r["variant"] for r in rows} == {variant}
            answers[f"{model}/{variant}"] = [r["prediction"] for r in rows]
            printed = io.StringIO()
            assert main_metrics(str(out / model / result["predictions"]), "tags", printed) == 0
            metrics = json.loads(printed.getvalue())
            tasks = {k: v for k, v in result.items() if k in ("tvg", "mcq", "gqa", "track")}
            assert metrics["tasks"] == tasks  # the same numbers, from the file alone
            assert metrics["mIoU"] == tasks["tvg"]["mIoU"]
    assert answers["a/no_think"] != answers["b/no_think"]  # b's weights were loaded
    assert answers["a_again/no_think"] == answers["a/no_think"]  # and a's came back whole
    assert answers["a_again/think"] == answers["a/think"]
