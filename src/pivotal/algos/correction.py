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

`rollout_correction_weights` generalises it (`algo.rollout_correction`): the ratio per token or per
sequence, truncated into [low, high] or masked outside it (IcePop; TRL's sequence mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def logprob_mismatch(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |old - sampler| over the response tokens: the sampler/trainer gap."""
    diff = (old_logprobs - sampler_logprobs).detach().abs() * mask
    n = mask.sum().clamp(min=1)
    return {"sampler_logprob_diff": float(diff.sum() / n),
            "sampler_logprob_diff_max": float(diff.max()) if diff.numel() else 0.0}


# ----------------------------------------------------------------------------------------------
# Rollout correction: token or sequence ratio, truncated or masked (algo.rollout_correction)
# ----------------------------------------------------------------------------------------------

CORRECTION_LEVELS = ("token", "sequence")
CORRECTION_MODES = ("off", "truncate", "mask")


@dataclass(frozen=True)
class RolloutCorrection:
    """How the sampler/trainer importance ratio rho = pi_old / pi_sampler weights the loss.

    level "token":    rho_t per token.
    level "sequence": rho_i = prod_t rho_t of the whole response (the exact sequence-level weight),
                      the same for all its tokens.
    mode "truncate":  w = clamp(rho, low, high)                   (TIS: token, low 0, high C)
    mode "mask":      w = rho where low <= rho <= high, else 0    (edges kept)
                      token/mask is IcePop (Ling team 2025, https://arxiv.org/abs/2510.18855;
                      band [0.5, 5]); sequence/mask is TRL's default correction for vLLM rollouts.
    mode "off":       no weight.
    A masked token stays in the loss's token count (it is a zero weight, not dropped data).
    """

    level: str = "token"
    mode: str = "off"
    low: float = 0.0
    high: float = 2.0

    @property
    def active(self) -> bool:
        return self.mode != "off"


def _log_bound(value: float, like: torch.Tensor) -> torch.Tensor:
    # Compared in log space, in the log-ratio's dtype, so that a ratio exactly at a band edge
    # (old - sampler == log(edge)) counts as inside; log(0) = -inf is no lower bound.
    return torch.tensor(math.log(value) if value > 0 else -math.inf, dtype=like.dtype,
                        device=like.device)


def rollout_correction_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                               mask: torch.Tensor,
                               correction: RolloutCorrection) -> tuple[torch.Tensor, dict]:
    """Per-token weights (B, T) of `correction` (no gradient; 1 on padding) and their metrics.

    old_logprobs, sampler_logprobs, mask: (B, T). Metrics over the response tokens: rc_weight (mean
    weight), rc_token_frac (share of tokens truncated or masked), rc_seq_frac (share of responses
    with at least one such token; for level "sequence", the responses truncated or masked).
    """
    if correction.level not in CORRECTION_LEVELS or correction.mode not in CORRECTION_MODES:
        raise ValueError(f"rollout correction {correction}: level must be one of "
                         f"{CORRECTION_LEVELS} and mode one of {CORRECTION_MODES}")
    valid = mask.bool()
    log_rho = torch.where(valid, (old_logprobs - sampler_logprobs).detach(),
                          torch.zeros_like(old_logprobs))
    if correction.level == "sequence":
        log_rho = log_rho.sum(dim=1, keepdim=True).expand_as(log_rho)
    lo, hi = _log_bound(correction.low, log_rho), _log_bound(correction.high, log_rho)
    outside = (log_rho < lo) | (log_rho > hi)
    if correction.mode == "truncate":
        weights = torch.exp(log_rho.clamp(min=lo, max=hi))
    else:
        weights = torch.where(outside, torch.zeros_like(log_rho), torch.exp(log_rho.clamp(max=hi)))
    weights = torch.where(valid, weights, torch.ones_like(weights))
    touched = outside & valid
    n_tokens = valid.sum().clamp(min=1)
    has_tokens = valid.any(dim=1)
    metrics = {
        "rc_weight": float((weights * valid).sum() / n_tokens),
        "rc_token_frac": float(touched.sum() / n_tokens),
        "rc_seq_frac": float((touched.any(dim=1) & has_tokens).sum()
                             / has_tokens.sum().clamp(min=1)),
    }
    return weights, metrics
