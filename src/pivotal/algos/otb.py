"""The optimal token baseline (OTB): a per-token baseline weighted by the realised gradient energy.

Li, Xu, Li et al., "The Optimal Token Baseline: Variance Reduction for Long-Horizon LLM-RL",
arXiv 2602.07078 (verl: `algorithm.adv_estimator=optimal_token_baseline`, docs/algo/otb.md).

The classic minimum-variance baseline of a REINFORCE term G * grad log pi is
E[G ||grad||^2] / E[||grad||^2]. OTB takes it per token t over a prompt's group, with the squared
gradient norm of the response prefix y_<=t approximated from forward probabilities only (the
Logit-Gradient Proxy): the gradient of log pi(y_j) with respect to the logits is e_{y_j} - pi_j,
whose squared norm is 1 - 2 pi_j(y_j) + sum_v pi_j(v)^2. So, per response i and position t:

    W_t   = sum_{j <= t} (1 - 2 pi_j(y_j) + sum_v pi_j(v)^2)       realised energy   (B, T)
    B*_t  = sum_i G_t W_t / (sum_i W_t + eps)    over the group's responses valid at t
    A_t   = (G_t - B*_t) * mask_t

G_t, the reward-to-go, is the response's reward at every position (outcome rewards). pi is the
old policy's temperature-scaled distribution (`pivotal.logprobs.policy_token_stats`: sum pi^2 =
exp(logsumexp(2 z) - 2 logsumexp(z)), no (B, T, V) tensor kept). With an active rollout
correction the weights are rescaled by the squared importance weights, W_t * w_t^2, as verl does.

Groups are whole on every rank (a rank samples whole groups), so nothing is reduced across ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.advantages import _as_float, group_index, register_advantage
from pivotal.algos.credit import requires


def realised_energy(logprobs: Tensor, sum_sq_probs: Tensor, response_mask: Tensor) -> Tensor:
    """(B, T) W_t: the running sum over the response of 1 - 2 pi(y_j) + sum_v pi_j(v)^2.

    logprobs: log pi(y_j) of the sampled tokens (B, T); sum_sq_probs: sum_v pi_j(v)^2 (B, T);
    both read only where response_mask (B, T) is 1. W is 0 on padding."""
    mask = response_mask.to(logprobs.dtype)
    step = (1.0 - 2.0 * torch.exp(logprobs) + sum_sq_probs).clamp(min=0.0) * mask
    return torch.cumsum(step, dim=1) * mask


@register_advantage("otb")
@requires({"policy_stats", "rollout_is_weights"})
def otb_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *, logprobs: Tensor,
                  sum_sq_probs: Tensor, is_weights: Tensor | None = None,
                  eps: float = 1e-8) -> Tensor:
    """Per-token advantages (B, T) against the group's energy-weighted token baseline.

    scores (B,), group_ids (B,), response_mask (B, T); logprobs and sum_sq_probs (B, T) of the old
    policy (the `policy_stats` input); is_weights (B, T) the rollout correction's weights or None.
    A group whose rewards agree gets advantages of size ~eps / W (zero to float precision)."""
    if not eps > 0:
        raise ValueError(f"otb: eps must be > 0, got {eps}")
    mask = response_mask.to(torch.float32)
    weights = realised_energy(logprobs.float(), sum_sq_probs.float(), mask)
    if is_weights is not None:
        weights = weights * is_weights.float() ** 2
    returns = _as_float(scores)[:, None] * mask                              # G_t (B, T)
    inverse, n_groups = group_index(group_ids)
    T = mask.shape[1]
    numerator = returns.new_zeros(n_groups, T).index_add_(0, inverse, returns * weights)
    denominator = returns.new_zeros(n_groups, T).index_add_(0, inverse, weights)
    baseline = numerator / (denominator + eps)                               # B*_t per group
    return (returns - baseline[inverse]) * mask


otb_advantage.group_relative = True  # a group of one is its own baseline: rollout.group_size >= 2
