"""OCC: Optimal Coefficient Calibration for multi-token-prediction (MTP) heads trained jointly in RL.

Paper: Wang et al. 2026, "Joint Training of Multi-Token Prediction in Reinforcement Learning via
Optimal Coefficient Calibration", https://arxiv.org/abs/2605.28184 (formula from the released code,
as ../shared/METHODS.md records it).

An MTP head k reads the trunk's hidden state and predicts the token k positions further ahead than
the main head. Trained with its own policy loss, the head's gradient also reaches the shared trunk;
the paper splits that effect on the RL objective into a first-order correlation with the main
policy's update and a second-order perturbation penalty, and shows that a fixed coefficient lets
the penalty win as the correlation decays. OCC scales head k's advantage by a coefficient that
tracks the optimum online from log-probabilities alone (no grad), with s = 0.1 and K heads:

    c_k = (s / K) * mean_t[ (mlp_k - olp)(lp - olp) / ((mlp_k - olp)^2 + 1e-8) ]
    loss = policy_loss(lp, olp, A) + sum_k policy_loss(mlp_k, olp, A * c_k)

where mlp_k is head k's log-prob of the response token, lp the main head's and olp the sampling
policy's, all of the same token. The mean runs over the tokens head k can score (response mask and
at least k earlier response tokens; see `pivotal.mtp`). Right after a rollout lp == olp exactly, so
c_k = 0 on the first mini-batch: the heads contribute once the policy has moved within the rollout
(several mini-batches per rollout, as in `configs/occ.yaml`).
"""

from __future__ import annotations

import torch

OCC_EPS = 1e-8


def occ_coefficients(head_logprobs: torch.Tensor, logprobs: torch.Tensor,
                     old_logprobs: torch.Tensor, head_mask: torch.Tensor,
                     scale: float = 0.1) -> torch.Tensor:
    """The K OCC coefficients c_k (no gradient).

    head_logprobs (K, B, T): mlp_k, head k's log-prob of each response token;
    logprobs (B, T): lp, the main head's; old_logprobs (B, T): olp, the sampler's;
    head_mask (K, B, T): 1 where head k scores the token. Returns (K,); a head that scores no
    token gets 0.
    """
    if head_logprobs.dim() != 3:
        raise ValueError(f"head_logprobs must be (K, B, T), got shape {tuple(head_logprobs.shape)}")
    with torch.no_grad():
        head_gap = head_logprobs.detach() - old_logprobs.detach()  # (K, B, T)
        main_gap = (logprobs.detach() - old_logprobs.detach()).unsqueeze(0)  # (1, B, T)
        per_token = head_gap * main_gap / (head_gap.square() + OCC_EPS)
        mask = head_mask.to(per_token.dtype)
        counts = mask.flatten(1).sum(dim=1)
        means = (per_token * mask).flatten(1).sum(dim=1) / counts.clamp(min=1)
        num_heads = head_logprobs.shape[0]
        return (scale / num_heads) * torch.where(counts > 0, means, torch.zeros_like(means))
