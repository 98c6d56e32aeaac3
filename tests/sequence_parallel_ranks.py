"""Two real gloo ranks that compare sequence-parallel log-probs with one rank's (run by
tests/test_sequence_parallel.py as a script: `python sequence_parallel_ranks.py MODEL OUT PORT`).

Each rank loads the same tiny model, packs the same real video prompts with random responses,
and computes log-probs, entropies, a GRPO-like loss and every parameter's gradient twice: alone
(the whole sequence on this rank) and with the tokens split across the two ranks (Ulysses). The
sequence-parallel gradients of the two ranks are summed (what FSDP2's reduction does), and rank 0
writes the largest differences per layout to OUT as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LAYOUTS = ("plain", "two_pass")


def groups_and_vision(model_dir: str, config: Any) -> tuple[list[Any], list[Any]]:
    """Two video prompts of different lengths (one padded in the batch) and a text-only one."""
    from transformers import AutoProcessor

    from vidrl.learner.forward import config_prompt_position_ids
    from vidrl.learner.prefix import pack_group
    from vidrl.learner.types import VisionInputs

    processor = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    groups, vision = [], []
    for index, (frames, height, lengths) in enumerate([(4, 56, (5, 2, 7)), (6, 84, (3, 6)), (0, 0, (4, 1))]):
        content: list[dict[str, str]] = [{"type": "text", "text": f"when does it happen? {index}"}]
        kwargs: dict[str, Any] = {}
        if frames:
            content.insert(0, {"type": "video"})
            clip = rng.integers(0, 256, (frames, height, 56, 3), dtype=np.uint8)
            kwargs = {"videos": [clip], "videos_kwargs": {"do_sample_frames": False, "fps": 2.0}}
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out = processor(text=[text], return_tensors="pt", **kwargs)
        ids = out["input_ids"][0]
        video = None
        if frames:
            seconds = out.get("second_per_grid_ts")
            video = VisionInputs(out["pixel_values_videos"], out["video_grid_thw"], seconds)
        positions = config_prompt_position_ids(
            config,
            ids,
            None if video is None else out["video_grid_thw"],
            None if video is None or seconds is None else list(seconds),
        )
        responses = [rng.integers(1, 300, (n,)).tolist() for n in lengths]
        groups.append(pack_group(ids, positions, responses))
        vision.append(video)
    return groups, vision


def loss_and_grads(
    model: Any, fn: Any, groups: list[Any], vision: list[Any], **kwargs: Any
) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(1)
    advantages = [torch.randn(g.num_responses, 1, generator=generator) for g in groups]
    model.zero_grad(set_to_none=True)
    records = fn(model, groups, vision, with_entropy=True, **kwargs)
    loss = sum(
        ((adv * r.logprobs + 0.01 * r.entropies) * r.mask).sum()
        for adv, r in zip(advantages, records, strict=True)
    )
    return records, loss


@torch.no_grad()
def vision_split_errors(model: Any, vision: list[Any], group: Any) -> dict[str, Any]:
    """The tower on both videos at once, whole and split between the ranks by frames: the
    largest differences of the embeddings and DeepStack features, and this rank's share."""
    from vidrl.learner.sequence_parallel import split_vision_tower

    videos = [v for v in vision if v is not None]
    pixels = torch.cat([torch.as_tensor(v.pixel_values_videos) for v in videos])
    grids = torch.cat([torch.as_tensor(v.video_grid_thw) for v in videos])
    tower = model.model.visual
    whole = tower(pixels, grid_thw=grids)
    with split_vision_tower(tower, group):
        split = tower(pixels, grid_thw=grids)
    deepstack = zip(
        getattr(whole, "deepstack_features", None) or [],
        getattr(split, "deepstack_features", None) or [],
        strict=True,
    )
    return {
        "embeddings": float((whole.pooler_output - split.pooler_output).abs().max()),
        "deepstack": max((float((a - b).abs().max()) for a, b in deepstack), default=0.0),
        "rows": int(whole.pooler_output.shape[0]),
    }


def run(rank: int, model_dir: str, out: str, port: int) -> None:
    from transformers import AutoModelForImageTextToText

    from vidrl.learner.attention import SHARED_PREFIX_ATTENTION, register_shared_prefix_attention
    from vidrl.learner.layouts import LAYOUTS as FUNCTIONS
    from vidrl.learner.sequence_parallel import new_sequence_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    group = new_sequence_groups(2, 2, rank)
    register_shared_prefix_attention()
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.set_attn_implementation({"text_config": SHARED_PREFIX_ATTENTION})
    groups, vision = groups_and_vision(model_dir, model.config)
    report: dict[str, dict[str, Any]] = {}
    seen: list[int] = []  # pixel rows the vision tower encoded on this rank
    model.model.visual.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    for layout in LAYOUTS:
        fn = FUNCTIONS[layout]("sdpa")
        seen.clear()
        alone, loss = loss_and_grads(model, fn, groups, vision)
        alone_rows = sum(seen)
        seen.clear()
        loss.backward()
        reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        split, split_loss = loss_and_grads(model, fn, groups, vision, sequence_group=group)
        (split_loss / group.size).backward()
        errors = {
            "loss": abs(float(loss.detach()) - float(split_loss.detach())),
            "logprobs": 0.0,
            "entropies": 0.0,
            "grads": 0.0,
        }
        for a, s in zip(alone, split, strict=True):
            assert torch.equal(a.mask, s.mask)
            errors["logprobs"] = max(
                errors["logprobs"], float((a.logprobs - s.logprobs).detach().abs().max())
            )
            errors["entropies"] = max(
                errors["entropies"], float((a.entropies - s.entropies).detach().abs().max())
            )
        missing = []
        for name, param in model.named_parameters():
            if param.grad is None:
                missing.append(name)
                continue
            dist.all_reduce(param.grad)  # what FSDP2's gradient reduction does across the ranks
            scale = float(reference[name].abs().max()) or 1.0
            errors["grads"] = max(errors["grads"], float((param.grad - reference[name]).abs().max()) / scale)
        errors["missing_grads"] = float(
            len(missing) + len(set(reference) - {n for n, _ in model.named_parameters()})
        )
        errors["grad_scale"] = max(float(g.abs().max()) for g in reference.values())
        shares: list[Any] = [None, None]
        dist.all_gather_object(shares, seen)
        errors["tower_rows"] = alone_rows
        errors["tower_rows_per_rank"] = [sum(share) for share in shares]
        report[layout] = errors
    report["vision_split"] = vision_split_errors(model, vision, group)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(report, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(run, args=(sys.argv[1], sys.argv[2], int(sys.argv[3])), nprocs=2)
