"""Shared test setup: offline Hugging Face, Ray kept on loopback, tiny vLLM KV cache; the shared
fixtures; and the tiers.

Tiers (strict markers, pyproject.toml): `ray`, `vllm`, `dist` (a torch.distributed process group)
and `slow` mark what a test starts; `make test-fast` runs the rest, pure logic on hand-worked
numbers and tiny models, with VIDRL_FAST_TESTS=1, under which starting Ray or a process group
fails the test and says which marker it lacks. A test that takes the `process_group` fixture
is marked `dist` here, so no module has to remember it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAST = os.environ.get("VIDRL_FAST_TESTS") == "1"


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A gloo group of one on loopback, so FSDP2 shards everything as one rank would."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "process_group" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.dist)


def _refuse(what: str, marker: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a fast-tier test started {what}: mark it `{marker}` (tests/conftest.py)")

    return refuse


def pytest_configure(config: pytest.Config) -> None:
    """Under VIDRL_FAST_TESTS=1, starting Ray or a process group is an error, not a slow pass."""
    if not FAST:
        return
    import torch.distributed as dist

    dist.init_process_group = _refuse("a torch.distributed process group", "dist")  # type: ignore[assignment]
    try:
        import ray
    except ImportError:
        return
    ray.init = _refuse("Ray", "ray")  # type: ignore[assignment]
