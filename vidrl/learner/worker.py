"""LearnerWorker: one torch.distributed rank (a Ray actor) holding an FSDP2 shard of the policy.

One `train_step` makes `epochs` x len(updates) optimizer updates over the step's rollout (one
by default): for each micro-batch of an update's plan, a forward pass over whole groups
(shared-prefix layout by default), the GRPO (or SFT) loss normalised by the update's counts
(vidrl.learner.losses), and a backward pass; then gradient clipping, AdamW and the schedule.
Ranks with fewer micro-batches run an idle group (one prompt token, one response token, no
video: `idle_group`) with weight 0 so the FSDP2 collectives stay in lockstep at almost no cost.

Memory: every rank reports its peak host memory (and peak GPU memory on GPUs) for building
and for each step (`peak_host_bytes`, `peak_device_bytes`), and hands freed host memory back
to the system as `learner.host_malloc` says (vidrl.learner.memory).

The layout of every forward pass (plain, shared-prefix, prompt state) is chosen once, when the
rank builds (vidrl.learner.layouts). A step's metrics leave the rank as one typed record
(`RankMetrics`), which the group merges with the other ranks'.

Old log-probs: with `old_logprobs: recompute` a forward pass over the same micro-batches,
before the first update, gives the learner's own pi_old (and the rollout/learner mismatch,
which the rollout corrections need); with `rollout` the engine's log-probs are pi_old and the
mismatch is measured on the first update's forward, before the policy moves.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from vidrl.learner.batch import idle_group
from vidrl.learner.checkpoint import TrainingState, materialise_optimizer_state
from vidrl.learner.config import LearnerConfig
from vidrl.learner.forward import config_prompt_position_ids
from vidrl.learner.frozen_vision import (
    encode_step_videos,
    freeze_tower,
    step_videos,
    tower_parameter_names,
    with_encoded,
)
from vidrl.learner.guard import NonFiniteWeights, nonfinite_update, nonfinite_weights
from vidrl.learner.layouts import LAYOUTS, choose_layout
from vidrl.learner.losses import grpo_microbatch, kept_mask, rollout_logprobs, sft_microbatch
from vidrl.learner.memory import HostMalloc, PeakMemory, resident_anon_bytes
from vidrl.learner.model import build_sharded, choose_attention, compute_dtype, vision_tower_in_lockstep
from vidrl.learner.offpolicy import MismatchSums, mismatch_sums
from vidrl.learner.prefix import pack_group
from vidrl.learner.process_group import Rendezvous, join, pick_rendezvous
from vidrl.learner.schedule import lr_lambda
from vidrl.learner.sequence_parallel import new_sequence_groups, refuse_family, refuse_heads
from vidrl.learner.types import (
    EncodedVideo,
    LossSums,
    PackedGroup,
    RankMetrics,
    ResponseLogprobs,
    SkippedUpdate,
    StepTotals,
    TrainGroup,
    UpdatePlan,
    VisionInputs,
    add_mismatch,
)
from vidrl.models import family_at

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
        self._poisoned_microbatches = 0
        self.memory = PeakMemory()
        self.host_malloc = HostMalloc(cfg.host_malloc)
        self.host_malloc.apply()
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ setup

    def rendezvous(self) -> Rendezvous:
        """Where the ranks meet (called on rank 0; vidrl.learner.process_group)."""
        return pick_rendezvous()

    def init_process_group(self, rendezvous: Rendezvous) -> None:
        self.device = torch.device(
            "cuda" if self.cfg.gpus_per_rank > 0 and torch.cuda.is_available() else "cpu"
        )
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        join(rendezvous, self.rank, self.world_size, backend, self.cfg.process_group_timeout_seconds)
        size = self.cfg.sequence_parallel_size
        self.sequence_group = new_sequence_groups(self.world_size, size, self.rank) if size > 1 else None

    def build(self) -> dict[str, float]:
        """Build, shard and load the policy (and the reference model when KL is used), then set
        up optimisation. Returns this rank's host memory in bytes: resident at the start, and
        the peak after each of policy, reference and optimizer state ("{phase}_host_bytes"),
        and the anonymous memory resident at the end of each ("{phase}_anon_bytes": what the
        rank keeps, without the checkpoint's file pages read on the way; vidrl.learner.memory)."""
        self.memory.reset()
        phases: dict[str, float] = {}

        def mark(phase: str) -> None:
            phases[f"{phase}_host_bytes"] = float(self.memory.host())
            phases[f"{phase}_anon_bytes"] = float(resident_anon_bytes() or 0)

        mark("start")
        family = family_at(self.model_path)
        refuse_family(family.name, family.prefix_sharing, self.cfg.sequence_parallel_size)
        layout = choose_layout(self.cfg, family)  # every pass of the run: policy, old, reference
        self.attention = choose_attention(self.cfg, self.device, layout)
        self.layout_logprobs = LAYOUTS[layout](self.attention.prefix_kernel)
        if self.sequence_group is not None:
            self.layout_logprobs = functools.partial(self.layout_logprobs, sequence_group=self.sequence_group)
        torch.manual_seed(self.seed)
        self.model = build_sharded(
            self.model_path, self.attention, self.cfg, self.device, torch.float32, seed=self.seed
        )
        self.config = self.model.config
        text_config = getattr(self.config, "text_config", self.config)
        refuse_heads(text_config.num_attention_heads, self.cfg.sequence_parallel_size)
        self.frozen_names: set[str] = set()  # the tower's parameters, left out of later pushes
        if self.cfg.freeze_vision:
            freeze_tower(self.model)
            self.frozen_names = tower_parameter_names(self.model)
        self.pushed = False
        self.encoded: dict[int, EncodedVideo] = {}  # this step's frozen-tower embeddings
        # The engine never samples the family's vision placeholders: they leave the learner's
        # distribution too (one list for both: vidrl.models).
        self.banned_ids = family.placeholder_token_ids(self.config)
        mark("policy")
        self.reference = None
        # With LoRA the reference policy is the base model: the policy with its adapters off.
        if self.cfg.loss.kl_coef > 0 and self.cfg.lora is None:
            # Never trained: its weights are kept in the compute dtype, not as float32 masters.
            dtype = compute_dtype(self.cfg)
            self.reference = build_sharded(
                self.model_path, self.attention, self.cfg, self.device, dtype, trainable=False
            )
        mark("reference")
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
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
        if self.cfg.freeze_vision:
            self._first_forward()
        mark("optimizer")
        return phases

    @torch.no_grad()
    def _first_forward(self) -> None:
        """One forward of the idle group through the whole model, so that FSDP2 has set the
        model up as the root before the frozen tower is called on its own (train_step): FSDP2
        refuses a first forward through a child unit."""
        idle = idle_group(self.banned_ids)
        self._logprobs(self.model, [self._pack(idle)], [None], with_entropy=False)

    def offload(self) -> float:
        """Move this rank's parameter shards, gradients and optimizer state to host memory, so a
        colocated engine can wake into the device memory; returns the bytes moved (0 on CPU)."""
        return self._move_state(torch.device("cpu"))

    def onload(self) -> float:
        """Bring back what `offload` moved, before the next step; returns the bytes moved."""
        return self._move_state(self.device)

    def _move_state(self, target: torch.device) -> float:
        if self.device.type == "cpu":
            return 0.0
        self.model.to(target)  # FSDP2 moves the sharded parameters (and their gradients)
        moved = sum(p.numel() * p.element_size() for p in self.model.parameters())
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value.to(target, non_blocking=True)
                    moved += value.numel() * value.element_size()
        if target.type == "cpu":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return float(moved)

    def peak_memory(self) -> dict[str, float]:
        """Peak memory since the last step, build or export began (what the last one needed)."""
        return self.memory.read()

    # ------------------------------------------------------------------ training

    def train_step(self, updates: Sequence[UpdatePlan], epochs: int, mode: str) -> RankMetrics:
        """One step: `epochs` passes over `updates`, one optimizer update each. With
        `old_logprobs: recompute` the old policy is first computed by a forward pass over the
        same micro-batches, before any update. An update whose loss (on any rank) or gradient
        norm is not finite is skipped by every rank: gradients dropped, no optimizer or
        schedule step (vidrl.learner.guard)."""
        started = time.perf_counter()
        self.memory.reset()
        recompute = mode == "grpo" and self.cfg.old_logprobs == "recompute"
        idle = [idle_group(self.banned_ids)]
        if self.cfg.freeze_vision:  # every pass of the step reads these: the tower runs once
            self.encoded = encode_step_videos(self.model, step_videos(updates), self.sequence_group)
        old, mismatch = self._recompute_old(updates, idle) if recompute else ({}, None)
        totals = [self._kept_totals(update, old) for update in updates] if recompute else None
        self.model.train()
        terms, norms, lrs, skipped = LossSums(), [], [], []
        for epoch in range(epochs):
            for index, update in enumerate(updates):
                measure = not recompute and epoch == 0 and index == 0
                counts = update.totals if totals is None else totals[index]
                update_terms, measured, bad = self._update(update, counts, mode, idle, old, measure)
                norm = self._clip_gradients()
                if nonfinite_update(bad, norm, self.device):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped.append(SkippedUpdate(epoch + 1, index + 1, len(updates), tuple(bad), norm))
                    continue
                terms, mismatch = terms + update_terms, add_mismatch(mismatch, measured)
                norms.append(norm)
                self.optimizer.step()
                lrs.append(self.scheduler.get_last_lr()[0])
                self.scheduler.step()
                self.step += 1
        self.encoded = {}
        self.host_malloc.after("step")
        return self._rank_metrics(updates, epochs, terms, mismatch, norms, lrs, skipped, started)

    def _rank_metrics(
        self,
        updates: Sequence[UpdatePlan],
        epochs: int,
        terms: LossSums,
        mismatch: MismatchSums | None,
        norms: list[float],
        lrs: list[float],
        skipped: list[SkippedUpdate],
        started: float,
    ) -> RankMetrics:
        """This rank's share of the step: means over the updates applied (none: zeros). Of a
        sequence group, whose ranks all computed the same micro-batches, the first reports them."""
        applied = len(norms)
        peak = self.memory.read()
        tokens = sum(g.cost(self.cfg.shared_prefix) for u in updates for b in u.microbatches for g in b)
        microbatches = sum(len(u.microbatches) for u in updates)
        if self.sequence_group is not None and self.sequence_group.index > 0:
            terms, mismatch, tokens, microbatches = LossSums(), None, 0, 0
        return RankMetrics(
            terms=terms.scaled(1.0 / max(applied, 1)),
            mismatch=mismatch,
            grad_norm=sum(norms) / max(applied, 1),
            lr=lrs[0] if lrs else self.scheduler.get_last_lr()[0],
            updates=applied,
            tokens=epochs * tokens,
            microbatches=microbatches,
            step_seconds=time.perf_counter() - started,
            peak_host_bytes=peak.get("peak_host_bytes"),
            peak_device_bytes=peak.get("peak_device_bytes"),
            skipped=tuple(skipped),
        )

    def inject_nonfinite_loss(self, microbatches: int) -> None:
        """Test hook: the next `microbatches` micro-batch losses on this rank become NaN."""
        self._poisoned_microbatches = microbatches

    def _update(
        self,
        update: UpdatePlan,
        totals: StepTotals,
        mode: str,
        idle: Sequence[TrainGroup],
        old: dict[int, torch.Tensor],
        measure: bool,
    ) -> tuple[LossSums, MismatchSums | None, list[str]]:
        """Forward and backward every micro-batch of one update (gradients left for the optimizer);
        also the sample ids of the groups whose micro-batch loss was not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        terms, mismatch, bad = LossSums(), None, []
        for index in range(update.num_microbatches):
            active = index < len(update.microbatches)
            groups = update.microbatches[index] if active else idle
            loss, parts, measured = self._microbatch_loss(groups, totals, mode, old, measure and active)
            if active and self._poisoned_microbatches > 0:
                self._poisoned_microbatches -= 1
                loss = loss * float("nan")
            if not bool(torch.isfinite(loss.detach())):
                bad.extend(g.sample_id or "?" for g in groups)
            # FSDP2 averages gradients over ranks; the loss is a share of an update-wide sum. The
            # ranks of a sequence group each hold the whole micro-batch's loss, and the gather of
            # their log-probs sums its gradients over them (vidrl.learner.sequence_parallel).
            scale = self.world_size / self.cfg.sequence_parallel_size
            (loss * (scale if active else 0.0)).backward()
            del loss
            self.host_malloc.after("microbatch")
            if active:
                terms, mismatch = terms + parts, add_mismatch(mismatch, measured)
        return terms, mismatch, bad

    def _microbatch_loss(
        self,
        groups: Sequence[TrainGroup],
        totals: StepTotals,
        mode: str,
        old: dict[int, torch.Tensor],
        measure: bool,
    ) -> tuple[torch.Tensor, LossSums, MismatchSums | None]:
        packed = [self._pack(g) for g in groups]
        vision = with_encoded([g.vision for g in groups], self.encoded)
        outputs, tower_zero = self._logprobs(self.model, packed, vision, with_entropy=True)
        mismatch = None
        if mode == "sft":
            loss, parts = sft_microbatch(outputs, totals)
        else:
            references = self._reference_logprobs(packed, vision)
            learner_old = [old.get(id(g)) for g in groups]
            loss, parts, mismatch = grpo_microbatch(
                groups, outputs, references, learner_old, self.cfg.loss, totals, measure
            )
        return (loss if tower_zero is None else loss + tower_zero.to(loss.device)), parts, mismatch

    @torch.no_grad()
    def _recompute_old(
        self, updates: Sequence[UpdatePlan], idle: Sequence[TrainGroup]
    ) -> tuple[dict[int, torch.Tensor], MismatchSums | None]:
        """The current policy's log-probs of every group, by group identity, from forward passes
        over the updates' own micro-batches (every rank runs as many as the others), and the
        mismatch sums against the engine's log-probs."""
        self.model.eval()
        old: dict[int, torch.Tensor] = {}
        mismatch = None
        for update in updates:
            for index in range(update.num_microbatches):
                active = index < len(update.microbatches)
                groups = update.microbatches[index] if active else idle
                packed = [self._pack(g) for g in groups]
                vision = with_encoded([g.vision for g in groups], self.encoded)
                outputs, _ = self._logprobs(self.model, packed, vision, with_entropy=False)
                if not active:
                    continue
                for group, out in zip(groups, outputs, strict=True):
                    old[id(group)] = out.logprobs
                    engine = rollout_logprobs(group, out.logprobs)
                    if engine is not None:
                        bound = self.cfg.loss.rollout_is_cap
                        measured = mismatch_sums(out.logprobs, engine, out.mask, bound)
                        mismatch = add_mismatch(mismatch, measured)
        return old, mismatch

    def _kept_totals(self, update: UpdatePlan, old: dict[int, torch.Tensor]) -> StepTotals:
        """The update's loss denominators over the tokens rejection sampling keeps, summed over
        ranks (rejected tokens leave the loss and its counts alike)."""
        if self.cfg.loss.rollout_rejection == "none":
            return update.totals
        counts = torch.zeros(2, dtype=torch.float64)
        for microbatch in update.microbatches:
            for group in microbatch:
                logprobs = old[id(group)]
                lengths = torch.tensor([len(r) for r in group.responses])
                mask = torch.arange(logprobs.shape[1])[None, :] < lengths[:, None]
                out = ResponseLogprobs(logprobs.cpu(), None, mask)
                kept = kept_mask(out, group, logprobs.cpu(), self.cfg.loss)
                counts += torch.tensor([float(kept.sum()), float(kept.any(-1).sum())], dtype=torch.float64)
        dist.all_reduce(counts)
        counts /= self.cfg.sequence_parallel_size  # the ranks of a sequence group counted the same groups
        return StepTotals(response_tokens=int(counts[0]), sequences=int(counts[1]))

    @torch.no_grad()
    def _reference_logprobs(
        self, packed: list[PackedGroup], vision: list[VisionInputs | None]
    ) -> list[ResponseLogprobs] | None:
        if self.cfg.loss.kl_coef > 0 and self.cfg.lora is not None:
            from vidrl.learner.lora import adapters_enabled

            adapters_enabled(self.model, False)
            try:
                return self._logprobs(self.model, packed, vision, with_entropy=False)[0]
            finally:
                adapters_enabled(self.model, True)
        if self.reference is None:
            return None
        return self._logprobs(self.reference, packed, vision, with_entropy=False)[0]

    def _logprobs(
        self, model: Any, packed: list[PackedGroup], vision: list[VisionInputs | None], with_entropy: bool
    ) -> tuple[list[ResponseLogprobs], torch.Tensor | None]:
        """Per-token log-probs in the run's layout (vidrl.learner.layouts), through the chunked
        head, and the zero of the vision tower's dummy pass when no group has a video (None
        otherwise): every rank runs the tower, in the same place (vision_tower_in_lockstep)."""
        # A frozen tower ran once for the step (train_step): no pass runs it, on any rank.
        no_video = all(v is None for v in vision) and not self.cfg.freeze_vision
        with vision_tower_in_lockstep(model, no_video) as tower:
            records = self.layout_logprobs(
                model,
                packed,
                vision,
                temperature=self.temperature,
                with_entropy=with_entropy,
                chunk_tokens=self.cfg.logprob_chunk_tokens,
                banned_ids=self.banned_ids,
            )
        return records, (tower[0] if tower else None)

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    # ------------------------------------------------------------------ inputs

    def _pack(self, group: TrainGroup) -> PackedGroup:
        prompt = torch.from_numpy(group.prompt_ids).long()
        vision = group.vision
        positions = config_prompt_position_ids(
            self.config,
            prompt,
            None if vision is None else torch.as_tensor(vision.video_grid_thw),
            None if vision is None or vision.second_per_grid_ts is None else list(vision.second_per_grid_ts),
        )
        return pack_group(prompt, positions, [r.tolist() for r in group.responses])

    # ------------------------------------------------------------------ weights out

    def export_weights(self, version: int) -> list[Any]:
        """Publish the weights as buckets from rank 0 (vidrl.learner.export); every rank takes
        part in the gathers. After the first push a frozen tower stays out (the engines have it)."""
        from vidrl.learner.export import publish_weights

        self.memory.reset()
        self._check_finite(f"weights version {version} is not pushed")
        keeps_vision = self.pushed and bool(self.frozen_names)
        refs = publish_weights(
            self.model,
            version,
            self.rank,
            self.cfg,
            self.model_path,
            self.export_dtype,
            skip=self.frozen_names if keeps_vision else set(),
        )
        self.pushed = True
        return refs

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str, extra_state: dict[str, Any]) -> None:
        from vidrl.learner.checkpoint import save_checkpoint

        self._check_finite(f"no checkpoint is written to {path}")
        save_checkpoint(self._training_state(), path, extra_state)

    def _check_finite(self, consequence: str) -> None:
        """Raise NonFiniteWeights on every rank when any rank's weights hold a NaN or Inf."""
        bad = nonfinite_weights(self.model, self.device)
        if bad:
            names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteWeights(f"the policy holds non-finite values ({names}): {consequence}")

    def load(self, path: str) -> dict[str, Any]:
        from vidrl.learner.checkpoint import load_checkpoint

        self.step, extra = load_checkpoint(self._training_state(), path)
        return extra

    def _training_state(self) -> TrainingState:
        return TrainingState(
            self.rank,
            self.model,
            self.optimizer,
            self.scheduler,
            self.step,
            self.model_path,
            self.cfg.lora,
            self.seed,
            self.export_dtype,
        )
