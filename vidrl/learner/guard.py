"""Non-finite values never reach the weights, the engines or a checkpoint.

One NaN or Inf loss or gradient (a bf16 overflow, a degenerate group) would otherwise be
written into the weights by AdamW, pushed to every engine and saved in the next checkpoint,
which a resume would then load. So:

    nonfinite_update(...)   after an update's backward passes: every rank learns whether any
                            rank's loss, or the global gradient norm, is not finite (one
                            all-reduce), so all ranks skip that update together
    nonfinite_weights(...)  before a push or a save: whether any rank holds a non-finite weight

Both are collectives: every rank calls them at the same point, and all get the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


class NonFiniteWeights(RuntimeError):
    """The policy holds a NaN or Inf: it is neither pushed nor saved."""


def nonfinite_update(bad_loss_samples: Sequence[str], grad_norm: float, device: torch.device) -> bool:
    """Whether this update must not be applied: a micro-batch loss on any rank (this rank's:
    `bad_loss_samples`, its groups' sample ids) or the global gradient norm (the same on every
    rank) is not finite."""
    flags = torch.tensor([float(bool(bad_loss_samples)), float(not math.isfinite(grad_norm))], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags.any())


def nonfinite_weights(model: nn.Module, device: torch.device) -> list[str]:
    """Names of this rank's parameters with a non-finite value, after all ranks have looked
    (every rank gets the list of its own, and an empty list only when no rank has any)."""
    bad = []
    for name, param in model.named_parameters():
        local = param.detach().to_local() if hasattr(param, "to_local") else param.detach()
        if local.numel() and not bool(torch.isfinite(local).all()):
            bad.append(name)
    flag = torch.tensor([float(bool(bad))], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not bad:
        return ["(on another rank)"]
    return bad
