"""Per-token log-probs and entropies straight from the final hidden states, a chunk of tokens at a time.

    logprobs, entropy = head_logprobs(hidden [N, H], weight [V, H], bias, targets [N], ...)

The textbook path runs `lm_head` over all N response tokens, keeps the [N, V] logits for the
backward, and makes float32 copies for log_softmax and the entropy: at N = 8,192 and V = 151,936
each of those tensors is 5 GB. Here the vocabulary projection, logsumexp, the target's logit and
the entropy are computed `chunk_tokens` rows at a time; only the hidden states, the targets and
two floats per token are saved, and the backward recomputes each chunk's logits. Peak extra
memory is a few chunk x V float32 tensors, whatever N is.

`HeadRequest` is how the model's own forward calls this: while the request is active, the
model's output embedding (`lm_head`) returns [1, N, 2] = (log-prob, entropy) of the requested
rows instead of logits. It runs inside the root module's forward, so under FSDP2 the head's
weight is the gathered one and its gradient is reduced like any other; and one path serves the
policy, the reference model and SFT, in every layout.

Math (z = logits / T, lse = logsumexp(z), p = softmax(z), t the target):
    logp = z_t - lse;            d logp / dz_j = [j = t] - p_j
    H = -sum_j p_j log p_j;      dH / dz_j = -p_j (log p_j + H)
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_TOKENS = 256


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        inv_temperature: float,
        chunk_tokens: int,
        with_entropy: bool,
        banned: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        count = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # float64 stays (gradcheck)
        logprobs = hidden.new_empty(count, dtype=dtype)  # [N]
        lse = hidden.new_empty(count, dtype=dtype)  # [N]
        entropy = hidden.new_zeros(count, dtype=dtype)  # [N]
        for start in range(0, count, chunk_tokens):
            rows = slice(start, min(start + chunk_tokens, count))
            z = _scaled_logits(hidden[rows], weight, bias, inv_temperature, banned)  # [n, V] float32
            lse[rows] = torch.logsumexp(z, dim=-1)
            logprobs[rows] = z.gather(-1, targets[rows, None])[:, 0] - lse[rows]
            if with_entropy:
                probs = z.sub_(lse[rows, None]).exp_()  # [n, V]
                # xlogy gives 0 for p = 0 (a -inf logit) where p * log p would give NaN.
                entropy[rows] = -torch.xlogy(probs, probs).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy, banned)
        ctx.inv_temperature, ctx.chunk_tokens, ctx.with_entropy = inv_temperature, chunk_tokens, with_entropy
        return logprobs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_logprobs: Tensor, grad_entropy: Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, targets, lse, entropy, banned = ctx.saved_tensors
        scale = ctx.inv_temperature
        grad_hidden = torch.empty_like(hidden)  # [N, H]
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None  # [V, H]
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        count = hidden.shape[0]
        for start in range(0, count, ctx.chunk_tokens):
            rows = slice(start, min(start + ctx.chunk_tokens, count))
            probs = (
                _scaled_logits(hidden[rows], weight, bias, scale, banned).sub_(lse[rows, None]).exp_()
            )  # [n, V]
            g_lp = grad_logprobs[rows, None]  # [n, 1]
            # dL/dz = g_lp * (onehot - p) - g_h * (p log p + p H), then dz/dlogits = 1 / T
            if ctx.with_entropy:
                grad_z = torch.xlogy(probs, probs).addcmul_(probs, entropy[rows, None])
                grad_z.mul_(-grad_entropy[rows, None]).addcmul_(probs, g_lp, value=-1.0)
            else:
                grad_z = probs.mul_(-g_lp)
            grad_z = grad_z.scatter_add_(-1, targets[rows, None], g_lp).mul_(scale).to(weight.dtype)
            grad_hidden[rows] = grad_z @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_z.T, hidden[rows])
            if grad_bias is not None:
                grad_bias.add_(grad_z.sum(0))
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def _scaled_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float, banned: Tensor | None
) -> Tensor:
    logits = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).mul_(scale)
    return logits if banned is None else logits.index_fill_(-1, banned, float("-inf"))


def head_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    with_entropy: bool = False,
    banned_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(log p(target), entropy) per token, [N] each, of softmax((hidden @ weight.T + bias) / T),
    computed in float32 (float64 inputs stay float64).

    hidden [N, H], weight [V, H], bias [V] or None, targets int [N]. The entropy is 0 unless
    asked for. `banned_ids` (long [K]) are left out of the distribution, as the rollout engine
    leaves out the tokens it never samples (image/video pads): its log-probs are then those of the
    distribution actually sampled from. Differentiable in hidden, weight and bias; nothing of size
    N x V is kept.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be [N, H] and targets [N], got {tuple(hidden.shape)}, {tuple(targets.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    banned = None if banned_ids is None or not len(banned_ids) else banned_ids.to(hidden.device).long()
    return _ChunkedHead.apply(
        hidden, weight, bias, targets.long(), 1.0 / temperature, chunk_tokens, with_entropy, banned
    )


@dataclass(frozen=True)
class HeadRequest:
    """Which rows of the model's final hidden states [B, K, H] to score, and how.

    batch_rows, columns: [N] long, the (row, position) of each scored token in the hidden states
    the head receives (the model's `logits_to_keep` slice). targets: [N] long. banned_ids: [K]
    long, token ids left out of the distribution (None: none).
    """

    batch_rows: Tensor
    columns: Tensor
    targets: Tensor
    temperature: float
    chunk_tokens: int
    with_entropy: bool
    banned_ids: Tensor | None = None


@contextmanager
def scoring_head(model: nn.Module, request: HeadRequest) -> Iterator[None]:
    """While active, `model`'s output embedding returns [1, N, 2] (log-prob, entropy) for the
    request's rows instead of logits; the model's forward returns it as `.logits`."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the output embedding is a {type(head).__name__}, not an nn.Linear")

    def score(self: nn.Linear, hidden: Tensor) -> Tensor:
        rows = hidden[request.batch_rows, request.columns]  # [N, H]
        logprobs, entropy = head_logprobs(
            rows,
            self.weight,
            self.bias,
            request.targets,
            temperature=request.temperature,
            chunk_tokens=request.chunk_tokens,
            with_entropy=request.with_entropy,
            banned_ids=request.banned_ids,
        )
        return torch.stack([logprobs, entropy], dim=-1)[None]  # [1, N, 2]

    head.forward = types.MethodType(score, head)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
