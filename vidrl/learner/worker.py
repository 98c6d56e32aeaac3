"""LearnerWorker: one torch.distributed rank (a Ray actor) holding an FSDP2 shard of the policy.

One `train_step` is one optimizer update: for each micro-batch of the plan the group made,
a forward pass over whole groups (shared-prefix layout by default), the GRPO (or SFT) loss
normalised by step-wide counts, and a backward pass; then gradient clipping, AdamW and the
schedule. Ranks with fewer micro-batches run the step's fallback group with weight 0 so the
FSDP2 collectives stay in lockstep.

Memory: every rank reports its peak host memory (and peak GPU memory on GPUs) for building
and for each step (`peak_host_bytes`, `peak_device_bytes`; vidrl.learner.memory).

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
from vidrl.learner.memory import PeakMemory
from vidrl.learner.model import build_sharded, choose_attention, compute_dtype, dummy_vision_pass
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
        export_dtype: str | None = None,
    ) -> None:
        """export_dtype: the rollout engine's dtype name ("bfloat16", ...): weights are cast to it
        before they are packed, so a push moves the engine's bytes (None: the master dtype)."""
        self.rank, self.world_size = rank, world_size
        self.model_path, self.cfg, self.seed, self.temperature = model_path, cfg, seed, temperature
        self.export_dtype = None if export_dtype is None else getattr(torch, export_dtype)
        self.step = 0
        self.memory = PeakMemory()
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

    def build(self) -> dict[str, float]:
        """Build, shard and load the policy (and the reference model when KL is used), then set
        up optimisation. Returns this rank's host memory in bytes: resident at the start, and
        the peak after each of policy, reference and optimizer state (vidrl.learner.memory)."""
        self.memory.reset()
        phases = {"start": self.memory.host()}
        self.attention = choose_attention(self.cfg, self.device)
        torch.manual_seed(self.seed)
        self.model = build_sharded(self.model_path, self.attention, self.cfg, self.device, torch.float32)
        self.config = self.model.config
        phases["policy"] = self.memory.host()
        self.reference = None
        if self.cfg.loss.kl_coef > 0:
            # Never trained: its weights are kept in the compute dtype, not as float32 masters.
            dtype = compute_dtype(self.cfg)
            self.reference = build_sharded(
                self.model_path, self.attention, self.cfg, self.device, dtype, trainable=False
            )
        phases["reference"] = self.memory.host()
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
        phases["optimizer"] = self.memory.host()
        return {f"{phase}_host_bytes": float(value) for phase, value in phases.items()}

    def peak_memory(self) -> dict[str, float]:
        """Peak memory since the last step, build or export began (what the last one needed)."""
        return self.memory.read()

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
        self.memory.reset()
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
            **self.memory.read(),
        }

    def _microbatch_loss(
        self, groups: Sequence[TrainGroup], totals: StepTotals, mode: str
    ) -> tuple[torch.Tensor, dict[str, float]]:
        packed = [self._pack(g) for g in groups]
        vision = [self._vision(g) for g in groups]
        outputs = self._logprobs(self.model, packed, vision, with_entropy=True)
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
        return self._logprobs(self.reference, packed, vision, with_entropy=False)

    def _logprobs(
        self, model: Any, packed: list[PackedGroup], vision: list[VisionInputs | None], with_entropy: bool
    ) -> list[ResponseLogprobs]:
        """Per-token log-probs in the configured layout, through the chunked head."""
        common = {
            "temperature": self.temperature,
            "with_entropy": with_entropy,
            "chunk_tokens": self.cfg.logprob_chunk_tokens,
        }
        if not self.cfg.shared_prefix:
            return response_logprobs_plain(model, packed, vision, **common)
        return response_logprobs_shared(
            model,
            packed,
            vision,
            attention=self.cfg.prefix_attention,
            kernel=self.attention.prefix_kernel,
            **common,
        )

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
        store and dropped, so beyond the model at most one bucket is held. Shards are cast to
        the engine's dtype before the gather: half the bytes of float32 masters for a bf16 engine.
        """
        import ray

        from vidrl.weights import pack_bucket, split_into_buckets

        self.memory.reset()
        refs: list[Any] = []
        for group in split_into_buckets(self._full_parameters(), self.cfg.weight_bucket_bytes):
            if self.rank == 0:
                refs.append(ray.put(pack_bucket(version, group)))
        return refs

    def _full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        nothing = torch.empty(0)
        for name, param in self.model.named_parameters():
            cast = param.detach() if self.export_dtype is None else param.detach().to(self.export_dtype)
            full = cast.full_tensor() if hasattr(cast, "full_tensor") else cast
            yield name, full.to("cpu") if self.rank == 0 else nothing

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str, extra_state: dict[str, Any]) -> None:
        from vidrl.learner.checkpoint import save_checkpoint

        save_checkpoint(self, path, extra_state)

    def load(self, path: str) -> dict[str, Any]:
        from vidrl.learner.checkpoint import load_checkpoint

        return load_checkpoint(self, path)
