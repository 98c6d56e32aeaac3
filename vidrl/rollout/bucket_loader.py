"""Loading weight buckets into vLLM's model in place: the engine's worker extension.

`BucketLoaderExtension` is mixed into vLLM's worker class (`worker_extension_cls`, named by
vidrl.rollout.engine's `engine_kwargs`) and runs where the model lives. It reloads the pushed
tensors through vLLM's layerwise reload and requires every engine parameter to receive one,
except the vision tower's in a push that keeps it (`WeightBucket.keeps_vision`:
learner.freeze_vision). It needs nothing of vLLM's imports: it calls the worker it is mixed into.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from vidrl.models import family_of
from vidrl.weights import WeightBucket, unpack_bucket


class BucketLoaderExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`): loads weight buckets in place.

    It runs where the model lives: in this process with one rank, in each rank's process with
    several, where the buckets arrive as values (never object-store references).
    """

    def load_weight_buckets(self, version: int, buckets: Sequence[WeightBucket]) -> int:
        """Reload every tensor in `buckets`, which must all be of `version`; returns the
        number of tensors loaded. Every parameter of the engine's model must receive one:
        vLLM only logs the ones that did not (a name its loader does not map, say a
        family's DeepStack mergers, would keep its old weights), here it is an error."""
        found = sorted({b.version for b in buckets} - {version})
        if found:  # before any tensor is loaded, so the old weights stay whole
            raise ValueError(f"weights v{version} requested, buckets of v{found} given")
        named = [pair for bucket in buckets for pair in unpack_bucket(bucket)]
        # One call for all buckets: the reload finalises (repacks) each layer once it has
        # all of that layer's tensors, which may span buckets.
        worker: Any = self  # vLLM's worker, which this class is mixed into
        model = worker.model_runner.get_model()
        keeps_vision = any(b.keeps_vision for b in buckets)
        with _quiet_kept_layers() if keeps_vision else contextlib.nullcontext():
            loaded = _recording_loads(model, lambda: worker.reload_weights(weights_iterator=iter(named)))
        # vLLM's own tally (reload_weights): LoRA wraps a layer as base_layer.
        expected = {name.replace(".base_layer.", ".") for name, _ in model.named_parameters()}
        if keeps_vision:  # a frozen tower (learner.freeze_vision): the layers keep their weights
            family = family_of(worker.vllm_config.model_config.hf_config)
            expected -= _names_under(model, family.engine_vision_tower(model))
        missing = sorted(expected - loaded)
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise RuntimeError(
                f"weights v{version}: {len(missing)} of {len(expected)} engine parameters received "
                f"no tensor from the {len(named)} pushed: {shown}"
            )
        return len(named)


def _names_under(model: Any, module: Any) -> set[str]:
    """The model's parameter names that belong to `module` (none for None)."""
    inside = {id(p) for p in module.parameters()} if module is not None else set()
    return {name for name, p in model.named_parameters() if id(p) in inside}


class _KeptLayerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to load weights" not in record.getMessage()


@contextlib.contextmanager
def _quiet_kept_layers() -> Any:
    """vLLM's reload warns once per layer that received no tensor and keeps its weights (its
    fallback): under a push that leaves the frozen tower out, that is every tower layer, by design."""
    logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    quiet = _KeptLayerFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _recording_loads(model: Any, reload: Any) -> set[str]:
    """Run `reload()` (vLLM's in-place reload) and return the parameter names the model's
    `load_weights` reports it filled: the reload discards that set, so it is read on the way."""
    load = model.load_weights
    loaded: set[str] = set()

    def recording(weights: Any) -> Any:
        names = load(weights)
        loaded.update(names or ())
        return names

    model.load_weights = recording
    try:
        reload()
    finally:
        del model.load_weights  # back to the class's method
    return loaded
