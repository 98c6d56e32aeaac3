"""The one registry of reward functions, and how a config's reward spec becomes a RewardFn.

A spec is one of:
- a registered name: "tvg_iou" (the builtins, plus anything passed to `register_reward`);
- "package.module:function" (imported with importlib);
- "path/to/file.py:function" (loaded from that file; relative paths are taken from the
  working directory).

Contract of everything resolved here: `fn(batch: list[RewardInput]) -> list[RewardScore |
None]`. A per-sample function `(response, sample, **kwargs) -> float | None` (every
builtin, or a user function registered or configured with `per_sample=True`) is adapted.
Keyword arguments from the config are bound once, at resolve time, after checking that the
function accepts them (and that values of `Literal`-typed parameters are allowed ones), so
a typo fails when the config is built rather than in the middle of a run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from vidrl.rewards import builtin
from vidrl.rewards.compose import per_sample as adapt_per_sample
from vidrl.rewards.types import RewardFn


class RewardSpecError(ValueError):
    """A reward spec that names nothing usable; the message names the spec."""


@dataclass(frozen=True, slots=True)
class RegisteredReward:
    """A registry entry: the function and which contract it follows."""

    fn: Callable[..., Any]
    per_sample: bool
    """True: `(response, sample, **kwargs) -> float | None`; False: the batch contract."""


REWARDS: dict[str, RegisteredReward] = {
    fn.__name__: RegisteredReward(fn, per_sample=True)
    for fn in (
        builtin.format_reward,
        builtin.tvg_iou,
        builtin.mcq_accuracy,
        builtin.gqa_accuracy,
        builtin.gqa_iou,
        builtin.track_iou,
    )
} | {builtin.overlong_penalty.__name__: RegisteredReward(builtin.overlong_penalty, per_sample=False)}
"""Every reward a config can name without an import path: builtins and registered ones."""

BUILTIN_REWARDS: frozenset[str] = frozenset(REWARDS)


def register_reward(
    name: str, fn: Callable[..., Any], *, per_sample: bool = False, replace: bool = False
) -> None:
    """Make `fn` nameable in configs as `name` (the Python API for user rewards).

    per_sample: `fn` is `(response, sample, **kwargs) -> float | None` rather than the
    batch contract. replace: allow overwriting a user registration (never a builtin).
    """
    if not name or ":" in name:
        raise ValueError(f"reward name {name!r} must be non-empty and contain no ':'")
    if not callable(fn):
        raise TypeError(f"reward {name!r}: {fn!r} is not callable")
    if name in BUILTIN_REWARDS:
        raise ValueError(f"reward name {name!r} is a builtin; register under another name")
    if name in REWARDS and not replace:
        raise ValueError(f"reward name {name!r} is already registered (pass replace=True)")
    REWARDS[name] = RegisteredReward(fn, per_sample=per_sample)


def resolve_reward(
    spec: str, kwargs: Mapping[str, Any] | None = None, *, per_sample: bool = False
) -> RewardFn:
    """The batch reward function a spec names, with `kwargs` bound.

    per_sample applies to import specs only (a registered name carries its own contract).
    Raises RewardSpecError naming the spec if it cannot be resolved.
    """
    entry = lookup_reward(spec, per_sample=per_sample)
    bound = dict(kwargs or {})
    check_kwargs(spec, entry, bound)
    if inspect.isclass(entry.fn):
        # A stateful reward (say, one holding a judge model): kwargs go to its constructor,
        # and the instance, built once where the reward runs, is called on each batch.
        return adapt_per_sample(entry.fn(**bound)) if entry.per_sample else entry.fn(**bound)
    if entry.per_sample:
        return adapt_per_sample(entry.fn, **bound)
    return functools.partial(entry.fn, **bound) if bound else entry.fn


def lookup_reward(spec: str, *, per_sample: bool = False) -> RegisteredReward:
    """The registry entry for a name, or a fresh entry for an import spec."""
    if ":" not in spec:
        if spec in REWARDS:
            return REWARDS[spec]
        raise RewardSpecError(
            f"unknown reward {spec!r}; allowed: a registered name ({', '.join(sorted(REWARDS))}), "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    return RegisteredReward(load_callable(spec), per_sample=per_sample)


def load_callable(spec: str) -> Callable[..., Any]:
    """Import the callable an import spec ("module:attr" or "file.py:attr") names."""
    location, _, attribute = spec.rpartition(":")  # rpartition: "C:/x.py:fn" still splits
    if not location or not attribute:
        raise RewardSpecError(f"reward spec {spec!r}: expected 'module:function' or 'file.py:fn'")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    module = _load_file(spec, location) if is_file else _import_module(spec, location)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardSpecError(f"reward spec {spec!r}: {location!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RewardSpecError(f"reward spec {spec!r}: {attribute!r} is not callable")
    return typing.cast(Callable[..., Any], target)


def check_kwargs(spec: str, entry: RegisteredReward, kwargs: Mapping[str, Any]) -> None:
    """Fail now if the function cannot take these keyword arguments or values."""
    try:
        signature = inspect.signature(entry.fn)
    except (TypeError, ValueError):  # some C callables have no signature: trust them
        return
    leading: tuple[Any, ...] = (None, None) if entry.per_sample else (None,)
    if inspect.isclass(entry.fn):
        leading = ()  # kwargs go to the constructor; batches come later, to the instance
    try:
        signature.bind(*leading, **kwargs)
    except TypeError as error:
        allowed = list(signature.parameters)[len(leading) :]
        raise RewardSpecError(
            f"reward {spec!r}: bad kwargs {dict(kwargs)!r} ({error}); it takes {allowed}"
        ) from None
    for name, value in kwargs.items():
        choices = _literal_choices(entry.fn, name)
        if choices is not None and value not in choices:
            raise RewardSpecError(
                f"reward {spec!r}: kwargs[{name!r}] = {value!r} is not one of {list(choices)}"
            )


def _literal_choices(fn: Callable[..., Any], parameter: str) -> tuple[Any, ...] | None:
    try:
        hint = typing.get_type_hints(fn).get(parameter)
    except Exception:  # unresolvable annotations in user code: nothing to check
        return None
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _import_module(spec: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise RewardSpecError(f"reward spec {spec!r}: cannot import {name!r}: {error}") from error


def _load_file(spec: str, location: str) -> ModuleType:
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise RewardSpecError(f"reward spec {spec!r}: file {str(path)!r} does not exist")
    # One module per file path, registered in sys.modules so that dataclasses and pickling
    # inside the user's file work and a second spec naming the same file reuses it.
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"vidrl_user_reward_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardSpecError(f"reward spec {spec!r}: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        problem = f"importing {str(path)!r} failed: {error}"
        raise RewardSpecError(f"reward spec {spec!r}: {problem}") from error
    return module
