"""Δlog p training-time reweighting, "On the Direction of RLVR Updates" (2026,
https://arxiv.org/abs/2603.22117), as the credit "dlogp"; checked against the released trainer
(Hesse73/RLVR-Directions, verl/recipe/logprl/logp_ray_trainer.py, `algorithm.reweight`).

The paper's finding: RLVR's changes concentrate on low-probability tokens, so weighting a token's
advantage up as its old probability p = pi_old(y_t) falls speeds learning. The released trainer
offers several weight shapes w (method), with constant c:

    reshape_reversed   1 + c - c p           the paper's; both released recipes (default)
    reshape            c p + 1 - c           the reverse: likely tokens weigh more (c = 1: w = p)
    normalize          1 / (1 + c - p)       the trainer's own default; c = 0: 1 / (1 - p)
    middle             c + (1 - p) p         peaks at p = 1/2
    ppl                1 - c log PPL         per response, log PPL = -mean_t log p_old
    ppl-norm           1 - c z               z = the response's log PPL standardised in its group
                                             (mean, population std + 1e-6, as the released code)
    ppl-norm-clamp     ppl-norm clamped to [0.8, 1.2]

and an advantage-sign mask (adv_mask): "positive" reweights only tokens with A > 0, "negative"
only A < 0, "none" all of them; the others keep weight 1. Recipes: c = 0.2 for Qwen2.5-Math-7B
(scripts/run_7B.sh, the result docs/methods.md quotes), c = 0.1 for Qwen3-8B-Base (run_8B.sh);
the default c here is 0.1 and configs/dlogp.yaml takes 0.2.

The ppl-norm variants need every response of a group; the update calls a credit once per
micro-batch, which may hold part of a group, so those weights are computed once per rollout batch
(`@rollout_statistics`, each rank's batch holds whole groups) and read back by the credit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.advantages import _group_sum, group_count, group_index
from pivotal.algos.credit import register_credit, requires, rollout_statistics
from pivotal.batch import RolloutBatch

METHODS = ("reshape_reversed", "reshape", "normalize", "middle", "ppl", "ppl-norm",
           "ppl-norm-clamp")
ADV_MASKS = ("none", "positive", "negative")
PPL_NORM_CLAMP = (0.8, 1.2)
SEQUENCE_WEIGHT_KEY = "dlogp_sequence_weight"   # batch.extras: (B,) ppl-norm weights per response


def log_perplexity(old_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """(B,) -mean_t log p_old over each response's tokens (0 for an empty response)."""
    mask = response_mask.to(old_logprobs.dtype)
    return -(old_logprobs * mask).sum(1) / mask.sum(1).clamp(min=1)


def ppl_norm_weights(batch: RolloutBatch, *, c: float = 0.1, method: str = "reshape_reversed",
                     **_) -> dict[str, Tensor]:
    """{SEQUENCE_WEIGHT_KEY: (B,)} the ppl-norm weight 1 - c z of each response, z its log PPL
    standardised within its group; {} for the other methods, which need no group statistics."""
    if method not in ("ppl-norm", "ppl-norm-clamp"):
        return {}
    with torch.no_grad():
        log_ppl = log_perplexity(batch.old_logprobs.detach().double(), batch.response_mask)
        inverse, n = group_index(batch.group_ids)
        counts = group_count(inverse, n, log_ppl.dtype)
        mean = _group_sum(log_ppl, inverse, n) / counts
        var = _group_sum((log_ppl - mean[inverse]) ** 2, inverse, n) / counts  # population, np.std
        z = (log_ppl - mean[inverse]) / (var.sqrt()[inverse] + 1e-6)
        w = 1.0 - c * z
        if method == "ppl-norm-clamp":
            w = w.clamp(*PPL_NORM_CLAMP)
        return {SEQUENCE_WEIGHT_KEY: w.to(batch.old_logprobs.dtype)}


@register_credit("dlogp")
@requires(())
@rollout_statistics(ppl_norm_weights)
def dlogp_credit(batch: RolloutBatch, logprobs: Tensor | None, *, c: float = 0.1,
                 method: str = "reshape_reversed", adv_mask: str = "none") -> Tensor:
    """The Δlog p weight w (module docstring) of each response token, from batch.old_logprobs.

    Returns (B, T) with no gradient, 1 on padding and where adv_mask leaves a token out;
    `logprobs` is not used. Reads batch.advantages only with adv_mask != "none".
    """
    if method not in METHODS:
        raise ValueError(f"dlogp: method must be one of {', '.join(METHODS)}, got {method!r}")
    if adv_mask not in ADV_MASKS:
        raise ValueError(f"dlogp: adv_mask must be one of {', '.join(ADV_MASKS)}, got {adv_mask!r}")
    if method == "normalize" and c < 0:
        raise ValueError(f"dlogp: method normalize needs c >= 0 (1 / (1 + c - p)), got {c}")
    with torch.no_grad():
        valid = batch.response_mask.bool()
        olp = batch.old_logprobs.detach()
        p = torch.exp(olp)
        if method == "reshape_reversed":
            w = 1.0 + c - c * p
        elif method == "reshape":
            w = c * p + 1.0 - c
        elif method == "normalize":
            w = 1.0 / (1.0 + c - p)
        elif method == "middle":
            w = c + (1.0 - p) * p
        elif method == "ppl":
            w = (1.0 - c * log_perplexity(olp, batch.response_mask))[:, None].expand_as(olp)
        else:  # ppl-norm(-clamp): whole-group statistics, computed once per rollout batch
            seq = batch.extras.get(SEQUENCE_WEIGHT_KEY)
            if seq is None:  # called on a whole batch directly (tests, the config's dry run)
                seq = ppl_norm_weights(batch, c=c, method=method)[SEQUENCE_WEIGHT_KEY]
            w = seq.to(olp.dtype)[:, None].expand_as(olp)
        if adv_mask != "none":
            if batch.advantages is None:
                raise ValueError("dlogp: adv_mask needs batch.advantages (their sign)")
            adv = batch.advantages.detach()
            chosen = adv > 0 if adv_mask == "positive" else adv < 0
            w = torch.where(chosen, w, torch.ones_like(w))
        return torch.where(valid, w, torch.ones_like(w))
