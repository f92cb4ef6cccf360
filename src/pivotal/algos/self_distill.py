"""Self-distillation credit: AMR-SD's gated Causal Information Gain, and the raw-solution teacher.

Paper: "Asymmetric Meta-Reflective Self-Distillation for Token-Level Credit Assignment" (AMR-SD,
arXiv 2605.18529; abstract only, no released code: the formulas below are our reading, every
knob exposed). A self-teacher, the policy itself with extra context h in its prompt (a hint: the
policy's own reflection on the group's verified answers, `pivotal.hints`), scores every sampled
token; the context's effect on token t is its Causal Information Gain

    CIG_t = log pi(y_t | x, h, y<t) - log pi(y_t | x, y<t)

(the "context_logprobs" credit input minus the old policy's log-probs, both from the policy that
sampled the batch). The verifier's advantage A stays the base signal; CIG modulates it sparsely
with an asymmetric ReLU gate (tokens inside the thresholds keep A unchanged):

    A > 0:  m_t = 1 + lam(s) alpha_pos relu( CIG_t - tau_pos)   the hint agrees: more credit
    A < 0:  m_t = 1 + lam(s) alpha_neg relu(-CIG_t - tau_neg)   the hint disagrees: more blame
    A = 0:  m_t = 1,                       m_t <= max_weight

lam(s) anneals the strength over training progress s in [0, 1] (first to last step): 1 (`none`),
or from 1 to `anneal_final` linearly or along a half cosine.

The baseline AMR-SD improves on, `self_distill`, conditions the teacher on the raw reference
solution (`hint_source=solution`) and uses the log-ratio delta_t = CIG_t densely: multiplicative
m_t = clip(1 + beta sign(A) delta_t, min_weight, max_weight), or additive A'_t = A + beta delta_t
(the on-policy self-distillation reward; it trains groups whose rewards all agree too).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pivotal.algos.credit import additive_credit, register_credit, requires
from pivotal.batch import RolloutBatch

CONTEXT_LOGPROBS_KEY = "context_logprobs"  # batch.extras: (B, T) log-probs under the hinted prompt
ANNEALING = ("none", "linear", "cosine")
HINT_SOURCES = ("reflection", "solution", "template")


def causal_information_gain(context_logprobs: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """CIG (B, T) = context_logprobs - logprobs on real tokens, 0 on padding."""
    return (context_logprobs - logprobs) * mask


def annealed_strength(progress: float, schedule: str = "none", final: float = 0.0) -> float:
    """lam(s): 1 throughout (none), or 1 at s = 0 falling to `final` at s = 1 (linear, cosine)."""
    if schedule not in ANNEALING:
        raise ValueError(f"anneal must be one of {', '.join(ANNEALING)}, got {schedule!r}")
    s = min(max(float(progress), 0.0), 1.0)
    if schedule == "none":
        return 1.0
    shape = 1.0 - s if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * s))
    return final + (1.0 - final) * shape


def asymmetric_gate(cig: Tensor, advantages: Tensor, mask: Tensor, tau_pos: float, tau_neg: float,
                    alpha_pos: float, alpha_neg: float, strength: float,
                    max_weight: float) -> Tensor:
    """AMR-SD's multiplier (B, T) from CIG (B, T) and the advantages (B, T) (see the module
    docstring); 1 on padding and where A = 0."""
    sign = torch.sign(advantages)
    up = alpha_pos * torch.relu(cig - tau_pos) * (sign > 0)
    down = alpha_neg * torch.relu(-cig - tau_neg) * (sign < 0)
    weight = (1.0 + strength * (up + down)).clamp(max=max_weight)
    return torch.where(mask.bool(), weight, torch.ones_like(weight))


def _context_logprobs(batch: RolloutBatch) -> Tensor:
    value = batch.extras.get(CONTEXT_LOGPROBS_KEY)
    if value is None:
        raise ValueError("this credit reads batch.extras['context_logprobs'] (the policy's "
                         "log-probs with the hint in its prompt); the step computes it when the "
                         "credit requires 'context_logprobs'")
    return value.to(batch.old_logprobs)


def _check_hint_options(hint_source: str, hint_tokens: int, hint_answers: int) -> None:
    if hint_source not in HINT_SOURCES:
        raise ValueError(f"hint_source must be one of {', '.join(HINT_SOURCES)}, got {hint_source!r}")
    if hint_tokens < 1 or hint_answers < 0:
        raise ValueError(f"need hint_tokens >= 1 and hint_answers >= 0, got {hint_tokens} and "
                         f"{hint_answers}")


@register_credit("amr_sd")
@requires({"context_logprobs", "progress"})
def amr_sd_credit(batch: RolloutBatch, logprobs: Tensor | None = None, *, progress: float = 0.0,
                  tau_pos: float = 0.1, tau_neg: float = 0.1, alpha_pos: float = 1.0,
                  alpha_neg: float = 1.0, max_weight: float = 2.0, anneal: str = "linear",
                  anneal_final: float = 0.0, hint_source: str = "reflection",
                  hint_tokens: int = 48, hint_answers: int = 4) -> Tensor:
    """AMR-SD: A_t x the asymmetric ReLU gate of CIG_t, annealed over training (module
    docstring). hint_source / hint_tokens / hint_answers choose the teacher's context
    (`pivotal.hints`). Returns the multiplier (B, T)."""
    _check_hint_options(hint_source, hint_tokens, hint_answers)
    if min(tau_pos, tau_neg, alpha_pos, alpha_neg) < 0 or max_weight < 1:
        raise ValueError("need tau_pos, tau_neg, alpha_pos, alpha_neg >= 0 and max_weight >= 1")
    cig = causal_information_gain(_context_logprobs(batch), batch.old_logprobs, batch.response_mask)
    return asymmetric_gate(cig, batch.advantages, batch.response_mask, tau_pos, tau_neg,
                           alpha_pos, alpha_neg, annealed_strength(progress, anneal, anneal_final),
                           max_weight)


@register_credit("self_distill")
@additive_credit(lambda mode="multiplicative", **_: mode == "additive")
@requires({"context_logprobs"})
def self_distill_credit(batch: RolloutBatch, logprobs: Tensor | None = None, *,
                        beta: float = 0.5, mode: str = "multiplicative", min_weight: float = 0.0,
                        max_weight: float = 2.0, hint_source: str = "solution",
                        hint_tokens: int = 48, hint_answers: int = 4) -> Tensor:
    """The raw-solution self-teacher: delta_t = log pi(y_t | x, solution, y<t) - log pi(y_t | x,
    y<t). multiplicative: the multiplier clip(1 + beta sign(A) delta, min_weight, max_weight)
    (B, T); additive: the term beta delta (B, T) added to the advantages."""
    _check_hint_options(hint_source, hint_tokens, hint_answers)
    if mode not in ("multiplicative", "additive"):
        raise ValueError(f"mode must be multiplicative or additive, got {mode!r}")
    if not 0 <= min_weight <= 1 <= max_weight:
        raise ValueError(f"need 0 <= min_weight <= 1 <= max_weight, got {min_weight}, {max_weight}")
    delta = causal_information_gain(_context_logprobs(batch), batch.old_logprobs, batch.response_mask)
    if mode == "additive":
        return beta * delta
    weight = (1.0 + beta * torch.sign(batch.advantages) * delta).clamp(min_weight, max_weight)
    return torch.where(batch.response_mask.bool(), weight, torch.ones_like(weight))
