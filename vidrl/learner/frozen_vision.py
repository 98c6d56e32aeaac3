"""`learner.freeze_vision`: full fine-tuning with the vision tower frozen, its work done once per step.

A frozen tower gives the same embeddings for a video in every pass of a step (the policy's
forward of each micro-batch, the old-log-prob pass, the reference pass, every epoch and
update), so each rank encodes the videos of its share of the step ONCE, without an autograd
graph, before the first pass (`encode_step_videos`), and every forward reads the embeddings
(`VisionInputs.encoded`, handed to the model as `mm_encoder_outputs`) instead of running the
tower again. Without freezing, a step with old log-probs recomputed, KL and E epochs runs the
tower 2 + E times per video (more in the plain layout, once per response).

Lockstep: the tower is an FSDP2 unit, so every rank calls it exactly once per step, with its
videos concatenated, or on the family's dummy input when its share has none; no forward pass of
the step calls it. Under sequence parallelism the ranks of a group split the frames
(vidrl.learner.sequence_parallel.split_vision_tower).

The tower's parameters keep requires_grad False, so the optimizer holds no state for them and
FSDP2 reduces no gradient for them; the weight pushes after a run's first leave them out (the
engines keep the tower they have: vidrl.rollout.engine).

The reference model's tower would compute the same embeddings (same frozen weights), so its
passes read the policy's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from vidrl.learner.sequence_parallel import SequenceGroup, split_vision_tower
from vidrl.learner.types import EncodedVideo, UpdatePlan, VisionInputs
from vidrl.models import family_of


def freeze_tower(model: nn.Module) -> int:
    """requires_grad False on every parameter of the vision tower; returns how many elements
    (of this rank's shards) were frozen."""
    tower = family_of(model.config).vision_tower(model)
    if tower is None:
        raise ValueError("learner.freeze_vision: this model has no vision tower")
    tower.requires_grad_(False)
    return sum(p.numel() for p in tower.parameters())


def tower_parameter_names(model: nn.Module) -> set[str]:
    """The model's parameter names (as named_parameters gives them) that belong to the tower."""
    tower = family_of(model.config).vision_tower(model)
    inside = {id(p) for p in tower.parameters()} if tower is not None else set()
    return {name for name, p in model.named_parameters() if id(p) in inside}


def step_videos(updates: Sequence[UpdatePlan]) -> list[VisionInputs]:
    """The distinct videos (by identity) of every micro-batch this rank runs in a step, in order."""
    seen: dict[int, VisionInputs] = {}
    for update in updates:
        for microbatch in update.microbatches:
            for group in microbatch:
                if group.vision is not None:
                    seen.setdefault(id(group.vision), group.vision)
    return list(seen.values())


@torch.no_grad()
def encode_step_videos(
    model: nn.Module, videos: Sequence[VisionInputs], group: SequenceGroup | None
) -> dict[int, EncodedVideo]:
    """One tower call over all of `videos` (the dummy input when there are none), split per
    video; by the identity of each VisionInputs."""
    family = family_of(model.config)
    tower = family.vision_tower(model)
    if not videos:
        family.dummy_vision_pass(model)  # the other ranks' tower call, joined
        return {}
    device = next(model.parameters()).device
    pixels = torch.cat([torch.as_tensor(v.pixel_values_videos) for v in videos])
    grids = torch.cat([torch.as_tensor(v.video_grid_thw).long() for v in videos])
    split = split_vision_tower(tower, group) if group is not None else contextlib.nullcontext()
    with split:
        out = tower(pixels.to(device=device, dtype=tower.dtype), grid_thw=grids.to(device))
    merge = model.config.vision_config.spatial_merge_size
    sizes = [int(torch.as_tensor(v.video_grid_thw).long().prod(-1).sum()) // merge**2 for v in videos]
    embeds = torch.split(out.pooler_output.detach(), sizes)
    layers = [torch.split(f.detach(), sizes) for f in (getattr(out, "deepstack_features", None) or [])]
    return {
        id(video): EncodedVideo(embeds[i], tuple(layer[i] for layer in layers))
        for i, video in enumerate(videos)
    }


def with_encoded(
    vision: Sequence[VisionInputs | None], encoded: dict[int, EncodedVideo]
) -> list[VisionInputs | None]:
    """The batch's videos with the step's encodings attached (unchanged where there are none)."""
    if not encoded:
        return list(vision)
    return [None if v is None else dataclasses.replace(v, encoded=encoded[id(v)]) for v in vision]
