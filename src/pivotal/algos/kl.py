"""KL-to-reference estimators (http://joschu.net/blog/kl-approx.html).

Each estimates KL(pi_theta || pi_ref) per token from a token sampled by the policy:

    fn(logprobs (B, T), ref_logprobs (B, T)) -> (B, T)   (unmasked; see kl_per_token)

  k1 = lp - rlp                       unbiased, high variance, can be negative per token
  k2 = 0.5 * (lp - rlp)^2             biased but low variance, >= 0
  k3 = exp(rlp - lp) - (rlp - lp) - 1 unbiased and >= 0 (GRPO's choice)

Used either as a loss term (coefficient beta; beta = 0 means no reference model is loaded at all)
or, via kl_reward_penalty, subtracted from the reward (k1 summed over the response).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
register_kl = KL_ESTIMATORS.register


@register_kl("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = lp - rlp. (B, T), (B, T) -> (B, T)"""
    return logprobs - ref_logprobs


@register_kl("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (lp - rlp)^2. (B, T), (B, T) -> (B, T)"""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@register_kl("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1 with d = rlp - lp. (B, T), (B, T) -> (B, T)

    d is clamped to [-20, 20] so exp cannot overflow, and the result to [-10, 10] so one token the
    reference finds very unlikely cannot dominate the loss (its gradient is then 0, deliberately).
    """
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor,
                 estimator: str = "k3") -> Tensor:
    """The named estimator, zero on padding. (B, T) x 3 -> (B, T)"""
    valid = response_mask.bool()
    kl = KL_ESTIMATORS.get(estimator)(logprobs, ref_logprobs)
    return torch.where(valid, kl, torch.zeros_like(kl))


def kl_reward_penalty(logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor, *,
                      coef: float = 1.0) -> Tensor:
    """Per-sequence KL penalty for the "KL in reward" option: coef * sum_t m * (lp - rlp).

    logprobs are the sampling policy's (old_logprobs of the rollout). Subtract the result from the
    rewards before computing advantages: rewards - kl_reward_penalty(...). k1 is used because its
    sum over the sampled response is an unbiased estimate of the sequence-level KL. Detached: a
    reward carries no gradient.

    (B, T), (B, T), (B, T) -> (B,)
    """
    k1 = kl_per_token(logprobs.detach(), ref_logprobs.detach(), response_mask, "k1")
    return coef * k1.sum(dim=1)
