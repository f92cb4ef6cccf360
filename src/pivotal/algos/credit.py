"""Per-token credit assignment: a multiplier on the advantages, chosen by name.

Every entry has the signature

    fn(batch: RolloutBatch, logprobs (B, T) | None, **options) -> multiplier (B, T)

`logprobs` are the current policy's log-probs on this mini-batch (detached), for methods that
compare the current and the old policy (e.g. FIPO); None when the trainer has not computed them.
The trainer computes A' = A * multiplier before the policy loss. "identity" (all ones) reproduces
the plain estimator; the seed methods (FIPO, delta-logp, ...) register here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pivotal.batch import RolloutBatch
from pivotal.registry import Registry

CREDITS: Registry = Registry("credit function")
register_credit = CREDITS.register


@register_credit("identity")
def identity_credit(batch: RolloutBatch, logprobs: Tensor | None) -> Tensor:
    """All ones (B, T): every token keeps its response's advantage."""
    return torch.ones(batch.response_mask.shape, dtype=torch.float32,
                      device=batch.response_mask.device)


def apply_credit(batch: RolloutBatch, logprobs: Tensor | None, name: str = "identity",
                 options: dict[str, Any] | None = None) -> Tensor:
    """batch.advantages (B, T) * the named credit multiplier (B, T) -> (B, T)."""
    if batch.advantages is None:
        raise ValueError("apply_credit needs batch.advantages; run the advantage estimator first")
    multiplier = CREDITS.get(name)(batch, logprobs, **(options or {}))
    return batch.advantages * multiplier.to(batch.advantages.dtype).detach()
