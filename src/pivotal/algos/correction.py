"""Corrections for the mismatch between the sampler's and the trainer's log-probs.

A separate inference engine (vLLM) computes the same policy with different kernels, so the
probability it sampled a token with, pi_sampler, differs slightly from the trainer's pi_old of the
same weights. PPO's ratio pi_theta / pi_old then no longer corrects for the distribution the data
came from. Truncated importance sampling (TIS) weights each token's loss by

    w_t = min(pi_old(y_t) / pi_sampler(y_t), C)

which is the missing importance weight, capped at C so that a few tokens the sampler found much
less likely than the trainer cannot blow up the gradient (a bias/variance trade-off).
Paper: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training",
https://fengyao.notion.site/off-policy-rl (C = 2 in their experiments).
"""

from __future__ import annotations

import math

import torch


def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """min(exp(old - sampler), cap), per token. (B, T), (B, T) -> (B, T); no gradient."""
    if cap < 1:
        raise ValueError(f"the TIS cap must be at least 1, got {cap}")
    log_ratio = (old_logprobs - sampler_logprobs).detach()
    return torch.exp(log_ratio.clamp(max=math.log(cap)))


def logprob_mismatch(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |old - sampler| over the response tokens: the sampler/trainer gap."""
    diff = (old_logprobs - sampler_logprobs).detach().abs() * mask
    n = mask.sum().clamp(min=1)
    return {"sampler_logprob_diff": float(diff.sum() / n),
            "sampler_logprob_diff_max": float(diff.max()) if diff.numel() else 0.0}
