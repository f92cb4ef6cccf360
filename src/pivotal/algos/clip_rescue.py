"""Near-boundary stochastic rescue of clipped tokens, as policy losses: "ppo_clip_rescue" and
"gspo_rescue".

Paper: "Clipping Bottleneck: Stabilizing RLVR via Stochastic Recovery of Near-Boundary Signals"
(Yang et al., 2026, https://arxiv.org/abs/2605.22703). Only the abstract and a digest were
available, so the exact rule below is our reconstruction (docs/algorithms.md) [reconstruction].
The paper calls the method NSR; pivotal names it `clip_rescue` (the losses were `ppo_clip_nsr` and
`gspo_nsr` before), because NSR is also, and more widely, the negative sample reinforcement of
arXiv 2506.01347 (`algo.advantage=nsr`, `pivotal.algos.polarity`).

Hard clipping gives a token just past the trust region no gradient at all. The rescue keeps some,
at random, with a chance that falls off with the distance past the bound. With u ~ U(0, 1] drawn
per token (per sequence for GSPO) and held constant (no gradient through u):

    A > 0 and r > 1 + eps_h:   r' = u * r;  rescued if r' <= 1 + eps_h   -> loss -A * r'
    A < 0 and r < 1 - eps_l:   r' = r / u;  rescued if r' >= 1 - eps_l   -> loss -A * r'
    otherwise (and when not rescued) the base loss (ppo_clip / gspo) unchanged.

The gradient of a rescued token flows through r' = u * r (or r / u) to log pi_theta. Expected
gradient with respect to log r for A > 0: P(rescue) = (1 + eps_h) / r and
    E[grad] = -A * r * E[u; u <= (1 + eps_h)/r] = -A * (1 + eps_h)^2 / (2 r),
i.e. (1 + eps_h)^2 / (2 r^2) times the unclipped gradient -A * r: local to the boundary.

The A < 0 mirror needs a cap. A rescued token's gradient is -A * r / u, and u is rescued all the way
down to 0, so without a bound E[grad] = -A * r * integral_0^{r/(1-eps_l)} du / u is infinite (a
heavy 1/u tail: rare tokens with enormous gradients). We bound r' by c, exactly as the dual-clip
would at r': rescued only if 1 - eps_l <= r' <= c, and then
    E[grad] = -A * r * ln(c / (1 - eps_l))      (each rescued gradient is at most |A| * c).
ppo_clip_rescue uses its `dual_clip` as c (default 3, as ppo_clip); gspo_rescue, whose base loss has no
dual-clip, takes `rescue_cap` (default 3). With the cap None the A < 0 mirror must be switched off
(rescue_negative=False), otherwise a ValueError. (A rescued token with r' > c would get the constant
dual-clip loss -A*c, no gradient; we leave it clipped instead, same gradient.)

Randomness: `seed=None` draws from torch's global RNG (seeded by the trainer). An int seed uses a
private generator per (seed, device), created on first use and advanced by every call, so a run is
reproducible and successive calls draw fresh values; `reset_generators()` starts them over.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.losses import (
    LOG_RATIO_CLAMP,
    LOSSES,
    LossOutput,
    clamped_log_ratio,
    gspo_loss,
    masked_fraction,
    ppo_clip_loss,
    register_loss,
    valid_tokens,
    zero_padding,
)

_GENERATORS: dict[tuple[int, str], torch.Generator] = {}


def reset_generators() -> None:
    """Forget the seeded generators: the next call with a seed starts its stream over."""
    _GENERATORS.clear()


def _uniform(shape: tuple[int, ...], like: Tensor, seed: int | None) -> Tensor:
    """u ~ U(0, 1] of `shape`, in like's dtype/device; never 0, so r / u stays finite."""
    generator = None
    if seed is not None:
        key = (int(seed), str(like.device))
        generator = _GENERATORS.get(key)
        if generator is None:
            generator = torch.Generator(device=like.device)
            generator.manual_seed(int(seed))
            _GENERATORS[key] = generator
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    u = torch.rand(shape, generator=generator, device=like.device, dtype=dtype)
    return (1.0 - u).to(like.dtype)   # rand is in [0, 1): 1 - rand is in (0, 1]


def _rescue(loss: Tensor, ratio: Tensor, adv: Tensor, valid: Tensor, u: Tensor, clip_low: float,
            clip_high: float, cap: float | None, rescue_negative: bool) -> tuple[Tensor, Tensor]:
    """Replace the clipped loss of rescued tokens by -A * r'. Returns (loss, rescued mask)."""
    r = ratio.detach()
    r_up = u * ratio                                          # gradient flows through ratio
    rescued = valid & (adv > 0) & (r > 1.0 + clip_high) & (r_up.detach() <= 1.0 + clip_high)
    out = torch.where(rescued, -adv * r_up, loss)
    if rescue_negative:
        r_down = ratio / u
        rd = r_down.detach()
        neg = valid & (adv < 0) & (r < 1.0 - clip_low) & (rd >= 1.0 - clip_low) & (rd <= cap)
        out = torch.where(neg, -adv * r_down, out)
        rescued = rescued | neg
    return out, rescued


def _check_cap(cap: float | None, rescue_negative: bool, name: str, option: str) -> None:
    if rescue_negative and cap is None:
        raise ValueError(f"{name}: the A < 0 rescue (r' = r / u) needs {option} to bound r'; "
                         f"without it the expected gradient is infinite. Set {option} or "
                         f"rescue_negative=False")
    if cap is not None and cap <= 1.0:
        raise ValueError(f"{name}: {option} must be > 1, got {cap}")


@register_loss("ppo_clip_rescue")
def ppo_clip_rescue_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                      response_mask: Tensor, *, clip_low: float = 0.2, clip_high: float = 0.28,
                      dual_clip: float | None = 3.0, rescue_negative: bool = True,
                      seed: int | None = None) -> LossOutput:
    """ppo_clip (DAPO clip-higher, dual-clip) with Near-boundary Stochastic Rescue [reconstruction].

    Per token, u ~ U(0, 1] (module docstring for the derivation):
        A > 0, r > 1 + clip_high:  r' = u r; if r' <= 1 + clip_high  -> -A r'   (else clipped)
        A < 0, r < 1 - clip_low:   r' = r / u; if 1 - clip_low <= r' <= dual_clip -> -A r'
    Everything else, including every token inside the trust region, is exactly ppo_clip. The
    dual-clip keeps applying to A < 0 as in ppo_clip and also bounds the rescued ratio r'.
    rescue_negative=False turns the A < 0 mirror off (required when dual_clip is None).
    seed: None = torch's global RNG; an int = a private, reproducible stream (see module doc).

    Metrics: ppo_clip's (clip fractions count tokens past the bounds before rescue) plus
    rescued_frac, the fraction of valid tokens rescued (they carry a gradient).

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    _check_cap(dual_clip, rescue_negative, "ppo_clip_rescue", "dual_clip")
    base = ppo_clip_loss(logprobs, old_logprobs, advantages, response_mask, clip_low=clip_low,
                         clip_high=clip_high, dual_clip=dual_clip)
    valid = valid_tokens(response_mask)
    ratio = torch.exp(clamped_log_ratio(logprobs, old_logprobs, valid))
    adv = zero_padding(advantages, valid)
    u = _uniform(tuple(ratio.shape), ratio, seed)
    loss, rescued = _rescue(base.per_token_loss, ratio, adv, valid, u, clip_low, clip_high,
                            dual_clip, rescue_negative)
    metrics = dict(base.metrics)
    metrics["rescued_frac"] = masked_fraction(rescued, valid).detach()
    return LossOutput(zero_padding(loss, valid), metrics)


@register_loss("gspo_rescue")
def gspo_rescue_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                  response_mask: Tensor, *, clip_low: float = 3e-4, clip_high: float = 4e-4,
                  rescue_cap: float | None = 3.0, rescue_negative: bool = True,
                  dual_clip: float | None = 3.0, seed: int | None = None) -> LossOutput:
    """gspo with Near-boundary Stochastic Rescue on the sequence ratio [reconstruction].

    s_i is GSPO's sequence ratio (geometric mean of the token ratios) and s_it its per-token form
    (value s_i, d s_it / d lp_t = s_i). One u_i ~ U(0, 1] per sequence, shared by its tokens:
        A > 0, s > 1 + clip_high:  s' = u s_it; if s' <= 1 + clip_high -> -A s'   (else clipped)
        A < 0, s < 1 - clip_low:   s' = s_it / u; if 1 - clip_low <= s' <= rescue_cap -> -A s'
    Everything else is exactly gspo, including its dual-clip bound (`dual_clip`, on the tokens not
    rescued). rescue_cap (default 3) bounds the rescued A < 0 ratio, which otherwise has an
    infinite expected gradient; it touches nothing else.
    rescue_negative=False turns the A < 0 mirror off (required when rescue_cap is None).
    seed: None = torch's global RNG; an int = a private, reproducible stream (see module doc).
    Aggregate with "seq-mean-token-mean", as gspo.

    Metrics: gspo's plus rescued_frac (fraction of valid tokens, so a sequence counts by length).

    logprobs, old_logprobs, advantages, response_mask: (B, T) -> per_token_loss (B, T)
    """
    _check_cap(rescue_cap, rescue_negative, "gspo_rescue", "rescue_cap")
    base = gspo_loss(logprobs, old_logprobs, advantages, response_mask, clip_low=clip_low,
                     clip_high=clip_high, dual_clip=dual_clip)
    valid = valid_tokens(response_mask)
    mask = valid.to(logprobs.dtype)
    # the per-token sequence ratio, as in gspo_loss
    token_log_ratio = clamped_log_ratio(logprobs, old_logprobs, valid)
    seq_log_ratio = (token_log_ratio * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    seq_log_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    lp = zero_padding(logprobs, valid)
    s = torch.exp(seq_log_ratio.detach()[:, None] + lp - lp.detach())
    adv = zero_padding(advantages, valid)
    u = _uniform((s.shape[0], 1), s, seed).expand_as(s)
    loss, rescued = _rescue(base.per_token_loss, s, adv, valid, u, clip_low, clip_high,
                            rescue_cap, rescue_negative)
    metrics = dict(base.metrics)
    metrics["rescued_frac"] = masked_fraction(rescued, valid).detach()
    return LossOutput(zero_padding(loss, valid), metrics)


for _old, _new in (("ppo_clip_nsr", "ppo_clip_rescue"), ("gspo_nsr", "gspo_rescue")):
    LOSSES.renamed(_old, _new, "'nsr' is now the negative sample reinforcement advantage of "
                               "arXiv 2506.01347, algo.advantage=nsr")
