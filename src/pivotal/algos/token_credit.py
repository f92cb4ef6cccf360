"""Token-level credit assignment: the seed methods, registered in the credit registry.

Each entry is a credit function (see `pivotal.algos.credit`)

    fn(batch: RolloutBatch, logprobs (B, T) | None, **options) -> multiplier (B, T)

and the trainer trains on A' = A * multiplier. Every multiplier is computed without gradient and is
exactly 1 on padding (response_mask == 0). Options are keyword-only, defaults are the authors'.

Methods (docs/algorithms.md gives each formula and how sure we are of it):

- "fipo": FIPO, Future-KL Influenced Policy Optimization, https://arxiv.org/abs/2603.19835
  [released code]. Weights each token by exp of the discounted sum of the signed log-ratio
  log pi_theta - log pi_old over its future, clamped. Acts only once pi_theta has moved away from
  pi_old (several optimizer steps per rollout): on the first mini-batch after a rollout it is
  exactly 1 everywhere and FIPO is DAPO.
- "dlogp": Δlog p training-time reweighting, in `pivotal.algos.dlogp`.
- "owpo": OWPO, One-Way Policy Optimization, *as reconstructed from the abstract*
  [reconstruction]. The verifier sets the sign of the update, the reference only its size: tokens
  where the policy lags the reference in the direction the verifier wants are accelerated, the
  others keep weight 1 (never pulled back toward the reference).
- "divergence": divergence-weighted advantage, "Sparse but Critical" [reconstruction].
  A_t * (1 + alpha * D_t / normaliser), D_t the per-token divergence (JS by default) between the
  policy and a frozen base model, read from batch.divergence (see pivotal.divergence).

What a method reads beyond the always-present batch fields it declares with
`pivotal.algos.credit.requires`; the trainer resolves that once at start-up and gathers the inputs.
Each function still raises a clear ValueError when called without what it needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pivotal.algos.credit import (
    drops_rows,
    minibatch_statistics,
    register_credit,
    requires,
    shares_loss_options,
)
from pivotal.batch import RolloutBatch
from pivotal.divergence import DIVERGENCE_KINDS

LOG_RATIO_CLAMP = 20.0
FIPO_SAFETY_RANGE = (0.8, 1.0)   # f is clamped into this range on the safety branch (released code)
_SCAN_CHUNK = 128                # block size of the reverse discounted cumsum


def _valid(batch: RolloutBatch) -> Tensor:
    return batch.response_mask.bool()


def _require_logprobs(name: str, logprobs: Tensor | None) -> Tensor:
    if logprobs is None:
        raise ValueError(f"credit '{name}' needs the current policy's log-probs (the `logprobs` "
                         f"argument, (B, T)); the trainer passed None")
    return logprobs.detach()


def _require_advantages(name: str, batch: RolloutBatch) -> Tensor:
    if batch.advantages is None:
        raise ValueError(f"credit '{name}' needs batch.advantages (it uses their sign); run the "
                         f"advantage estimator first")
    return batch.advantages.detach()


def reverse_discounted_cumsum(x: Tensor, gamma: float, chunk: int = _SCAN_CHUNK) -> Tensor:
    """F_t = sum_{k >= t} gamma^(k-t) x_k along the last dim of x (B, T) -> (B, T).

    Blocked scan: inside a block of C tokens one (C, C) matmul with the upper-triangular matrix of
    discounts, across blocks a carry F_{end} * gamma^(end - t), walking the blocks from the end.
    Memory O(B*T + C^2) and time O(B*T*C), never a (B, T, T) tensor. Computed in float64.
    """
    B, T = x.shape
    xd = x.to(torch.float64)
    out = torch.empty_like(xd)
    if T == 0:
        return out.to(x.dtype)
    C = min(chunk, T)
    idx = torch.arange(C, device=x.device, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]                        # [k, t] -> k - t
    weights = torch.where(diff >= 0, gamma ** diff.clamp(min=0), torch.zeros_like(diff))
    carry = xd.new_zeros(B)                                   # F at the first token after the block
    for start in reversed(range(0, T, C)):
        end = min(start + C, T)
        n = end - start
        local = xd[:, start:end] @ weights[:n, :n]            # sum over k in the block, k >= t
        decay = gamma ** (n - idx[:n])                        # gamma^(end - t)
        out[:, start:end] = local + carry[:, None] * decay
        carry = out[:, start]
    return out.to(x.dtype)


def _dual_clipped(batch: RolloutBatch, lp: Tensor, dual_clip_c: float) -> Tensor:
    """(B, T) bool: negative-advantage response tokens whose ratio exp(clamp(lp - olp)) passes c,
    the tokens the dual clip bounds (the released code tests the same on its dual-clip loss)."""
    d = (lp - batch.old_logprobs.to(lp.dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return _valid(batch) & (batch.advantages < 0) & (torch.exp(d) > dual_clip_c)


def fipo_dropped_rows(batch: RolloutBatch, logprobs: Tensor, *, dual_clip_c: float | None = 10.0,
                      **_) -> Tensor:
    """(B,) bool: the responses FIPO leaves out of the loss and its denominator, those with more than
    one dual-clipped negative token (released loss: `seq_has_low_clip`). On the old policy every
    ratio is 1 < c, so it drops nothing right after a rollout."""
    with torch.no_grad():
        lp = _require_logprobs("fipo", logprobs)
        _require_advantages("fipo", batch)
        return _dual_clipped(batch, lp, dual_clip_c).sum(dim=1) > 1


@register_credit("fipo")
@requires({"logprobs"})
@drops_rows(fipo_dropped_rows, active=lambda drop_multi_dual_clipped=True, dual_clip_c=10.0, **_:
            bool(drop_multi_dual_clipped) and dual_clip_c is not None)
@shares_loss_options({"dual_clip_c": "dual_clip"})
def fipo_credit(batch: RolloutBatch, logprobs: Tensor | None, *, tau: float = 32.0,
                f_low: float = 0.0, f_high: float = 0.2, safety: float | None = 10.0,
                dual_clip_c: float | None = 10.0,
                drop_multi_dual_clipped: bool = True) -> Tensor:
    """FIPO future-KL influence weight (https://arxiv.org/abs/2603.19835); checked against the
    released loss (Henrymachiyu/FIPO, verl/trainer/ppo/core_algos.py, `future_kl`).

        d     = clamp(lp - olp, -20, 20)                 lp `logprobs`, olp batch.old_logprobs
        keep  = d <= log(dual_clip_c)                    IS filter: tokens past the dual-clip ratio
        x     = d * m * keep                             are left out of the sum
        gamma = 2 ** (-1 / tau)                          tau = half-life in tokens
        F_t   = sum_{k >= t} gamma^(k-t) x_k             reverse discounted cumsum, includes k = t
        f     = clamp(exp(F), 1 - f_low, 1 + f_high)
        f     = clamp(f, 0.8, 1.0) where A < 0 and r = exp(d) > safety

    Defaults are the 32B recipe: tau 32, f in [1.0, 1.2], safety 10. 7B recipe: f_low=0.2,
    safety=3.0. Pair with ppo_clip, clip 0.2/0.28, token-mean aggregation.

    dual_clip_c is the released code's one `clip_ratio_c`: the IS filter here and the loss's dual
    clip. It is taken from the loss (`algo.loss_options.dual_clip`, 10 in the recipe) and need not
    be set; a different value is refused. None (the loss's dual clip off) turns the filter off.
    safety=None turns the safety clamp off.

    drop_multi_dual_clipped (default on, as the released loss, which has no switch): a response
    with more than one dual-clipped negative token (A < 0 and r > dual_clip_c) leaves the loss and
    the token-mean denominator (`fipo_dropped_rows`, applied by the update before its gradient
    passes, which costs one no-grad forward of each mini-batch after the first of a rollout).
    Here the multiplier of such a row is its f like any other; its token weights are 0.

    Returns f (B, T) with no gradient, 1 on padding. Needs `logprobs` and batch.advantages.
    """
    lp = _require_logprobs("fipo", logprobs)
    adv = _require_advantages("fipo", batch)
    if tau <= 0:
        raise ValueError(f"fipo: tau (half-life in tokens) must be > 0, got {tau}")
    if not 0.0 <= f_low <= 1.0 or f_high < 0.0:
        raise ValueError(f"fipo: need 0 <= f_low <= 1 and f_high >= 0, got {f_low}, {f_high}")
    if dual_clip_c is not None and dual_clip_c <= 0:
        raise ValueError(f"fipo: dual_clip_c must be > 0, got {dual_clip_c}")

    with torch.no_grad():
        valid = _valid(batch)
        # where() rather than * mask: garbage (inf/nan) log-probs on padding must not leak through
        d = torch.where(valid, lp - batch.old_logprobs.to(lp.dtype), torch.zeros_like(lp))
        d = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        x = d
        if dual_clip_c is not None:
            x = torch.where(d <= math.log(dual_clip_c), d, torch.zeros_like(d))
        gamma = 2.0 ** (-1.0 / tau)
        future = reverse_discounted_cumsum(x, gamma)
        # exp may overflow to inf (F > ~88 in float32); clamp maps inf to 1 + f_high, never nan
        f = torch.exp(future).clamp(1.0 - f_low, 1.0 + f_high)
        neg = adv < 0
        if safety is not None:
            lo, hi = FIPO_SAFETY_RANGE
            f = torch.where(neg & (torch.exp(d) > safety), f.clamp(lo, hi), f)
        return torch.where(valid, f, torch.ones_like(f))


@register_credit("owpo")
@requires({"logprobs", "ref_logprobs"})
def owpo_credit(batch: RolloutBatch, logprobs: Tensor | None, *, lam: float = 1.0,
                cap: float | None = 1.0) -> Tensor:
    """OWPO, One-Way Policy Optimization, as reconstructed from the abstract [reconstruction].

        delta = rlp - lp                               rlp batch.ref_logprobs, lp current log-probs
        g     = sign(A) * delta
        multiplier = 1 + lam * min(relu(g), cap)   where g > 0   (policy lags the reference in the
                   = 1                             elsewhere      direction the verifier wants)

    The reference only scales the step, never sets its direction, and a token already ahead of
    the reference keeps weight 1 (gain locking). cap=None leaves the boost unbounded. A = 0 gives 1.

    The ratchet (replace the reference with the current policy every K steps or when held-out
    accuracy improves) is the trainer's `algo.reference_ratchet_*`. A KL term (algo.kl_beta > 0)
    pulls toward the reference, which is what OWPO's gain locking is meant to avoid; keep it small.

    Returns (B, T) with no gradient, 1 on padding. Needs `logprobs`, batch.ref_logprobs and
    batch.advantages.
    """
    if batch.ref_logprobs is None:
        raise ValueError("credit 'owpo' needs batch.ref_logprobs, the log-probs of a frozen "
                         "reference model (model.reference)")
    lp = _require_logprobs("owpo", logprobs)
    adv = _require_advantages("owpo", batch)
    if cap is not None and cap < 0:
        raise ValueError(f"owpo: cap must be >= 0 or None, got {cap}")
    with torch.no_grad():
        valid = _valid(batch)
        delta = torch.where(valid, batch.ref_logprobs.detach().to(lp.dtype) - lp,
                            torch.zeros_like(lp))
        g = torch.sign(adv).to(lp.dtype) * delta
        boost = torch.relu(g)
        if cap is not None:
            boost = boost.clamp(max=cap)
        w = torch.where(g > 0, 1.0 + lam * boost, torch.ones_like(boost))
        return torch.where(valid, w, torch.ones_like(w))


DIVERGENCE_NORMALISERS = ("mean", "max", "none")


def _clean_divergence(batch: RolloutBatch) -> Tensor:
    """batch.divergence (B, T') checked, cut to the batch's T columns, zero on padding."""
    mask = batch.response_mask
    B, T = mask.shape
    if batch.divergence is None:
        raise ValueError("credit 'divergence' needs per-token divergences against the reference "
                         "in batch.divergence ((B, T) float); the trainer computes them "
                         "(pivotal.divergence.response_divergences) because the credit requires "
                         "'divergence:<kind>'")
    D = torch.as_tensor(batch.divergence)
    if D.dim() != 2 or D.shape[0] != B or D.shape[1] < T:
        raise ValueError(f"divergence: batch.divergence must be (B, T') with B = {B} and "
                         f"T' >= {T}, got {tuple(D.shape)}")
    dtype = D.dtype if D.is_floating_point() and D.dtype != torch.float16 else torch.float32
    D = D[:, :T].detach().to(device=mask.device, dtype=dtype)
    D = torch.where(mask.bool(), D, torch.zeros_like(D))  # garbage on padding must not leak
    if not torch.isfinite(D).all():
        raise ValueError("divergence: batch.divergence has non-finite values on response tokens "
                         "(an infinite KL?); use kind='js', which is bounded")
    return D


def divergence_statistics(batch: RolloutBatch, **options) -> dict[str, Tensor]:
    """The divergence credit's mini-batch statistics: sum, count and max of D over valid tokens."""
    with torch.no_grad():
        return _statistics(_clean_divergence(batch), batch.response_mask.bool())


def _statistics(D: Tensor, valid: Tensor) -> dict[str, Tensor]:
    return {"divergence_sum": D[valid].sum(), "tokens_sum": valid.sum().to(D.dtype),
            "divergence_max": D[valid].max() if valid.any() else D.new_zeros(())}


@register_credit("divergence")
@requires(lambda kind="js", **_: {f"divergence:{kind}"})
@minibatch_statistics(divergence_statistics)
def divergence_credit(batch: RolloutBatch, logprobs: Tensor | None, *, alpha: float = 1.0,
                      normaliser: str = "mean", eps: float = 1e-8, kind: str = "js",
                      max_weight: float | None = None,
                      stats: dict[str, Tensor] | None = None) -> Tensor:
    """Divergence-weighted advantage ("Sparse but Critical") [reconstruction].

        D          = batch.divergence[:, :T]               per-token divergence vs the reference
        multiplier = 1 + alpha * D / (norm + eps)           normaliser "mean": norm = mean of D
                                                            over the mini-batch's valid tokens;
                                                            "max": their max
                   = 1 + alpha * D                          normaliser "none"
        multiplier = min(multiplier, max_weight)            if max_weight is given (our option)

    Tokens where the policy's next-token distribution has moved furthest from the base model's
    (the sparse "critical" positions) get the largest weight. D is (B, T') with T' >= T allowed
    (only the first T columns are read). `kind` (one of DIVERGENCE_KINDS) names the divergence
    the trainer stores in batch.divergence (this function's requirement "divergence:<kind>").
    "mean"/"max" are taken over the mini-batch: `stats` holds its `divergence_statistics`,
    computed before the mini-batch is split into micro-batches, so the multipliers do not depend
    on the micro-batch size; without `stats`, over the batch given.
    Why `max_weight`: D / mean(D) does not depend on the scale of D, so right after the first
    update, when the policy has barely moved, the few positions that moved at all already get
    weights of 1 + alpha * max(D) / mean(D) (tens, in our runs); a cap bounds that. None (the
    default) is the formula as the method describes it.

    Returns (B, T) with no gradient, 1 on padding; `logprobs` is not used.
    """
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"divergence: kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")
    if normaliser not in DIVERGENCE_NORMALISERS:
        raise ValueError(f"divergence: normaliser must be one of {DIVERGENCE_NORMALISERS}, "
                         f"got {normaliser!r}")
    if eps < 0:
        raise ValueError(f"divergence: eps must be >= 0, got {eps}")
    if max_weight is not None and max_weight < 1:
        raise ValueError(f"divergence: max_weight must be >= 1 (weights start at 1), got "
                         f"{max_weight}")
    with torch.no_grad():
        D = _clean_divergence(batch)
        valid = _valid(batch)
        stats = _statistics(D, valid) if stats is None else stats
        if normaliser == "none" or not float(stats["tokens_sum"]) > 0:
            scale = 1.0
        else:
            norm = (stats["divergence_sum"] / stats["tokens_sum"] if normaliser == "mean"
                    else stats["divergence_max"])
            denom = float(norm) + eps
            scale = 1.0 / denom if denom > 0 else 0.0  # all-zero D with eps = 0: weight 1
        w = 1.0 + alpha * D * scale
        if max_weight is not None:
            w = w.clamp(max=max_weight)
        return torch.where(valid, w, torch.ones_like(w))
