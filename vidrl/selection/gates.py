"""Online group gates: which of a step's GRPO groups are worth training on.

DAPO's dynamic sampling: a group whose G rewards are all (nearly) equal has advantages
of (nearly) zero, so it only dilutes the batch; the driver drops it and may draw more
prompts to refill the batch (`prompts_to_draw`, up to `GateConfig.max_refill_rounds`).

A gate is a small object. `admit` decides without side effects (so it can be asked
twice); `observe` records the decision the driver acted on; `metrics` reports the running
counts; `state_dict` / `load_state_dict` (plain JSON-able dicts) let a resumed run go on
with the same counts. `filter_groups` does admit + observe over one step's groups.

Departure from DAPO: DAPO keeps a group when its accuracy is strictly between 0 and 1;
we test the spread of the total reward (population std > eps), which is the same rule
for 0/1 rewards and also covers continuous ones (IoU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from vidrl.selection.config import GateConfig


class Gate(Protocol):
    """What the driver needs from a gate."""

    def admit(self, rewards: Sequence[float]) -> bool:
        """Whether a group with these reward totals ([G]) is worth training on (no side effects)."""
        ...

    def observe(self, admitted: bool) -> None:
        """Record that one group was admitted (or dropped)."""
        ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoGate:
    """Admits every group and keeps no state (the gate when `GateConfig.enabled` is false)."""

    def admit(self, rewards: Sequence[float]) -> bool:
        return True

    def observe(self, admitted: bool) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class VarianceGate:
    """Admits a group when the population std of its rewards is above `eps`."""

    def __init__(self, eps: float) -> None:
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps
        self.groups_seen = 0
        self.groups_kept = 0

    def admit(self, rewards: Sequence[float]) -> bool:
        # A group of one response, or with a non-finite reward, has no usable spread.
        if len(rewards) < 2 or not all(math.isfinite(r) for r in rewards):
            return False
        if min(rewards) == max(rewards):
            return False  # exactly no spread, even at eps 0 (the mean may round off the value)
        mean = math.fsum(rewards) / len(rewards)
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / len(rewards))
        return std > self.eps

    def observe(self, admitted: bool) -> None:
        self.groups_seen += 1
        self.groups_kept += int(admitted)

    def metrics(self) -> dict[str, float]:
        """Counts since the run began, a resumed run included (kept_fraction 0 before any group)."""
        fraction = self.groups_kept / self.groups_seen if self.groups_seen else 0.0
        return {
            "gate/groups_seen": float(self.groups_seen),
            "gate/groups_kept": float(self.groups_kept),
            "gate/kept_fraction": fraction,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"groups_seen": self.groups_seen, "groups_kept": self.groups_kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        seen, kept = int(state["groups_seen"]), int(state["groups_kept"])
        if not 0 <= kept <= seen:
            raise ValueError(f"gate state is inconsistent: {kept} groups kept of {seen} seen")
        self.groups_seen, self.groups_kept = seen, kept


def build_gate(cfg: GateConfig) -> Gate:
    """The gate a config asks for."""
    return VarianceGate(cfg.eps) if cfg.enabled else NoGate()


def filter_groups(gate: Gate, rewards: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the admitted groups among `rewards` ([P][G] totals); each one is observed."""
    kept: list[int] = []
    for index, group in enumerate(rewards):
        admitted = gate.admit(group)
        gate.observe(admitted)
        if admitted:
            kept.append(index)
    return kept


def prompts_to_draw(kept: int, wanted: int, rounds_done: int, cfg: GateConfig) -> int:
    """Prompts to draw next, when `rounds_done` refill rounds left `kept` of `wanted` groups.

    0 when the batch is full, the gate is off, or the refill rounds are spent; the driver
    then trains on the groups it has (possibly fewer than `wanted`, possibly none).
    """
    if not cfg.enabled or kept >= wanted or rounds_done >= cfg.max_refill_rounds:
        return 0
    return wanted - kept
