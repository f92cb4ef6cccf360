"""Policy losses: per-token surrogate losses for one mini-batch.

Every entry has the signature

    fn(logprobs (B, T) with grad, old_logprobs (B, T), advantages (B, T), response_mask (B, T),
       **options) -> LossOutput

`per_token_loss` is already zero on padding; reduce it with `aggregation.aggregate_loss`. The
importance log-ratio is clamped to [-20, 20] before exp so a stale or degenerate token cannot
overflow to inf (exp(20) ~ 5e8 is already far past any clip range, so no clipped value changes).
Metrics are detached scalars averaged over valid tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pivotal.registry import Registry

LOSSES: Registry = Registry("policy loss")
register_loss = LOSSES.register

LOG_RATIO_CLAMP = 20.0


@dataclass
class LossOutput:
    per_token_loss: Tensor                                    # (B, T), zero on padding
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached scalars


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, T) over mask (B, T); 0 (not nan) when the mask is empty."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def valid_tokens(response_mask: Tensor) -> Tensor:
    return response_mask.bool()


def zero_padding(x: Tensor, valid: Tensor) -> Tensor:
    # where() rather than x * mask: a garbage (inf/nan) value on padding must not leak through
    # 0 * inf = nan into the loss or its gradient.
    return torch.where(valid, x, torch.zeros_like(x))


def clamped_log_ratio(logprobs: Tensor, old_logprobs: Tensor, valid: Tensor) -> Tensor:
    return zero_padding(logprobs - old_logprobs, valid).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _approx_kl(log_ratio: Tensor, valid: Tensor) -> Tensor:
    """k3 estimate of KL(pi_old || pi_theta) per token: r - 1 - log r.

    Tokens were sampled from pi_old, so k3 is unbiased for that direction and never negative
    (http://joschu.net/blog/kl-approx.html).
    """
    lr = log_ratio.detach()
    return masked_mean(torch.expm1(lr) - lr, valid)


def masked_fraction(cond: Tensor, valid: Tensor) -> Tensor:
    return masked_mean(cond.to(torch.float32), valid)


@register_loss("ppo_clip")
def ppo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
                  *, clip_low: float = 0.2, clip_high: float = 0.28,
                  dual_clip: float | None = 3.0) -> LossOutput:
    """PPO clipped surrogate (https://arxiv.org/abs/1707.06347), DAPO clip-higher and dual-clip.

    r  = exp(clamp(lp - olp, -20, 20))
    Lc = max(-A*r, -A*clamp(r, 1 - clip_low, 1 + clip_high))
    L  = min(-A*c, Lc) where A < 0 (dual-clip, https://arxiv.org/abs/1912.09729), Lc elsewhere.

    Defaults are DAPO's (https://arxiv.org/abs/2503.14476): the upper bound 0.28 > 0.2 gives
    low-probability tokens with A > 0 more room to grow, which keeps entropy from collapsing;
    clip_low = clip_high = 0.2 is the symmetric PPO clip. Dual-clip bounds the loss of a token with
    A < 0 whose ratio has exploded (r > c), which the plain clip leaves unbounded; c = 3 is the
    paper's value, DAPO/FIPO recipes use 10; None turns it off.

    Metrics (fractions of valid tokens): clip_frac_low (A < 0 and r < 1 - clip_low: the clipped,
    gradient-free branch is active), clip_frac_high (A > 0 and r > 1 + clip_high), dual_clip_frac
    (A < 0 and r > c), ratio_mean, approx_kl (k3 estimate of KL(pi_old || pi_theta)).

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (it bounds ratios above 1), got {dual_clip}")
    valid = valid_tokens(response_mask)
    log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    ratio = torch.exp(log_ratio)
    adv = zero_padding(advantages, valid)

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    neg = adv < 0
    if dual_clip is not None:
        # -A*c is a constant, so tokens past the dual clip get no gradient (their loss is capped).
        loss = torch.where(neg, torch.minimum(loss, -adv * dual_clip), loss)

    with torch.no_grad():
        r = ratio.detach()
        metrics = {
            "clip_frac_low": masked_fraction(neg & (r < 1.0 - clip_low), valid),
            "clip_frac_high": masked_fraction((adv > 0) & (r > 1.0 + clip_high), valid),
            "dual_clip_frac": (masked_fraction(neg & (r > dual_clip), valid) if dual_clip is not None
                               else r.new_zeros(())),
            "ratio_mean": masked_mean(r, valid),
            "approx_kl": _approx_kl(log_ratio, valid),
        }
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("gspo")
def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              *, clip_low: float = 3e-4, clip_high: float = 4e-4,
              dual_clip: float | None = 3.0) -> LossOutput:
    """Group Sequence Policy Optimization (https://arxiv.org/abs/2507.18071).

    The importance ratio is per sequence, the geometric mean of the token ratios:
        log s_i  = sum_t m*(lp - olp) / sum_t m
    and is spread over tokens with a stop-gradient trick so each token can carry its own advantage:
        log s_it = sg(log s_i) + lp_t - sg(lp_t)       (value s_i, d s_it / d lp_t = s_i)
        L_it     = max(-A*s_it, -A*clamp(s_it, 1 - clip_low, 1 + clip_high))
        L_it     = min(L_it, -A*c) where A < 0                           (dual-clip bound)
    A sequence is clipped as a whole, so all its tokens share the same clip state. The clip range
    is tiny (paper: 3e-4 / 4e-4) because a length-normalised ratio moves far less than a token's.

    Aggregate with "seq-mean-token-mean": then the gradient of sequence i is -A_i * s_i * mean_t
    grad lp_t, which is exactly the gradient of the sequence-level objective -A_i * s_i.
    The dual-clip bound: for A < 0 the clip leaves s > 1 + clip_high on the unclipped branch, whose
    loss -A*s grows without bound (with full gradient, up to s = e^20). As in ppo_clip, the loss of
    such a sequence is capped at -A*c (constant, no gradient) once s > c; c = 3 by default, far
    outside the clip range, so an ordinary update never reaches it. None turns it off (the paper's
    formula; verl instead caps log s at 10).

    Metrics (fractions of valid tokens, so a long sequence counts by its length): clip_frac_low,
    clip_frac_high, dual_clip_frac, ratio_mean (of s_i), approx_kl (per-token k3, as in ppo_clip).

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (it bounds ratios above 1), got {dual_clip}")
    valid = valid_tokens(response_mask)
    mask = valid.to(logprobs.dtype)
    token_log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    seq_log_ratio = (token_log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)   # (B,)
    seq_log_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    lp = zero_padding(logprobs, valid)
    log_s = seq_log_ratio.detach()[:, None] + lp - lp.detach()
    s = torch.exp(log_s)
    adv = zero_padding(advantages, valid)

    loss = torch.maximum(-adv * s, -adv * s.clamp(1.0 - clip_low, 1.0 + clip_high))
    neg = adv < 0
    if dual_clip is not None:
        loss = torch.where(neg, torch.minimum(loss, -adv * dual_clip), loss)

    with torch.no_grad():
        r = s.detach()
        metrics = {
            "clip_frac_low": masked_fraction(neg & (r < 1.0 - clip_low), valid),
            "clip_frac_high": masked_fraction((adv > 0) & (r > 1.0 + clip_high), valid),
            "dual_clip_frac": (masked_fraction(neg & (r > dual_clip), valid) if dual_clip is not None
                               else r.new_zeros(())),
            "ratio_mean": masked_mean(r, valid),
            "approx_kl": _approx_kl(token_log_ratio, valid),
        }
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("vanilla_pg")
def vanilla_pg_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                    response_mask: Tensor) -> LossOutput:
    """REINFORCE: L = -A * lp, no ratio and no clip (on-policy only).

    Useful as a baseline and as a test oracle: its gradient is -A * grad lp, which equals the
    clipped losses' gradient on the first (on-policy, r = 1) step. old_logprobs only feed the
    monitoring metrics (ratio_mean, approx_kl).

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    valid = valid_tokens(response_mask)
    loss = -zero_padding(advantages, valid) * zero_padding(logprobs, valid)
    with torch.no_grad():
        log_ratio = clamped_log_ratio(logprobs.detach(), old_logprobs, valid)
        metrics = {
            "ratio_mean": masked_mean(torch.exp(log_ratio), valid),
            "approx_kl": _approx_kl(log_ratio, valid),
        }
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("cispo")
def cispo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
               *, clip_low: float = 1.0, clip_high: float = 0.28) -> LossOutput:
    """CISPO, clipped importance-sampling-weight policy optimisation (MiniMax-M1,
    https://arxiv.org/abs/2506.13585).

    L = -sg(clamp(r, 1 - clip_low, 1 + clip_high)) * A * lp,    r = exp(clamp(lp - olp, -20, 20))

    PPO drops the gradient of a token whose ratio left the clip range; CISPO keeps every token's
    gradient and clips only its (detached) importance weight, so rare tokens that matter (the
    paper's "However", "Wait") still learn after the first update. clip_low = 1 is the paper's
    "no lower bound" (the weight may fall to 0); only the upper bound is tuned. On-policy (r = 1)
    the gradient is REINFORCE's, -A * grad lp.

    Metrics: is_clip_frac (tokens whose weight was capped at 1 + clip_high), ratio_mean, approx_kl.

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    if not (clip_low >= 0 and clip_high >= 0):
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    valid = valid_tokens(response_mask)
    log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    ratio = torch.exp(log_ratio).detach()
    weight = ratio.clamp(max(1.0 - clip_low, 0.0), 1.0 + clip_high)
    loss = -weight * zero_padding(advantages, valid) * zero_padding(logprobs, valid)
    with torch.no_grad():
        metrics = {"is_clip_frac": masked_fraction(ratio > 1.0 + clip_high, valid),
                   "ratio_mean": masked_mean(ratio, valid),
                   "approx_kl": _approx_kl(log_ratio, valid)}
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("sapo")
def sapo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              *, tau_pos: float = 1.0, tau_neg: float = 1.05) -> LossOutput:
    """SAPO, soft adaptive policy optimisation (Qwen, https://arxiv.org/abs/2511.20347).

    L = -A * f(r),   f(r) = (4 / tau) * sigmoid(tau * (r - 1)),   tau = tau_pos if A > 0 else tau_neg

    A smooth trust region in place of the hard clip: the gradient weight df/dr = 4 s (1 - s),
    s = sigmoid(tau (r - 1)), is 1 at r = 1 (on-policy it is REINFORCE) and decays as r leaves 1,
    faster for larger tau. tau_neg > tau_pos damps negative-advantage tokens sooner: their updates
    raise many unsampled tokens' logits and destabilise training more (the paper's 1.0 / 1.05).

    Metrics: gate_weight (mean df/dr over valid tokens: 1 = no damping), ratio_mean, approx_kl.

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    if not (tau_pos > 0 and tau_neg > 0):
        raise ValueError(f"tau_pos and tau_neg must be > 0, got {tau_pos}, {tau_neg}")
    valid = valid_tokens(response_mask)
    log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    ratio = torch.exp(log_ratio)
    adv = zero_padding(advantages, valid)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = -adv * gate * (4.0 / tau)
    with torch.no_grad():
        s = gate.detach()
        metrics = {"gate_weight": masked_mean(4.0 * s * (1.0 - s), valid),
                   "ratio_mean": masked_mean(ratio.detach(), valid),
                   "approx_kl": _approx_kl(log_ratio, valid)}
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("gmpo")
def gmpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              *, clip_low: float = 0.4, clip_high: float = 0.4) -> LossOutput:
    """GMPO, geometric-mean policy optimisation (https://arxiv.org/abs/2507.20673).

    The arithmetic mean of token ratios (GRPO) becomes a geometric mean, clipped per token in log
    space so that one outlier token cannot move the sequence's ratio:
        c_t     = min(lr_t, clip_high)  where A_t > 0,   max(lr_t, -clip_low)  where A_t <= 0
                  (lr_t = lp_t - olp_t; the pessimistic side of the clip, as PPO's min)
        log s_i = sum_t m c_t / sum_t m                     (B,)   geometric mean of clipped ratios
        L_it    = -A_t * exp(sg(log s_i) + c_t - sg(c_t))   value s_i, d/d lp_t = s_i (unclipped)
    Aggregated with "seq-mean-token-mean" this is exactly the paper's -A_i * s_i per sequence, its
    gradient -A_i s_i mean_t grad c_t (the GSPO construction, with per-token advantages allowed).
    Defaults are the paper's (e^-0.4, e^0.4) range, wider than PPO's: the geometric mean moves
    less than any single token's ratio.

    Metrics: clip_frac (tokens on the clipped side), ratio_mean (of s_i, per token), approx_kl.

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    if not (clip_low > 0 and clip_high > 0):
        raise ValueError(f"clip_low and clip_high must be > 0, got {clip_low}, {clip_high}")
    valid = valid_tokens(response_mask)
    mask = valid.to(logprobs.dtype)
    log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    adv = zero_padding(advantages, valid)
    clipped = torch.where(adv > 0, log_ratio.clamp(max=clip_high), log_ratio.clamp(min=-clip_low))
    log_s = (clipped * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)                   # (B,)
    s = torch.exp(log_s.detach()[:, None] + clipped - clipped.detach())
    loss = -adv * s
    with torch.no_grad():
        lr = log_ratio.detach()
        metrics = {"clip_frac": masked_fraction(((adv > 0) & (lr > clip_high))
                                                | ((adv <= 0) & (lr < -clip_low)), valid),
                   "ratio_mean": masked_mean(s.detach(), valid),
                   "approx_kl": _approx_kl(log_ratio, valid)}
    return LossOutput(zero_padding(loss, valid), metrics)
