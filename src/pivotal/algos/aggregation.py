"""Loss aggregation: per-token losses (B, T) -> one scalar. Who divides by what matters.

Modes (docs/algorithms.md, "Aggregation"):
  token-mean               sum(L*m) / N_tokens                  DAPO; the default
  seq-mean-token-mean      sum_i [sum_t L*m / |y_i|] / N_seqs   original GRPO; GSPO
  seq-mean-token-sum       sum_i [sum_t L*m] / N_seqs
  seq-mean-token-sum-norm  sum(L*m) / (N_seqs * L_max)          Dr.GRPO; L_max a constant

Micro-batching: when a mini-batch is split into micro-batches for gradient accumulation, pass the
WHOLE mini-batch's `total_tokens` / `total_seqs` to every micro-batch call. Every mode is then a
sum of per-row terms over a fixed denominator, so the micro-batch losses add up to exactly the
mini-batch loss, and the update does not change with the micro-batch size. Left as None they
default to the micro-batch's own counts (right when there is a single micro-batch).

A row with no valid token (all padding) counts as a sequence whose loss is 0: the sequence count is
the number of rows, never a function of the content, so the trainer's total_seqs (mini-batch rows)
matches and the split equality holds. It adds nothing to the numerator and never produces nan.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from pivotal.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation")
register_aggregation = AGGREGATIONS.register


def _masked(per_token_loss: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    mask = response_mask.to(per_token_loss.dtype)
    return per_token_loss * mask, mask


def _seqs(per_token_loss: Tensor, total_seqs: int | None) -> float:
    n = per_token_loss.shape[0] if total_seqs is None else total_seqs
    return max(float(n), 1.0)


@register_aggregation("token-mean")
def token_mean(per_token_loss: Tensor, response_mask: Tensor, *, total_tokens: float | None = None,
               total_seqs: int | None = None, max_len: int | None = None) -> Tensor:
    """sum(L*m) / total_tokens (default: this batch's valid-token count). (B, T) -> scalar."""
    loss, mask = _masked(per_token_loss, response_mask)
    denom = mask.sum() if total_tokens is None else loss.new_tensor(float(total_tokens))
    return loss.sum() / denom.clamp(min=1)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token_loss: Tensor, response_mask: Tensor, *,
                        total_tokens: float | None = None, total_seqs: int | None = None,
                        max_len: int | None = None) -> Tensor:
    """Mean over sequences of each sequence's token mean. (B, T) -> scalar."""
    loss, mask = _masked(per_token_loss, response_mask)
    per_seq = loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)   # all-padding row -> 0
    return per_seq.sum() / _seqs(per_token_loss, total_seqs)


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(per_token_loss: Tensor, response_mask: Tensor, *,
                       total_tokens: float | None = None, total_seqs: int | None = None,
                       max_len: int | None = None) -> Tensor:
    """Mean over sequences of each sequence's token sum. (B, T) -> scalar."""
    loss, _ = _masked(per_token_loss, response_mask)
    return loss.sum() / _seqs(per_token_loss, total_seqs)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token_loss: Tensor, response_mask: Tensor, *,
                            total_tokens: float | None = None, total_seqs: int | None = None,
                            max_len: int | None = None) -> Tensor:
    """sum(L*m) / (total_seqs * max_len), Dr.GRPO (https://arxiv.org/abs/2503.20783).

    max_len is a constant (e.g. max_new_tokens), not the batch's longest response: a constant
    denominator is what removes the length bias. Required. (B, T) -> scalar.
    """
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm needs max_len (the constant L_max, "
                         "e.g. max_new_tokens)")
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    loss, _ = _masked(per_token_loss, response_mask)
    return loss.sum() / (_seqs(per_token_loss, total_seqs) * float(max_len))


def aggregate_loss(per_token_loss: Tensor, response_mask: Tensor, mode: str = "token-mean", *,
                   total_tokens: float | None = None, total_seqs: int | None = None,
                   max_len: int | None = None) -> Tensor:
    """Reduce per_token_loss (B, T) over response_mask (B, T) with the named mode -> scalar.

    total_tokens / total_seqs: the whole mini-batch's counts when this is one micro-batch of it.
    max_len: the constant L_max, needed by "seq-mean-token-sum-norm" only.
    """
    fn: Callable[..., Tensor] = AGGREGATIONS.get(mode)
    return fn(per_token_loss, response_mask, total_tokens=total_tokens, total_seqs=total_seqs,
              max_len=max_len)
