"""The policy objective: every per-token term of the loss, assembled in one pure function.

    L = agg_m'( w_rc * w_tok * ( l(lp, olp, A * c) + sum_j aux_j(A * c) ) + beta * KL(lp, rlp) - alpha * H )

  l        the policy loss (`algo.loss`, `pivotal.algos.losses`) of the credited advantages
  c        the credit multiplier (`algo.credit`, `pivotal.algos.credit`), (B, T), no gradient
  aux_j    auxiliary per-token losses of the same credited advantages (e.g. OCC's MTP heads)
  w_tok    per-token loss weights (DAPO overlong filtering sets 0 on truncated responses)
  w_rc     rollout-correction weights of the sampler/trainer ratio pi_old / pi_sampler, token or
           sequence level, truncated or masked (`algo.rollout_correction`; `algo.tis_cap=C` is
           token/truncate with high C), off by default
  KL       the KL estimator (`algo.kl_estimator`) against the frozen reference, coefficient beta
           (0 when the KL is subtracted from the reward instead, `algo.kl_in_reward`)
  H        the policy's entropy, coefficient alpha (`algo.entropy_coef`)
  agg_m'   the aggregation (`algo.aggregation`) over m' = response mask with w_tok != 0, divided
           by the mini-batch totals (so micro-batch losses add up to the mini-batch loss)

So the weights touch the policy and auxiliary terms only: the KL and entropy terms are neither
importance- nor token-weighted, but a token whose w_tok is 0 leaves the loss entirely. The terms are
applied in exactly this order (the floating-point result depends on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from pivotal.algos.aggregation import aggregate_loss
from pivotal.algos.correction import RolloutCorrection, rollout_correction_weights
from pivotal.algos.kl import kl_per_token
from pivotal.algos.losses import LOSSES, masked_mean

# An auxiliary loss: credited advantages (B, T) -> (per-token loss (B, T), metrics)
AuxiliaryTerm = Callable[[Tensor], tuple[Tensor, dict[str, float]]]


@dataclass(frozen=True)
class ObjectiveConfig:
    """The configured pieces of the objective (`ObjectiveConfig.from_config(cfg)`)."""

    loss: str = "ppo_clip"
    loss_options: dict = field(default_factory=dict)
    aggregation: str = "token-mean"
    kl_estimator: str = "k3"
    kl_coef: float = 0.0      # beta of the KL loss term; 0 with the KL in the reward
    entropy_coef: float = 0.0
    correction: RolloutCorrection = RolloutCorrection()   # mode "off": no weights

    @classmethod
    def from_config(cls, cfg) -> ObjectiveConfig:
        a = cfg.algo
        return cls(loss=a.loss, loss_options=dict(a.loss_options), aggregation=a.aggregation,
                   kl_estimator=a.kl_estimator, kl_coef=0.0 if a.kl_in_reward else a.kl_beta,
                   entropy_coef=a.entropy_coef, correction=rollout_correction_of(a))


def rollout_correction_of(algo) -> RolloutCorrection:
    """`algo.rollout_correction`, or its shorthand `algo.tis_cap = C` (token/truncate, high C)."""
    if algo.tis_cap > 0:
        return RolloutCorrection(level="token", mode="truncate", low=0.0, high=algo.tis_cap)
    rc = algo.rollout_correction
    return RolloutCorrection(level=rc.level, mode=rc.mode, low=rc.low, high=rc.high)


@dataclass(frozen=True)
class Totals:
    """Counts of the whole mini-batch every micro-batch's loss is divided by."""

    tokens: float   # valid tokens under the loss mask m'
    seqs: int       # rows
    max_len: int    # the constant L_max of seq-mean-token-sum-norm


def loss_mask(response_mask: Tensor, token_weights: Tensor | None) -> Tensor:
    """m' (B, T): the response tokens whose weight is not 0."""
    return response_mask if token_weights is None else response_mask * (token_weights != 0)


def policy_objective(cfg: ObjectiveConfig, totals: Totals, *, logprobs: Tensor,
                     old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
                     credit: Tensor | None = None, token_weights: Tensor | None = None,
                     sampler_logprobs: Tensor | None = None, ref_logprobs: Tensor | None = None,
                     entropy: Tensor | None = None,
                     auxiliary: Sequence[AuxiliaryTerm] = ()) -> tuple[Tensor, dict[str, float]]:
    """The scalar loss L of the module docstring and its metrics.

    logprobs (B, T) with gradient; old_logprobs, advantages, response_mask, credit, token_weights,
    sampler_logprobs, ref_logprobs (B, T) without; entropy (B, T), with gradient when
    cfg.entropy_coef > 0. Optional terms left as None are absent (credit: all ones; the rollout
    correction needs sampler_logprobs and an active cfg.correction; the KL metric needs
    ref_logprobs).

    Metrics (floats): the policy loss's own (clip fractions, ...), the auxiliary terms', the
    rollout correction's (rc_weight, rc_token_frac, rc_seq_frac), kl_ref (the KL estimate, also
    when it is not in the loss), and the per-token means over the response tokens of the whole
    per-token objective (`loss`), the entropy and the credit multiplier, and the share of tokens whose
    multiplier is not 1 (credit_modulated_frac).
    """
    mask = response_mask
    credited = advantages if credit is None else advantages * credit
    out = LOSSES.get(cfg.loss)(logprobs, old_logprobs, credited, mask, **cfg.loss_options)
    per_token = out.per_token_loss
    metrics = {k: float(v) for k, v in out.metrics.items()}
    for term in auxiliary:
        aux_loss, aux_metrics = term(credited)
        per_token = per_token + aux_loss
        metrics.update(aux_metrics)
    if token_weights is not None:
        per_token = per_token * token_weights
    if cfg.correction.active and sampler_logprobs is not None:
        weights, rc_metrics = rollout_correction_weights(old_logprobs, sampler_logprobs, mask,
                                                         cfg.correction)
        per_token = per_token * weights
        metrics.update(rc_metrics)
    if ref_logprobs is not None:
        kl = kl_per_token(logprobs, ref_logprobs, mask, cfg.kl_estimator)
        metrics["kl_ref"] = masked_mean(kl.detach(), mask).item()
        if cfg.kl_coef > 0:
            per_token = per_token + cfg.kl_coef * kl
    if cfg.entropy_coef > 0:
        per_token = per_token - cfg.entropy_coef * entropy * mask
    loss = aggregate_loss(per_token, loss_mask(mask, token_weights), cfg.aggregation,
                          total_tokens=totals.tokens, total_seqs=totals.seqs,
                          max_len=totals.max_len)
    metrics["loss"] = masked_mean(per_token.detach(), mask).item()
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy.detach(), mask).item()
    metrics["credit_mean"] = masked_mean(credit, mask).item() if credit is not None else 1.0
    # the share of tokens whose advantage the credit changed (a sparse gate's reach)
    metrics["credit_modulated_frac"] = (masked_mean((credit != 1).float(), mask).item()
                                        if credit is not None else 0.0)
    return loss, metrics
