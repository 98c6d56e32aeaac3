"""YAML configs with dotted command-line overrides, and errors a person can act on.

    vidrl train cfg.yaml learner.lr=1e-6 data.max_skipped_fraction=0.1

An override's value is read as YAML (so `true`, `[1, 2]` and `null` work); numbers written
the way people write them (`1e-6`, which YAML 1.1 reads as a string) are left to pydantic,
which converts them. Every problem is reported at once, each line naming the dotted key, the
value given and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every problem, one per line."""


def load_config(model: type[ModelT], path: str | Path | None, overrides: Sequence[str] = ()) -> ModelT:
    """Read `path` (YAML; None = all defaults), apply `key.sub=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path))
    for item in overrides:
        key, value = parse_override(item)
        check_key_exists(model, key)
        set_dotted(raw, key, value)
    return validate_config(model, raw, source=str(path) if path else "defaults")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value read as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. learner.lr=1e-6")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def check_key_exists(model: type[BaseModel], dotted: str) -> None:
    """Fail early, naming the allowed keys, when an override's key is not a config field."""
    current: type[BaseModel] | None = model
    walked: list[str] = []
    for part in dotted.split("."):
        if current is None:
            return  # below a dict- or list-typed field: pydantic validates the value itself
        if part not in current.model_fields:
            where = ".".join(walked) or "the top level"
            allowed = ", ".join(sorted(current.model_fields))
            raise ConfigError(
                f"override key {dotted!r}: {part!r} is not a key of {where}; allowed: {allowed}"
            )
        walked.append(part)
        current = _submodel(current.model_fields[part].annotation)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set tree[a][b][c] = value for "a.b.c", creating mappings on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def validate_config(model: type[ModelT], raw: Mapping[str, Any], source: str) -> ModelT:
    """Validate, turning pydantic's errors into one line per problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = [describe_error(model, e) for e in err.errors(include_url=False)]
        raise ConfigError(f"invalid config ({source}):\n  " + "\n  ".join(lines)) from None


def describe_error(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One line: dotted key, value given, what is allowed."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        allowed = ", ".join(sorted(owner.model_fields)) if owner else "see the docs"
        return f"{key}: unknown key (value {given!r}); allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"{key}: required, but not given"
    shown = repr(given)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{key}: {error['msg']} (got {shown})"


def _model_at(model: type[BaseModel], loc: Sequence[str]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or part not in current.model_fields:
            return None
        current = _submodel(current.model_fields[part].annotation)
    return current


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, written into each run directory."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
