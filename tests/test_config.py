"""RunConfig: YAML + dotted overrides; every error names the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidrl.config import ConfigError, RunConfig, dump_config, load_run_config


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
    cfg = load_run_config(
        path, ["video.fps=4", "data.max_skipped_fraction=1e-1", "prompt.think=false", "rewards.think=false"]
    )
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


def test_prompt_and_reward_must_agree_on_thinking() -> None:
    with pytest.raises(ConfigError, match=r"prompt\.think=False but rewards\.think=True"):
        load_run_config(None, ["prompt.think=false"])
