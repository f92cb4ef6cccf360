"""Per-token divergence between two causal LMs' next-token distributions on the same prefixes.

For every response token y_t of a rollout batch, both models (`policy` and a frozen `base`) see the
same prefix (prompt + y_<t) and each gives a next-token distribution over the shared vocabulary.
This module computes, per token:

    js              Jensen-Shannon divergence, natural log, in [0, ln 2]
    kl_policy_base  KL(pi_policy || pi_base)
    kl_base_policy  KL(pi_base || pi_policy)
    entropy_policy  H(pi_policy), entropy_base H(pi_base)
    dlogp           log pi_policy(y_t) - log pi_base(y_t), the Δlog p of the chosen token

This is the measurement behind "Sparse but Critical" (docs/algorithms.md): where the RL policy's
distribution differs from the base model's, and the per-token D_t of the divergence-weighted
advantage [reconstruction], credit "divergence" in `pivotal.algos.token_credit`.

Memory bound. The (N, V) logits of a batch's N response tokens are the large object (V ~ 49k).
For plain-head models (`pivotal.logprobs.has_plain_head`) each model's final hidden states are
computed once ((B, T, H), small), the N valid positions are selected, and each LM head runs on at
most `chunk_tokens` positions at a time: at most two (chunk_tokens, V) logits tensors, plus a
constant number of same-sized temporaries (log-softmaxes, probabilities, the mixture), exist at
once; never (B, T, V) for the batch. Models whose logits are not just lm_head(hidden) (soft-capping,
scaling) fall back to the model's own logits, which holds (B, T, V) for the batch it is given, so
the caller should pass micro-batches there.

Simplifications: everything runs under torch.no_grad (these are measurements and frozen per-token
weights, not losses); both models must share the tokenizer (equal LM-head output sizes are
checked, identical token meanings are the caller's promise); a temperature other than 1 divides
both models' logits, as in `pivotal.logprobs.policy_logprobs`; models in training mode run with
their dropout (call `.eval()` for deterministic values).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .batch import RolloutBatch
from .logprobs import has_plain_head, response_states, trim_padding

LN2 = math.log(2.0)
DIVERGENCE_KINDS = ("js", "kl_policy_base", "kl_base_policy")  # what a credit may weight by
RESPONSE_KEYS = ("js", "kl_policy_base", "kl_base_policy", "entropy_policy", "entropy_base",
                 "dlogp")


def _plogq_terms(logp: Tensor, p: Tensor, other: Tensor) -> Tensor:
    """sum_v p_v * (logp_v - other_v) with 0 * anything = 0: (N, V) x3 -> (N,).

    Where p_v underflowed to 0 (or logp_v = -inf) the term is 0, never nan; where p_v > 0 and
    other_v = -inf the term is +inf (the divergence is genuinely infinite).
    """
    diff = torch.where(p > 0, logp - other, torch.zeros_like(logp))
    return (p * diff).sum(dim=-1)


def divergences_from_logprobs(logp: Tensor, logq: Tensor) -> dict[str, Tensor]:
    """The divergences of `distribution_divergences` from normalised log-probs (N, V) -> (N,):
    logp the policy's, logq the base's."""
    p, q = logp.exp(), logq.exp()
    log_m = torch.logaddexp(logp, logq) - LN2          # log((p + q) / 2), stable in log space
    kl_pm = _plogq_terms(logp, p, log_m)
    kl_qm = _plogq_terms(logq, q, log_m)
    return {
        "js": (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2),   # clamp removes rounding only
        "kl_policy_base": _plogq_terms(logp, p, logq).clamp(min=0.0),
        "kl_base_policy": _plogq_terms(logq, q, logp).clamp(min=0.0),
        "entropy_policy": _entropy_from_logprobs(logp, p),
        "entropy_base": _entropy_from_logprobs(logq, q),
    }


def _entropy_from_logprobs(logp: Tensor, p: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v, as -max(log p) - sum_v p_v (log p_v - max(log p)): (N, V) -> (N,).

    Equal in exact arithmetic (the p_v sum to 1), but in float32 the plain form carries the
    rounding of sum_v p_v times log Z (~1e-5 nats at V = 49k); this one stays within ~1e-6.
    """
    top = logp.amax(dim=-1, keepdim=True)
    shifted = torch.where(p > 0, logp - top, torch.zeros_like(logp))
    return (-top.squeeze(-1) - (p * shifted).sum(dim=-1)).clamp(min=0.0)


def distribution_divergences(logits_p: Tensor, logits_q: Tensor) -> dict[str, Tensor]:
    """Divergences between softmax(logits_p) and softmax(logits_q) row by row.

    logits_p (the policy's), logits_q (the base's): (N, V) (any float dtype; computed in float32)
    -> dict of (N,) float32, named as everywhere in pivotal:

        "js"              0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2, natural log, in [0, ln 2]
        "kl_policy_base"  KL(p || q) = sum_v p_v (log p_v - log q_v)
        "kl_base_policy"  KL(q || p)
        "entropy_policy"  H(p) = -sum_v p_v log p_v
        "entropy_base"    H(q)

    Works from log_softmax; the mixture is logaddexp(log p, log q) - ln 2. Terms with p_v = 0 count
    0 (0 log 0 = 0), so a probability that underflows gives no nan: with finite logits every value
    is finite (e.g. logits [0, -1e4] vs [-1e4, 0] give JS = ln 2 and KL ~ 1e4). KL is +inf only
    when q has an exact zero (a -inf logit) where p has mass. Differentiable-agnostic: run it under
    torch.no_grad when no gradient is wanted.
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_p.shape)} vs "
                         f"{tuple(logits_q.shape)}")
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return divergences_from_logprobs(logp, logq)


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _valid_states(model, batch: RolloutBatch, mask: Tensor,
                  share_prompt: bool) -> tuple[Tensor, bool]:
    """(states (N, H) or logits (N, V) at the valid response positions, whether they are hidden)."""
    device = _device(model)
    if batch.response_ids.device != device:
        batch = batch.to(device)
    mask = mask.to(device)
    plain = has_plain_head(model)
    states = response_states(model, batch, share_prompt, want_hidden=plain)  # (B, T, H|V)
    return states[mask], plain


def _chunk_logits(model, states: Tensor, is_hidden: bool, start: int, end: int,
                  temperature: float, device: torch.device) -> Tensor:
    """(end - start, V) float32 logits on `device`, divided by the temperature."""
    part = states[start:end]
    logits = model.get_output_embeddings()(part) if is_hidden else part
    logits = logits.float().to(device)
    if temperature and temperature != 1.0:
        logits = logits / temperature
    return logits


def response_divergences(policy, base, batch: RolloutBatch, *, temperature: float = 1.0,
                         chunk_tokens: int = 512, share_prompt: bool = True) -> dict[str, Tensor]:
    """Per-token divergences between `policy` and `base` on the batch's responses.

    policy, base: causal LMs sharing a tokenizer; batch: a RolloutBatch (B, P) prompts, (B, T)
    responses. Returns a dict of (B, T) float32 tensors on the policy's device, 0 where
    response_mask == 0 (T is the batch's own response width, padding columns included):

        "js", "kl_policy_base", "kl_base_policy", "entropy_policy", "entropy_base"
        "dlogp"  log pi_policy(y_t) - log pi_base(y_t) of the sampled token y_t

    The distributions are softmax(logits / temperature) of each model given prompt + y_<t.
    Runs under torch.no_grad. Padding shared by every row is trimmed first (`trim_padding`).
    Memory: each model's (B, T, H) hidden states once, then the LM heads on at most `chunk_tokens`
    valid positions at a time (see the module docstring; non-plain-head models hold (B, T, V)).
    Raises ValueError when the two LM heads have different output sizes.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    v_policy, v_base = _vocab_size(policy), _vocab_size(base)
    if v_policy != v_base:
        raise ValueError(f"policy and base must share a vocabulary: policy LM head has {v_policy} "
                         f"outputs, base LM head has {v_base}")
    device = _device(policy)
    full_mask = batch.response_mask.to(device).bool()
    out = {k: torch.zeros(full_mask.shape, dtype=torch.float32, device=device)
           for k in RESPONSE_KEYS}
    n = int(full_mask.sum())
    if n == 0:
        return out

    view = trim_padding(batch)
    mask = view.response_mask.bool()
    flat = {k: torch.empty(n, dtype=torch.float32, device=device) for k in RESPONSE_KEYS}
    with torch.no_grad():
        targets = view.response_ids.to(device)[mask.to(device)]          # (N,)
        states_p, hidden_p = _valid_states(policy, view, mask, share_prompt)
        states_b, hidden_b = _valid_states(base, view, mask, share_prompt)
        for start in range(0, n, chunk_tokens):
            end = min(start + chunk_tokens, n)
            logp = torch.log_softmax(
                _chunk_logits(policy, states_p, hidden_p, start, end, temperature, device), dim=-1)
            logb = torch.log_softmax(
                _chunk_logits(base, states_b, hidden_b, start, end, temperature, device), dim=-1)
            chosen = targets[start:end].unsqueeze(-1)
            dlogp = logp.gather(-1, chosen) - logb.gather(-1, chosen)
            flat["dlogp"][start:end] = dlogp.squeeze(-1)
            div = divergences_from_logprobs(logp, logb)
            del logp, logb
            for key, value in div.items():
                flat[key][start:end] = value
    # trimming drops only columns with no valid token, so the valid positions of the trimmed and
    # the full mask coincide in row-major order
    for k in RESPONSE_KEYS:
        out[k][full_mask] = flat[k]
    return out


def mean_over_valid(values: Tensor, mask: Tensor) -> float:
    """Mean of values (B, T) over positions with mask (B, T) != 0; 0.0 when none is valid."""
    valid = mask.bool()
    count = int(valid.sum())
    if count == 0:
        return 0.0
    return float(values[valid].double().sum() / count)
