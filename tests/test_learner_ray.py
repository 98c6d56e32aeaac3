"""The learner on real FSDP2 ranks in local Ray: splits do not change the update, weights
export under their Hugging Face names, checkpoints resume exactly, SFT lowers its loss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vidrl.actors import ActorFailed
from vidrl.learner.config import LearnerConfig
from vidrl.learner.loss_config import LossConfig
from vidrl.learner.types import TrainGroup, VisionInputs

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vidrl.data.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("learner") / "model", seed=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def video_group(model_dir: Path, seed: int, lengths: tuple[int, ...]) -> TrainGroup:
    """A real video prompt through the tiny model's processor, with random responses."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": f"When? {seed}"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = processor(
        text=[text],
        videos=[frames],
        return_tensors="np",
        videos_kwargs={"do_sample_frames": False, "fps": 2.0},
    )
    vision = VisionInputs(
        pixel_values_videos=out["pixel_values_videos"].astype(np.float32),
        video_grid_thw=out["video_grid_thw"].astype(np.int64),
        second_per_grid_ts=np.asarray(out["second_per_grid_ts"], dtype=np.float64),
    )
    vocab = len(processor.tokenizer)
    responses = tuple(rng.integers(10, min(vocab, 300), (n,)).astype(np.int64) for n in lengths)
    return TrainGroup(
        prompt_ids=out["input_ids"][0].astype(np.int64),
        responses=responses,
        advantages=rng.normal(size=len(lengths)).astype(np.float32),
        old_logprobs=tuple(np.full(n, -5.0, dtype=np.float32) for n in lengths),
        vision=vision,
    )


@pytest.fixture(scope="module")
def groups(model_dir: Path) -> list[TrainGroup]:
    return [
        video_group(model_dir, s, lengths) for s, lengths in enumerate([(5, 7, 3), (4, 4), (6, 2, 3), (8,)])
    ]


def config(**overrides: object) -> LearnerConfig:
    loss = LossConfig(kl_coef=0.0, entropy_coef=1e-3)
    defaults: dict[str, object] = {"lr": 1e-3, "max_grad_norm": None, "loss": loss}
    return LearnerConfig(**(defaults | overrides))  # type: ignore[arg-type]


def gradient_like(**overrides: object) -> LearnerConfig:
    """Adam's first step is lr * g / (|g| + eps): with eps = 1 and lr = 1 it is about g itself,
    so a loss scaled differently by a split would show up scaled in the update (with a small
    eps, Adam's first step is lr * sign(g) for every weight and hides the scale)."""
    return config(lr=1.0, adam_eps=1.0, weight_decay=0.0, **overrides)


def exported(learner: object, version: int) -> dict[str, torch.Tensor]:
    from vidrl.weights import unpack_bucket

    buckets = ray.get(learner.export_weights(version))  # type: ignore[attr-defined]
    return {name: t.clone() for b in buckets for name, t in unpack_bucket(b)}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_rank_update(
    cluster: None, model_dir: Path, groups: list[TrainGroup], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, torch.Tensor]]:
    """One rank: the step as one micro-batch, and (from the same start) as one per group."""
    from vidrl.learner.group import LearnerGroup

    start = str(tmp_path_factory.mktemp("start"))
    learner = LearnerGroup(str(model_dir), gradient_like(num_ranks=1, weight_bucket_bytes=64 * 1024), seed=0)
    try:
        learner.save(start, {})
        one = learner.train_step(groups, max_tokens_per_microbatch=100_000).metrics
        whole = exported(learner, 1)
        learner.load(start)
        # each group costs about 50-70 tokens: a 70-token budget gives one micro-batch per group
        four = learner.train_step(groups, max_tokens_per_microbatch=70).metrics
        split = exported(learner, 1)
    finally:
        learner.shutdown()
    assert (one["microbatches"], four["microbatches"]) == (1, 4)
    return {"whole": whole, "split": split}


def test_update_does_not_depend_on_microbatches(
    one_rank_update: dict[str, dict[str, torch.Tensor]], model_dir: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    whole, split = one_rank_update["whole"], one_rank_update["split"]
    before = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    assert max(float((whole[k] - before[k]).abs().max()) for k in whole) > 1e-3  # the step moved weights
    assert max_difference(whole, split) < 1e-5


def test_export_names_and_shapes_match_the_hf_model(
    one_rank_update: dict[str, dict[str, torch.Tensor]], model_dir: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    reference = dict(AutoModelForImageTextToText.from_pretrained(model_dir).named_parameters())
    whole = one_rank_update["whole"]
    assert whole.keys() == reference.keys()
    assert all(whole[k].shape == reference[k].shape for k in reference)


def test_two_ranks_match_one_and_resume_exactly(
    cluster: None,
    model_dir: Path,
    groups: list[TrainGroup],
    one_rank_update: dict[str, dict[str, torch.Tensor]],
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForImageTextToText

    from vidrl.learner.group import LearnerGroup

    cfg = gradient_like(num_ranks=2, lr_schedule="cosine", total_steps=4)  # lr changes every step
    first = LearnerGroup(str(model_dir), cfg, seed=0)
    try:
        # each rank read only its rows of the checkpoint: together they are from_pretrained's weights
        loaded = dict(
            AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).named_parameters()
        )
        assert max_difference(exported(first, 0), {k: v.detach() for k, v in loaded.items()}) == 0.0
        metrics = first.train_step(groups).metrics
        assert max_difference(exported(first, 1), one_rank_update["whole"]) < 1e-5  # 2 ranks == 1 rank
        assert metrics["tokens"] == sum(g.cost(True) for g in groups)
        first.save(str(tmp_path / "ckpt"), {"data_position": 7})
        first.train_step(groups[2:])
        uninterrupted = exported(first, 2)
    finally:
        first.shutdown()

    resumed = LearnerGroup(
        str(model_dir), cfg, seed=123
    )  # another seed: the state must come from the checkpoint
    try:
        assert resumed.load(str(tmp_path / "ckpt")) == {"data_position": 7}
        resumed.train_step(groups[2:])
        assert max_difference(uninterrupted, exported(resumed, 2)) < 1e-6
        # SFT on the same ranks: cross-entropy of the first response of each group goes down
        sft = [
            TrainGroup(
                prompt_ids=g.prompt_ids,
                responses=g.responses[:1],
                advantages=np.ones(1, np.float32),
                vision=g.vision,
            )
            for g in groups
        ]
        losses = [resumed.train_step(sft, mode="sft").metrics["loss"] for _ in range(4)]
        assert losses[-1] < losses[0] - 0.1, losses
    finally:
        resumed.shutdown()
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt" / "hf")  # loadable by transformers
    assert sum(p.numel() for p in hf.parameters()) > 0


def test_a_rank_without_work_runs_the_idle_group_and_changes_nothing(
    cluster: None, model_dir: Path, groups: list[TrainGroup]
) -> None:
    """One group on two ranks: rank 1 has nothing to do and runs the idle group (one token, no
    video, so its vision tower runs on the dummy input in the real tower's place) at weight 0,
    through the learner's own old log-probs and the reference model too; the update is one rank's."""
    from vidrl.learner.batch import idle_group
    from vidrl.learner.group import LearnerGroup

    assert idle_group([0, 1, 3]).prompt_ids.tolist() == [2]  # never a vision placeholder
    updates = {}
    for ranks in (1, 2):
        cfg = gradient_like(num_ranks=ranks, old_logprobs="recompute", loss=LossConfig(kl_coef=0.1))
        learner = LearnerGroup(str(model_dir), cfg, seed=0)
        try:
            metrics = learner.train_step(groups[:1]).metrics
            updates[ranks] = exported(learner, 1)
        finally:
            learner.shutdown()
        assert metrics["tokens"] == groups[0].cost(True)  # the idle group is not counted
    assert max_difference(updates[1], updates[2]) < 1e-5


def test_reference_in_compute_dtype_offloaded_and_weights_out_in_the_engine_dtype(
    cluster: None, model_dir: Path, groups: list[TrainGroup]
) -> None:
    """bf16 compute with KL: the reference is kept in bf16, offloaded between uses (FSDP2's CPU
    offload), and equals the policy at step 1 (KL exactly 0); exported buckets are bf16 (half the
    bytes of the float32 masters); each rank reports its peak memory."""
    from transformers import AutoModelForImageTextToText

    from vidrl.learner.group import LearnerGroup

    loss = LossConfig(kl_coef=0.1, entropy_coef=0.0)
    cfg = config(num_ranks=2, param_dtype="bfloat16", reference_offload=True, loss=loss)
    learner = LearnerGroup(str(model_dir), cfg, seed=0, export_dtype="bfloat16")
    try:
        start = exported(learner, 0)
        first, second = learner.train_step(groups).metrics, learner.train_step(groups).metrics
        build = learner.build_memory
    finally:
        learner.shutdown()
    hf = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    expected = {k: v.detach().to(torch.bfloat16) for k, v in hf.named_parameters()}
    assert {t.dtype for t in start.values()} == {torch.bfloat16}
    assert max_difference(start, expected) == 0.0
    parameters = sum(p.numel() for p in hf.parameters())
    assert sum(t.numel() * t.element_size() for t in start.values()) == 2 * parameters
    assert first["kl"] == 0.0 and second["kl"] > 0.0
    assert all(0 < rank["start_host_bytes"] <= rank["optimizer_host_bytes"] for rank in build)
    assert all(0 < rank["policy_anon_bytes"] <= rank["policy_host_bytes"] for rank in build)
    assert first["peak_host_bytes"] > 0


def test_updates_per_step_equal_sequential_steps_on_the_mini_batches(
    cluster: None, model_dir: Path, groups: list[TrainGroup]
) -> None:
    """Two updates per step (mini-batches of groups 0-1 and 2-3, old log-probs fixed before the
    first) make the same weights as two one-update steps on those mini-batches."""
    from vidrl.learner.group import LearnerGroup

    split = LearnerGroup(str(model_dir), gradient_like(num_ranks=1, updates_per_step=2), seed=0)
    try:
        metrics = split.train_step(groups).metrics
        at_once = exported(split, 1)
    finally:
        split.shutdown()
    sequential = LearnerGroup(str(model_dir), gradient_like(num_ranks=1), seed=0)
    try:
        sequential.train_step(groups[:2])
        sequential.train_step(groups[2:])
        one_by_one = exported(sequential, 2)
    finally:
        sequential.shutdown()
    assert metrics["updates"] == 2
    assert max_difference(at_once, one_by_one) < 1e-6


def test_recompute_measures_the_mismatch_and_rejection_drops_what_leaves_the_band(
    cluster: None, model_dir: Path, groups: list[TrainGroup]
) -> None:
    """The "engine" log-probs here are -2 everywhere; the random model gives about -ln(vocab)
    = -6.2, a ratio of e^-4.2 = 0.015 outside [0.5, 2]: the recompute pass measures that,
    rejection drops every token (and its counts), so two epochs of updates leave the weights as
    they were."""
    import dataclasses

    from vidrl.learner.group import LearnerGroup

    groups = [
        dataclasses.replace(g, old_logprobs=tuple(np.full(len(r), -2.0, np.float32) for r in g.responses))
        for g in groups
    ]
    loss = LossConfig(kl_coef=0.0, entropy_coef=0.0, rollout_rejection="token")
    cfg = config(num_ranks=1, old_logprobs="recompute", epochs=2, weight_decay=0.0, loss=loss)
    learner = LearnerGroup(str(model_dir), cfg, seed=0)
    try:
        before = exported(learner, 0)
        metrics = learner.train_step(groups).metrics
        after = exported(learner, 1)
    finally:
        learner.shutdown()
    assert metrics["updates"] == 2
    assert 3.5 < metrics["mismatch/abs_log_ratio"] < 5.0
    assert metrics["mismatch/beyond"] == 1.0 and metrics["mismatch/k3"] > 1.0
    assert metrics["policy_loss"] == 0.0
    assert max_difference(before, after) == 0.0


def test_a_non_finite_loss_is_never_applied(cluster: None, model_dir: Path, groups: list[TrainGroup]) -> None:
    """A NaN loss on one rank: both ranks skip that update (the weights stay bitwise as they were,
    the skip is counted and names the samples), the next step applies as usual, and weights with
    a NaN are neither pushed nor saved."""
    from vidrl.learner.group import LearnerGroup
    from vidrl.learner.guard import NonFiniteWeights

    named = [
        TrainGroup(g.prompt_ids, g.responses, g.advantages, g.old_logprobs, g.vision, f"s{i}")
        for i, g in enumerate(groups)
    ]
    learner = LearnerGroup(str(model_dir), config(num_ranks=2), seed=0)
    try:
        before = exported(learner, 0)
        ray.get(learner.workers[1].inject_nonfinite_loss.remote(1))
        poisoned = learner.train_step(named)
        assert poisoned.metrics["updates"] == 0.0 and poisoned.metrics["skipped_updates"] == 1.0
        (reason,) = poisoned.skipped
        assert "loss not finite" in reason and "gradient norm nan" in reason
        after = exported(learner, 1)
        assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise: nothing applied
        applied = learner.train_step(named)
        assert applied.metrics["updates"] == 1.0 and applied.skipped == ()
        assert max_difference(before, exported(learner, 2)) > 0  # this one moved the weights
        # Weights that hold a NaN (however they came to) are refused by every rank, by name.
        nan = lambda w: next(iter(w.model.parameters())).data.fill_(float("nan"))  # noqa: E731
        ray.get([w.__ray_call__.remote(nan) for w in learner.workers])
        with pytest.raises(ActorFailed, match=r"version 3: .*non-finite values .*not pushed"):
            learner.export_weights(3)
        with pytest.raises(ActorFailed, match=NonFiniteWeights.__name__):
            learner.save("/nonexistent/never/written", {})
    finally:
        learner.shutdown()


def test_a_checkpoint_of_one_rank_resumes_on_two(
    cluster: None, model_dir: Path, groups: list[TrainGroup], tmp_path: Path
) -> None:
    """DCP reshards the model and optimizer state; the second rank, which the checkpoint has no
    RNG state for, derives its own (and says so). The two ranks then take the step one rank
    would have taken."""
    from vidrl.learner.group import LearnerGroup

    one = LearnerGroup(str(model_dir), gradient_like(num_ranks=1), seed=0)
    try:
        one.train_step(groups[:2])
        one.save(str(tmp_path / "ckpt"), {"step": 1})
        saved = exported(one, 1)
        one.train_step(groups[2:])
        continued = exported(one, 2)
    finally:
        one.shutdown()
    two = LearnerGroup(str(model_dir), gradient_like(num_ranks=2), seed=5)
    try:
        assert two.load(str(tmp_path / "ckpt")) == {"step": 1}
        assert max_difference(saved, exported(two, 1)) == 0.0
        two.train_step(groups[2:])
        assert max_difference(continued, exported(two, 2)) < 1e-5
    finally:
        two.shutdown()


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["two_pass", "plain"])
def test_sequence_parallel_ranks_make_one_ranks_update(
    cluster: None, model_dir: Path, groups: list[TrainGroup], shared_prefix: bool
) -> None:
    """Two ranks splitting every micro-batch's tokens (Ulysses, S = 2) make the update one rank
    makes alone: two updates per step, KL to the reference, the learner's own old log-probs,
    the loss terms and every weight (lr 1, Adam eps 1: the update is about the gradient); in the
    plain case the split ranks also run activation checkpointing."""
    from vidrl.learner.group import LearnerGroup

    settings: dict[str, object] = {
        "shared_prefix": shared_prefix,
        "updates_per_step": 2,
        "old_logprobs": "recompute",
        "loss": LossConfig(kl_coef=0.1, entropy_coef=1e-3),
    }
    results = {}
    for ranks, size in ((1, 1), (2, 2)):
        # plain: the sequence ranks also recompute their layers (checkpointing), all-to-alls included
        checkpointing = size > 1 and not shared_prefix
        cfg = gradient_like(
            num_ranks=ranks, sequence_parallel_size=size, gradient_checkpointing=checkpointing, **settings
        )
        learner = LearnerGroup(str(model_dir), cfg, seed=0)
        try:
            first = learner.train_step(groups).metrics  # KL is 0 at the first update: take a second step
            results[size] = (first, learner.train_step(groups).metrics, exported(learner, 2))
        finally:
            learner.shutdown()
    (first_1, metrics_1, weights_1), (first_2, metrics_2, weights_2) = results[1], results[2]
    assert max_difference(weights_1, weights_2) < 1e-5
    assert metrics_1["kl"] > 0 and metrics_1["updates"] == 2
    for name in (
        "loss",
        "policy_loss",
        "kl",
        "entropy",
        "clip_fraction",
        "grad_norm",
        "tokens",
        "microbatches",
    ):
        assert metrics_2[name] == pytest.approx(metrics_1[name], rel=1e-5, abs=1e-7), name
    assert first_2["loss"] == pytest.approx(first_1["loss"], rel=1e-5, abs=1e-7)


def test_a_frozen_vision_tower_is_encoded_once_trained_never_and_pushed_once(
    cluster: None, model_dir: Path, groups: list[TrainGroup], tmp_path: Path
) -> None:
    """freeze_vision, with old log-probs recomputed and KL to the reference (three passes that
    read the step's one encoding of each video): every parameter outside the tower makes the
    update the unfrozen model makes (whose tower gradients are simply not applied), the tower
    stays as loaded, and the pushes after the first leave it out."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vidrl.learner.group import LearnerGroup

    settings: dict[str, object] = {"old_logprobs": "recompute", "loss": LossConfig(kl_coef=0.1)}
    runs = {}
    for freeze, size in ((False, 1), (True, 1), (True, 2)):  # size 2: the ranks split the frames
        cfg = gradient_like(num_ranks=2, freeze_vision=freeze, sequence_parallel_size=size, **settings)
        learner = LearnerGroup(str(model_dir), cfg, seed=0)
        try:
            pushed_first = exported(learner, 0)
            metrics = learner.train_step(groups).metrics
            pushed_after = exported(learner, 1)
            learner.save(str(tmp_path / f"frozen-{freeze}-{size}"), {})
        finally:
            learner.shutdown()
        runs[freeze, size] = (pushed_first, metrics, pushed_after)
    (first, metrics, after), (frozen_first, frozen_metrics, frozen_after) = runs[False, 1], runs[True, 1]
    assert max_difference(runs[True, 2][2], frozen_after) < 1e-5  # and under sequence parallelism
    tower = {name for name in first if name.startswith("model.visual.")}
    assert tower and frozen_first.keys() == first.keys()  # the first push carries everything
    assert frozen_after.keys() == first.keys() - tower  # later pushes leave the tower out
    assert max(float((after[k] - first[k]).abs().max()) for k in tower) > 1e-3  # unfrozen: it moves
    assert max_difference(frozen_after, {k: after[k] for k in frozen_after}) < 1e-5
    assert frozen_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5, abs=1e-7)
    saved = {}
    for shard in (tmp_path / "frozen-True-1" / "hf").glob("*.safetensors"):
        saved |= load_file(str(shard))
    assert max(float((saved[k] - frozen_first[k]).abs().max()) for k in tower) == 0.0  # as loaded

    def tower_moments(run: str) -> int:  # Adam's state for tower parameters, in the checkpoint
        count = 0
        for shard in (tmp_path / run / "state").glob("*.safetensors"):
            with safe_open(str(shard), "pt") as handle:
                names = list(handle.keys())
            count += sum("visual" in name and "exp_avg" in name for name in names)
        return count

    assert tower_moments("frozen-False-1") > 0 and tower_moments("frozen-True-1") == 0  # not in the optimizer
