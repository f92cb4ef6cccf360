"""Advantage estimators: per-response scores -> per-token advantages.

Every entry has the signature

    fn(scores (B,), group_ids (B,) long, response_mask (B, T), **options) -> advantages (B, T)

`scores` is the total reward of each response; responses sampled for the same prompt share a group
id (ids are arbitrary integers, not necessarily contiguous or sorted). The result is the
per-response advantage broadcast over that response's tokens and multiplied by the mask, so padding
is exactly 0. Options are keyword-only; pick an estimator by name with `ADVANTAGES.get(name)`.

Group statistics are computed with `torch.unique(return_inverse=True)` plus `index_add_` /
`scatter_reduce`, so there is no Python loop over groups and the functions run unchanged on GPU.

An estimator that reads more than the scores declares it with `pivotal.algos.credit.requires`
(names from ADVANTAGE_INPUTS), and the step passes it as keywords:
    "policy_stats"        logprobs (B, T) and sum_sq_probs (B, T): the old policy's log-prob of
                          each sampled token and sum_v pi(v)^2 at its position, from one no-grad
                          pass (`pivotal.logprobs.policy_token_stats`)
    "rollout_is_weights"  is_weights (B, T): the configured rollout correction's weights, or None
                          when it is off
    "correct"             correct (B,) bool: the task verifier's verdict on each response

An estimator that trains on a subset of the rows (PSR: the correct responses only) declares it with
`@trains_on(rule)`: `rule(**inputs, **options) -> (B,) bool`, True for the rows the update trains
on. The step removes the others from the batch before the update (`trained_rows`), so they leave
the loss and its denominators and cost no compute, as a batch subset does in the released code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pivotal.registry import Registry

# Sums a tensor over every data-parallel rank's batch (`pivotal.distributed.Runtime.sum`). An
# estimator with batch-level statistics takes it as its `all_ranks` keyword; the trainer passes it.
SumAcrossRanks = Callable[[Tensor], Tensor]

ADVANTAGES: Registry = Registry("advantage estimator")
register_advantage = ADVANTAGES.register
ADVANTAGE_INPUTS = ("policy_stats", "rollout_is_weights", "correct")


def advantage_inputs(fn: Callable, options: dict) -> frozenset[str]:
    """The inputs beyond the scores that estimator `fn` declares under `options`."""
    rule = getattr(fn, "requirements", None)
    names = frozenset(rule(**options)) if rule is not None else frozenset()
    unknown = sorted(names - set(ADVANTAGE_INPUTS))
    if unknown:
        raise ValueError(f"advantage input(s) {unknown} unknown; known: {', '.join(ADVANTAGE_INPUTS)}")
    return names


def trains_on(rule: Callable[..., Tensor]) -> Callable[[Callable], Callable]:
    """Decorator: the estimator trains only on the rows `rule(**inputs, **options)` marks True."""

    def decorator(fn: Callable) -> Callable:
        fn.trained_rows = rule
        return fn

    return decorator


def trained_rows(fn: Callable, inputs: dict, options: dict) -> Tensor | None:
    """(B,) bool: the rows estimator `fn` trains on under `options`, or None for all of them."""
    rule = getattr(fn, "trained_rows", None)
    return None if rule is None else rule(**inputs, **options).bool()


# ----------------------------------------------------------------------------------------------
# Vectorised group statistics (shared with shaping.dynamic_sampling_mask)
# ----------------------------------------------------------------------------------------------

def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary ids (B,) to dense group indices 0..G-1 (B,) and return (inverse, G)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, uniq.numel()


def _as_float(scores: Tensor) -> Tensor:
    # Rewards may arrive as bool/int (e.g. "correct"); every statistic below needs floats.
    return scores if scores.is_floating_point() else scores.to(torch.float32)


def _group_sum(values: Tensor, inverse: Tensor, n: int) -> Tensor:
    """(G,) sum of `values` (B,) within each group."""
    return values.new_zeros(n).index_add_(0, inverse, values)


def group_count(inverse: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """(G,) number of responses in each group."""
    return torch.zeros(n, dtype=dtype, device=inverse.device).index_add_(
        0, inverse, torch.ones_like(inverse, dtype=dtype))


def group_agrees(scores: Tensor, group_ids: Tensor) -> Tensor:
    """(B,) bool: True where every response in the row's group has the same score.

    Tested as max == min rather than std == 0: the float mean of equal values can differ from them
    in the last bit (3 x 0.1 sums to 0.30000000000000004), which would leave a tiny non-zero std and
    a spurious ~1e-11 advantage. A group of one response always "agrees".
    """
    scores = _as_float(scores)
    inverse, n = group_index(group_ids)
    return _group_agrees(scores, inverse, n)[inverse]


def _group_agrees(scores: Tensor, inverse: Tensor, n: int) -> Tensor:
    """(G,) bool: max == min within each group."""
    gmax = scores.new_empty(n).scatter_reduce(0, inverse, scores, reduce="amax", include_self=False)
    gmin = scores.new_empty(n).scatter_reduce(0, inverse, scores, reduce="amin", include_self=False)
    return gmax == gmin


def _centered(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Scores minus group mean (B,), exactly 0 in agreeing groups; also (inverse, counts, G)."""
    inverse, n = group_index(group_ids)
    counts = group_count(inverse, n, scores.dtype)
    mean = _group_sum(scores, inverse, n) / counts
    centered = scores - mean[inverse]
    centered = torch.where(group_agrees(scores, group_ids), torch.zeros_like(centered), centered)
    return centered, inverse, counts, n


def _broadcast(per_response: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) -> (B, T), zero on padding."""
    return per_response[:, None] * response_mask.to(per_response.dtype)


def group_stats(scores: Tensor, group_ids: Tensor) -> dict[str, float]:
    """Logging helper: how much learning signal the groups carry.

    Returns python floats:
      num_groups          number of distinct group ids
      zero_variance_frac  fraction of groups whose scores all agree (size-1 groups included):
                          these get A = 0 under GRPO/RLOO and are what DAPO dynamic sampling drops
      mean_group_size     average responses per group
    """
    scores = _as_float(scores)
    inverse, n = group_index(group_ids)
    counts = group_count(inverse, n, scores.dtype)
    agrees = _group_agrees(scores, inverse, n)
    return {
        "num_groups": float(n),
        "zero_variance_frac": float(agrees.to(scores.dtype).mean()) if n else 0.0,
        "mean_group_size": float(counts.mean()) if n else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------

@register_advantage("grpo")
def grpo_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                   std_scale: str = "group", eps: float = 1e-6,
                   all_ranks: SumAcrossRanks | None = None) -> Tensor:
    """Group-relative advantage, GRPO (https://arxiv.org/abs/2402.03300).

    A_i = (score_i - mean_g) / (std + eps), with the scale chosen by `std_scale`:
      "group": unbiased std of the response's own group (GRPO, verl's default, eps 1e-6);
      "batch": unbiased std of all scores in the batch (Lite-PPO: group mean, batch std), which
               stops near-unanimous groups from being blown up by a tiny group std;
      "none":  no division (Dr.GRPO, https://arxiv.org/abs/2503.20783), which removes the
               question-difficulty bias that std normalisation introduces.

    With data parallelism each rank holds whole groups, so only "batch" reads other ranks' rows:
    `all_ranks` sums a tensor over every rank's batch (the trainer passes `Runtime.sum`); None is
    this batch alone.

    A group whose scores all agree gets A = 0 exactly (no signal; also what dynamic sampling drops).
    A group of one response gets A = 0: with no other sample there is no baseline, and the unbiased
    std of one element is nan, so its std is taken as 0 instead (0 / (0 + eps) = 0, never nan).

    scores (B,), group_ids (B,), response_mask (B, T) -> (B, T)
    """
    scores = _as_float(scores)
    centered, inverse, counts, n = _centered(scores, group_ids)
    if std_scale == "group":
        sq = _group_sum(centered**2, inverse, n)
        # Unbiased (n-1) variance; size-1 groups would divide by 0, so give them std 0.
        var = torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq))
        scale = var.sqrt()[inverse] + eps
    elif std_scale == "batch":
        if all_ranks is None:
            std = scores.std() if scores.numel() > 1 else scores.new_zeros(())
        else:
            std = _global_std(scores, all_ranks)
        scale = std + eps
    elif std_scale == "none":
        scale = scores.new_ones(())
    else:
        raise ValueError(f"std_scale must be 'group', 'batch' or 'none', got {std_scale!r}")
    return _broadcast(centered / scale, response_mask)


@register_advantage("dr_grpo")
def dr_grpo_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                      eps: float = 1e-6) -> Tensor:
    """Dr.GRPO (https://arxiv.org/abs/2503.20783): GRPO with no std scaling, A_i = score_i - mean_g.

    `eps` is accepted (and unused) so a config can switch between grpo and dr_grpo unchanged.
    Pair it with the "seq-mean-token-sum-norm" aggregation to remove the length bias as well.

    scores (B,), group_ids (B,), response_mask (B, T) -> (B, T)
    """
    return grpo_advantage(scores, group_ids, response_mask, std_scale="none", eps=eps)


@register_advantage("rloo")
def rloo_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out (https://arxiv.org/abs/2402.14740).

    A_i = score_i - mean_{j != i} score_j over the other responses of the same group. The baseline
    excludes the response itself, so it is independent of it and the estimator stays unbiased;
    it equals n/(n-1) * (score_i - mean_g). A group of one has no other sample: A = 0.

    scores (B,), group_ids (B,), response_mask (B, T) -> (B, T)
    """
    scores = _as_float(scores)
    centered, inverse, counts, _ = _centered(scores, group_ids)
    n = counts[inverse]
    # score_i - (sum - score_i)/(n-1) == (score_i - mean) * n/(n-1); written this way it inherits
    # the exact zero of agreeing groups from `centered`.
    adv = torch.where(n > 1, centered * n / (n - 1).clamp(min=1), torch.zeros_like(centered))
    return _broadcast(adv, response_mask)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                                    eps: float = 1e-8,
                                    all_ranks: SumAcrossRanks | None = None) -> Tensor:
    """REINFORCE++-baseline (https://arxiv.org/abs/2501.03262).

    1. subtract the group mean (the baseline; no per-group std, which is biased for small groups);
    2. whiten over the batch's valid tokens: mean and population (biased) variance are taken over
       every response token (so a long response weighs more, as in the paper's token-level batch
       normalisation), and A = (a - mean) / sqrt(max(var, eps)).

    Because step 2 re-centres over the whole batch, agreeing groups and size-1 groups end up with a
    small non-zero advantage (-mean / std) rather than 0: that is the method, not a bug. Padding is
    0 and does not enter the statistics; a batch with no valid token returns all zeros. With data
    parallelism the whitening is over every rank's tokens (`all_ranks`, as in `grpo_advantage`).

    scores (B,), group_ids (B,), response_mask (B, T) -> (B, T)
    """
    reduce = all_ranks if all_ranks is not None else (lambda t: t)
    scores = _as_float(scores)
    centered, _, _, _ = _centered(scores, group_ids)
    mask = response_mask.to(scores.dtype)
    tokens = _broadcast(centered, mask)
    n_tok, total = reduce(torch.stack([mask.sum(), tokens.sum()]))
    n_tok = n_tok.clamp(min=1)
    mean = total / n_tok
    var = reduce((((tokens - mean) * mask) ** 2).sum()) / n_tok
    return (tokens - mean) * var.clamp(min=eps).rsqrt() * mask


def _global_std(scores: Tensor, all_ranks: SumAcrossRanks) -> Tensor:
    """Unbiased std of the scores of every rank's batch (two passes: the mean, then the squares)."""
    n, total = all_ranks(torch.stack([scores.new_tensor(float(scores.numel())), scores.sum()]))
    if n <= 1:
        return scores.new_zeros(())
    squares = all_ranks(((scores - total / n) ** 2).sum())
    return (squares / (n - 1)).sqrt()


# Group-relative estimators: a group of one response has no baseline, so its advantage is 0
# (the config rejects rollout.group_size = 1 with these).
for _estimator in (grpo_advantage, dr_grpo_advantage, rloo_advantage, reinforce_pp_baseline_advantage):
    _estimator.group_relative = True
