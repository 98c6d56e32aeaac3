"""LearnerWorker: one torch.distributed rank (a Ray actor) holding an FSDP2 shard of the policy.

One `train_step` is one optimizer update: for each micro-batch of the plan the group made,
a forward pass over whole groups (shared-prefix layout by default), the GRPO (or SFT) loss
normalised by step-wide counts, and a backward pass; then gradient clipping, AdamW and the
schedule. Ranks with fewer micro-batches run the step's fallback group with weight 0 so the
FSDP2 collectives stay in lockstep.

Old log-probs: with `old_logprobs: recompute` the learner would run the current policy
before the update; since a step makes exactly one optimizer update, that is the same policy
as the update's own forward, so its values are those log-probs, detached (ratio = 1, and the
clipped surrogate reduces to the policy gradient). That costs no extra forward pass.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from vidrl.learner.batch import StepTotals, TrainGroup
from vidrl.learner.checkpoint import materialise_optimizer_state
from vidrl.learner.config import LearnerConfig
from vidrl.learner.forward import (
    ResponseLogprobs,
    VisionInputs,
    config_prompt_position_ids,
    response_logprobs_plain,
    response_logprobs_shared,
)
from vidrl.learner.grpo import grpo_loss
from vidrl.learner.model import choose_attention, dummy_vision_pass, load_model, shard_model
from vidrl.learner.prefix import PackedGroup, pack_group
from vidrl.learner.schedule import lr_lambda

log = logging.getLogger(__name__)


class LearnerWorker:
    """One rank. Methods are called by LearnerGroup on every rank at once."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        cfg: LearnerConfig,
        seed: int,
        temperature: float = 1.0,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.model_path, self.cfg, self.seed, self.temperature = model_path, cfg, seed, temperature
        self.step = 0
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ setup

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a free port for the process group (called on rank 0)."""
        import ray

        address = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            return address, int(sock.getsockname()[1])

    def init_process_group(self, address: str, port: int) -> None:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
        self.device = torch.device(
            "cuda" if self.cfg.gpus_per_rank > 0 and torch.cuda.is_available() else "cpu"
        )
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)

    def build(self) -> None:
        """Load, shard and set up optimisation. The reference model only when KL is used."""
        attention = choose_attention(self.cfg.attention, self.device)
        if self.cfg.shared_prefix and attention == "flash_attention_2":
            log.warning("shared_prefix needs a 4D mask: using sdpa instead of flash_attention_2")
            attention = "sdpa"
        torch.manual_seed(self.seed)
        model = load_model(self.model_path, attention, self.cfg.gradient_checkpointing).to(self.device)
        self.config = model.config
        self.model = shard_model(model, self.cfg)
        self.reference = None
        if self.cfg.loss.kl_coef > 0:
            reference = load_model(self.model_path, attention, False).to(self.device)
            self.reference = shard_model(reference, self.cfg, trainable=False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.cfg.lr,
            betas=self.cfg.adam_betas,
            eps=self.cfg.adam_eps,
            weight_decay=self.cfg.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg))
        # AdamW creates its state lazily; torch's state-dict helpers would otherwise create it
        # with a zero-gradient step (advancing Adam's step count) the first time a checkpoint
        # is saved, so that saving would change the training that follows.
        materialise_optimizer_state(self.optimizer)

    # ------------------------------------------------------------------ training

    def train_step(
        self,
        plan: Sequence[Sequence[TrainGroup]],
        num_microbatches: int,
        totals: StepTotals,
        mode: str,
        fallback: Sequence[TrainGroup],
    ) -> dict[str, float]:
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for index in range(num_microbatches):
            active = index < len(plan)
            groups = plan[index] if active else fallback
            loss, parts = self._microbatch_loss(groups, totals, mode)
            # FSDP2 averages gradients over ranks; the loss is a share of a step-wide sum.
            (loss * (self.world_size if active else 0.0)).backward()
            if active:
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        tokens = sum(g.cost(self.cfg.shared_prefix) for mb in plan for g in mb)
        elapsed = time.perf_counter() - started
        return {
            **sums,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens": float(tokens),
            "microbatches": float(len(plan)),
            "step_seconds": elapsed,
        }

    def _microbatch_loss(
        self, groups: Sequence[TrainGroup], totals: StepTotals, mode: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
        packed = [self._pack(g) for g in groups]
        vision = [self._vision(g) for g in groups]
        forward = response_logprobs_shared if self.cfg.shared_prefix else response_logprobs_plain
        outputs = forward(self.model, packed, vision, temperature=self.temperature, with_entropy=True)
        extra = dummy_vision_pass(self.model) if all(v is None for v in vision) else None
        if mode == "sft":
            loss, parts = self._sft_loss(outputs, totals)
        else:
            loss, parts = self._grpo_loss(groups, packed, vision, outputs, totals)
        return (loss if extra is None else loss + extra.to(loss.device)), parts

    def _grpo_loss(
        self,
        groups: Sequence[TrainGroup],
        packed: list[PackedGroup],
        vision: list[VisionInputs | None],
        outputs: list[ResponseLogprobs],
        totals: StepTotals,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        references = self._reference_logprobs(packed, vision)
        denominator = totals.response_tokens if self.cfg.loss.loss_agg == "token-mean" else totals.sequences
        loss = torch.zeros((), device=self.device)
        parts: dict[str, float] = {}
        for index, (group, out) in enumerate(zip(groups, outputs, strict=True)):
            advantages = torch.as_tensor(group.advantages, dtype=torch.float32, device=out.logprobs.device)
            old = self._old_logprobs(group, out)
            terms = grpo_loss(
                out.logprobs,
                old,
                advantages,
                out.mask,
                self.cfg.loss,
                ref_logprobs=None if references is None else references[index].logprobs,
                entropy=out.entropies,
                global_denominator=denominator,
            )
            loss = loss + terms.loss
            for name in ("policy_loss", "kl", "entropy", "clip_fraction"):
                parts[f"{name}_sum"] = parts.get(f"{name}_sum", 0.0) + float(getattr(terms, name))
            parts["loss_sum"] = parts.get("loss_sum", 0.0) + float(terms.loss.detach())
        return loss, parts

    def _sft_loss(
        self, outputs: list[ResponseLogprobs], totals: StepTotals
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the reference responses, averaged over all their tokens in the step."""
        nll = sum(-(out.logprobs * out.mask).sum() for out in outputs) / max(totals.response_tokens, 1)
        entropy = sum((out.entropies * out.mask).sum() for out in outputs if out.entropies is not None)
        entropy = float(entropy) / max(totals.response_tokens, 1)
        return nll, {"loss_sum": float(nll.detach()), "entropy_sum": entropy}

    def _old_logprobs(self, group: TrainGroup, out: ResponseLogprobs) -> torch.Tensor:
        if self.cfg.old_logprobs == "recompute" or group.old_logprobs is None:
            return out.logprobs.detach()
        old = torch.zeros_like(out.logprobs)
        for row, values in enumerate(group.old_logprobs):
            old[row, : len(values)] = torch.as_tensor(values, dtype=old.dtype)
        return old

    @torch.no_grad()
    def _reference_logprobs(
        self, packed: list[PackedGroup], vision: list[VisionInputs | None]
    ) -> list[ResponseLogprobs] | None:
        if self.reference is None:
            return None
        forward = response_logprobs_shared if self.cfg.shared_prefix else response_logprobs_plain
        return forward(self.reference, packed, vision, temperature=self.temperature)

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    # ------------------------------------------------------------------ inputs

    def _vision(self, group: TrainGroup) -> VisionInputs | None:
        if group.vision is None:
            return None
        return VisionInputs(
            pixel_values_videos=torch.from_numpy(group.vision.pixel_values_videos).to(self.device),
            video_grid_thw=torch.from_numpy(group.vision.video_grid_thw).long(),
        )

    def _pack(self, group: TrainGroup) -> PackedGroup:
        prompt = torch.from_numpy(group.prompt_ids).long()
        positions = config_prompt_position_ids(
            self.config,
            prompt,
            None if group.vision is None else torch.from_numpy(group.vision.video_grid_thw),
            None if group.vision is None else group.vision.second_per_grid_ts.tolist(),
        )
        return pack_group(prompt, positions, [r.tolist() for r in group.responses])

    # ------------------------------------------------------------------ weights out

    def export_weights(self, version: int) -> list[Any]:
        """Gather each parameter in turn and publish buckets of bounded size from rank 0.

        Every rank takes part in each gather (a collective); only rank 0 keeps the full
        tensors, and only until its bucket is full: then it is packed, put in the object
        store and dropped, so beyond the model at most one bucket is held.
        """
        import ray

        from vidrl.weights import pack_bucket, split_into_buckets

        refs: list[Any] = []
        for group in split_into_buckets(self._full_parameters(), self.cfg.weight_bucket_bytes):
            if self.rank == 0:
                refs.append(ray.put(pack_bucket(version, group)))
        return refs

    def _full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        nothing = torch.empty(0)
        for name, param in self.model.named_parameters():
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            yield name, full.detach().to("cpu") if self.rank == 0 else nothing

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str, extra_state: dict[str, Any]) -> None:
        from vidrl.learner.checkpoint import save_checkpoint

        save_checkpoint(self, path, extra_state)

    def load(self, path: str) -> dict[str, Any]:
        from vidrl.learner.checkpoint import load_checkpoint

        return load_checkpoint(self, path)
