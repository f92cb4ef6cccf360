"""The 80/20 high-entropy token mask: policy gradient on the forking tokens only.

Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
Reinforcement Learning for LLM Reasoning", https://arxiv.org/abs/2506.01939 (Eq. 6): only the
top-rho share of response tokens by the policy's entropy H_t keep their policy-gradient term,

    multiplier_t = 1[H_t >= tau_rho]      tau_rho = the (1 - rho) quantile of H over the tokens

with rho = 0.2 the paper's recommendation (its gains grow with model size: comparable to full
updates at 8B, +7.7 / +11.0 AIME'24 / '25 at 32B). As a credit multiplier the mask zeroes the
masked tokens' advantages, so their policy (and auxiliary) terms vanish while the aggregation's
token counts, the KL term and an entropy bonus are untouched: the paper's 1 / sum |o_i|
normaliser still counts every token.

Which tokens the quantile runs over [ours, documented]: the current policy's entropies (the
temperature-scaled distribution, computed in the same forward as the log-probs, so the mask costs
nothing), over the valid tokens of the micro-batch on this rank. The paper's "batch" is the
mini-batch; set optim.micro_batch_size to the mini-batch's rows for exactly that. TRL's
`top_entropy_quantile` also thresholds each forward's micro-batch (gathered over processes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.credit import register_credit, requires
from pivotal.batch import RolloutBatch


@register_credit("high_entropy")
@requires({"entropy"})
def high_entropy_credit(batch: RolloutBatch, logprobs: Tensor | None, *, rho: float = 0.2,
                        entropy: Tensor | None = None) -> Tensor:
    """1 on the top-`rho` share of valid tokens by entropy, 0 on the others, 1 on padding.

    entropy: (B, T) the current policy's per-position entropy (the trainer passes it; detached).
    Ties at the threshold are kept, so at least one token survives; rho = 1 keeps every token.
    Returns the multiplier (B, T).
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if entropy is None:
        raise ValueError("high_entropy needs the policy's entropies (the trainer passes them as "
                         "`entropy=`; call it with entropy=(B, T) outside the trainer)")
    valid = batch.response_mask.bool()
    ones = torch.ones_like(entropy, dtype=torch.float32)
    if not valid.any():
        return ones
    with torch.no_grad():
        h = entropy.detach().float()
        threshold = torch.quantile(h[valid], 1.0 - rho)
        keep = h >= threshold
    return torch.where(valid & ~keep, torch.zeros_like(ones), ones)
