"""Live shift monitoring: how sparse is the change from the initial policy, step by step.

"Sparse but Critical" and "On the Direction of RLVR Updates" (docs/algorithms.md) find that RLVR
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

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .batch import RolloutBatch


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


class ShiftMonitor:
    """The per-step shift metrics against a frozen copy of the initial policy.

    initial_model: that copy; `reads_reference` says it is also the frozen reference, whose
    log-probs the batch then already carries (free). logprobs_fn(model, batch) -> (B, T) no-grad
    log-probs.
    """

    def __init__(self, initial_model, rows: int, thresholds: list[float], reads_reference: bool):
        self.initial_model, self.rows, self.thresholds = initial_model, rows, list(thresholds)
        self.reads_reference = reads_reference

    def __call__(self, batch: RolloutBatch, logprobs_fn: Callable) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.reads_reference and batch.ref_logprobs is not None:
            sub, initial_lp = batch, batch.ref_logprobs  # already computed: free
        else:
            sub = batch.select(monitored_rows(batch.size, self.rows))
            initial_lp = logprobs_fn(self.initial_model, sub)
        current = sub.sampler_logprobs if sub.sampler_logprobs is not None else sub.old_logprobs
        mask = sub.response_mask
        T = min(initial_lp.shape[1], mask.shape[1])
        dlogp = current[:, :T].cpu() - initial_lp[:, :T].cpu()
        out = shift_metrics(dlogp, mask[:, :T].cpu(), self.thresholds)
        out["time_shift_monitor"] = time.perf_counter() - t0
        return out


def build_shift_monitor(train_cfg, model, reference, reference_is_initial: bool, initial=None,
                        prepare_copy=None):
    """The monitor when `train.shift_monitor` is on (else None). It reuses the frozen reference
    when that is the initial policy and never moves; otherwise it reads `initial` (a free view of
    the initial policy: LoRA's base model) or keeps its own frozen copy of `model`, passed
    through `prepare_copy` (under FSDP2: sharded, `pivotal.frozen`)."""
    if not train_cfg.shift_monitor:
        return None
    if reference is not None and reference_is_initial:
        return ShiftMonitor(reference, train_cfg.shift_monitor_rows, train_cfg.shift_thresholds, True)
    if initial is None:
        initial = copy.deepcopy(model).eval().requires_grad_(False)
        if prepare_copy is not None:
            initial = prepare_copy(initial)
    return ShiftMonitor(initial, train_cfg.shift_monitor_rows, train_cfg.shift_thresholds, False)
