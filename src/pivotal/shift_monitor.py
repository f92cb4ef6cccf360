"""Live shift monitoring: how sparse is the change from the initial policy, step by step.

"Sparse but Critical" and "On the Direction of RLVR Updates" (../shared/METHODS.md) find that RLVR
changes the policy at few token positions. This monitor tracks that during training, cheaply: on a
few of each step's sampled responses it compares the sampling policy's log-prob of every sampled
token with the initial policy's,

    dlogp_t = log pi_current(y_t | prefix) - log pi_initial(y_t | prefix)

and logs the fraction of tokens with |dlogp_t| above each threshold (`shift_frac_<tau>`) and the
mean |dlogp_t| (`shift_mean_abs_dlogp`). The current policy's log-probs are the ones the sampler
recorded, so the cost is one no-grad forward of the initial model over `rows` responses (none at
all when the frozen reference is the initial policy and its log-probs are already computed for
the KL term or a credit method). `benchmarks/shift_monitor_overhead.py` measures it.

Simplification: the signed per-token Δlog p of the sampled token is the measure, not the full
vocabulary divergence of `pivotal analyze` (that needs the current model's logits too).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_metrics(dlogp: Tensor, mask: Tensor, thresholds: list[float]) -> dict[str, float]:
    """Sparsity of a per-token change.

    dlogp: (B, T) log pi_current - log pi_initial of each sampled token; mask: (B, T), 1 on
    response tokens. Returns {"shift_mean_abs_dlogp": mean |dlogp|, "shift_frac_<tau>": fraction
    of response tokens with |dlogp| > tau for each tau}, all over the masked tokens.
    """
    valid = mask.bool()
    n = int(valid.sum())
    abs_dlogp = dlogp.detach().abs()[valid]
    out = {"shift_mean_abs_dlogp": abs_dlogp.mean().item() if n else 0.0}
    for tau in thresholds:
        out[f"shift_frac_{tau:g}"] = (abs_dlogp > tau).float().mean().item() if n else 0.0
    return out


def monitored_rows(batch_size: int, rows: int) -> Tensor:
    """Indices of `rows` responses spread evenly over the batch (every group, not just the
    first prompt's); all of them when rows is 0 or at least the batch size. (rows,) long."""
    if rows <= 0 or rows >= batch_size:
        return torch.arange(batch_size)
    return torch.linspace(0, batch_size - 1, rows).round().long().unique()
