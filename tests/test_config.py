"""RunConfig: YAML + dotted overrides; every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vidrl.cluster.config import ConfigError, RunConfig, dump_config, load_run_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    cfg = load_run_config(None)
    assert cfg.video.fps == 2.0
    assert cfg.data.max_skipped_fraction == 0.05


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "run_name: a\nvideo:\n  fps: 1.0\n")
    cfg = load_run_config(path, ["video.fps=4", "data.max_skipped_fraction=1e-1", "prompt.think=false"])
    assert cfg.run_name == "a"
    assert cfg.video.fps == 4.0  # the override wins over the file
    assert cfg.data.max_skipped_fraction == pytest.approx(0.1)  # "1e-1" is a string to YAML 1.1
    assert cfg.prompt.think is False


def test_unknown_key_in_file_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "video:\n  fsp: 1.0\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    text = str(err.value)
    assert "video.fsp: unknown key (value 1.0)" in text
    assert "fps" in text and "max_frames" in text


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'lr' is not a key of video; allowed: .*fps"):
        load_run_config(None, ["video.lr=1"])


def test_wrong_type_and_out_of_range_name_key_value_and_bound() -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["video.fps=fast", "data.max_skipped_fraction=2"])
    text = str(err.value)
    assert "video.fps:" in text and "'fast'" in text
    assert "data.max_skipped_fraction: Input should be less than or equal to 1 (got 2)" in text


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_run_config(None, ["video.fps"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, "video: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(write(tmp_path, "- 1\n"))


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_run_config(None, ["run_name=x", "video.max_frames=16"])
    with pytest.raises(ValueError):
        cfg.video.fps = 3.0  # type: ignore[misc]
    again = load_run_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_every_field_is_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():
            if not info.description:
                missing.append(f"{model.__name__}.{name}")
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                missing += walk(sub)
        return missing

    assert walk(RunConfig) == []


OVERLONG = "{name: overlong, fn: overlong_penalty, kwargs: {buffer_tokens: 20}}"
OVERLONG_AT_50 = "{name: overlong, fn: overlong_penalty, kwargs: {max_tokens: 50, buffer_tokens: 20}}"

# (what the user states, the derived value that follows it, a value the derived key may not take)
DERIVED = [
    (["prompt.think=false"], lambda c: c.rewards.think is False, "rewards.think=true"),
    (
        ["video.min_pixels_per_frame=1024"],
        lambda c: c.rollout.min_pixels_per_frame == 1024,
        "rollout.min_pixels_per_frame=4096",
    ),
    (
        ["video.max_pixels_per_frame=4096"],
        lambda c: c.rollout.max_pixels_per_frame == 4096,
        "rollout.max_pixels_per_frame=8192",
    ),
    (["learner.lora={rank: 8}"], lambda c: c.rollout.lora_rank == 8, "rollout.lora_rank=16"),
    (
        ["rewards.preset=videochat_r1"],
        lambda c: c.prompt.tvg_answer_style == "to",
        "prompt.tvg_answer_style=json",
    ),
    (
        ["rollout.max_response_tokens=100", f"rewards.components=[{OVERLONG}]"],
        lambda c: c.rewards.components[0].kwargs["max_tokens"] == 100,
        f"rewards.components=[{OVERLONG_AT_50}]",
    ),
]


@pytest.mark.parametrize(("stated", "follows", "other"), DERIVED)
def test_a_fact_two_parts_need_is_stated_once(stated: list[str], follows: Any, other: str) -> None:
    assert follows(load_run_config(None, stated))
    # The derived key set to the same value is accepted; to another, refused naming both keys.
    derived = load_run_config(None, stated)
    assert load_run_config(None, [*stated, *stated]) == derived
    with pytest.raises(ConfigError, match=r"=.+ but .+=.+: leave \S+ unset"):
        load_run_config(None, [*stated, other])


def test_the_derived_keys_agree_on_a_config_read_back_from_its_dump(tmp_path: Path) -> None:
    cfg = load_run_config(None, ["prompt.think=false", "video.max_pixels_per_frame=4096"])
    again = load_run_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg and again.rewards.think is False and again.rollout.max_pixels_per_frame == 4096


def test_two_thinking_keys_that_disagree_name_both() -> None:
    with pytest.raises(ConfigError, match=r"rewards\.think=True but prompt\.think=False"):
        load_run_config(None, ["prompt.think=false", "rewards.think=true"])
