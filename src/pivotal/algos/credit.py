"""Per-token credit assignment: a multiplier on the advantages, chosen by name.

Every entry has the signature

    fn(batch: RolloutBatch, logprobs (B, T) | None, **options) -> multiplier (B, T)

`logprobs` are the current policy's log-probs on this micro-batch (detached), for methods that
compare the current and the old policy (e.g. FIPO); None when they were not computed. The
objective (`pivotal.algos.objective`) trains on A' = A * multiplier. "identity" (all ones)
reproduces the plain estimator; the token-level methods (`pivotal.algos.token_credit`) register
here too.

What a credit function reads beyond the always-present batch fields (response_mask, old_logprobs,
advantages) it declares with `@requires(...)`, as a set of input names or a function of its
options returning one, resolved once at start-up by `credit_requirements`:

    "logprobs"           the current policy's log-probs (the `logprobs` argument)
    "ref_logprobs"       batch.ref_logprobs: a frozen reference model is loaded
    "entropy"            the current policy's entropy per response position on this micro-batch
                         (detached (B, T), from the same forward), passed as the `entropy` keyword
    "divergence:<kind>"  batch.divergence: per-token divergence of that kind (one of
                         `pivotal.divergence.DIVERGENCE_KINDS`) between the policy and the reference

Mini-batch statistics. The trainer calls a credit function once per micro-batch, but a method may
normalise over the whole mini-batch (the divergence credit's mean / max). Such a method declares
`@minibatch_statistics(fn)`: `fn(batch, **options) -> {name: tensor}` runs once on the mini-batch
before it is split, and the credit function receives the result as its `stats` keyword. Each name
ends in `_sum` or `_max`, which says how the values of several parts combine (added, or the
maximum), so that statistics of row subsets can be merged, across micro-batches or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from pivotal.batch import RolloutBatch
from pivotal.registry import Registry

CREDITS: Registry = Registry("credit function")
register_credit = CREDITS.register

INPUTS = ("logprobs", "ref_logprobs", "entropy")
DIVERGENCE_INPUT = "divergence:"


def requires(rule: Iterable[str] | Callable[..., Iterable[str]]) -> Callable[[Callable], Callable]:
    """Decorator: record what a credit function reads (a set of input names, or a function of
    its options returning one) on `fn.requirements`."""

    def decorator(fn: Callable) -> Callable:
        fn.requirements = rule if callable(rule) else (lambda _names=frozenset(rule), **_: _names)
        return fn

    return decorator


def minibatch_statistics(stats_fn: Callable[..., dict[str, Tensor]]) -> Callable[[Callable], Callable]:
    """Decorator: the credit function normalises over the mini-batch; `stats_fn(batch, **options)`
    computes the statistics once per mini-batch (see the module docstring)."""

    def decorator(fn: Callable) -> Callable:
        fn.minibatch_statistics = stats_fn
        return fn

    return decorator


def credit_requirements(fn: Callable, options: dict) -> frozenset[str]:
    """The input names `fn` needs under `options`, each checked against the known inputs."""
    from pivotal.divergence import DIVERGENCE_KINDS

    rule = getattr(fn, "requirements", None)
    names = frozenset(rule(**options)) if rule is not None else frozenset()
    for name in names:
        kind = name[len(DIVERGENCE_INPUT):] if name.startswith(DIVERGENCE_INPUT) else None
        if name not in INPUTS and kind not in DIVERGENCE_KINDS:
            raise ValueError(f"credit input '{name}' is unknown; known: {', '.join(INPUTS)}, "
                             f"{', '.join(DIVERGENCE_INPUT + k for k in DIVERGENCE_KINDS)}")
    return names


def merge_statistics(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Combine statistics of disjoint row subsets: `_sum` entries add, `_max` entries take the max."""
    out: dict[str, Tensor] = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = value
            elif key.endswith("_sum"):
                out[key] = out[key] + value
            elif key.endswith("_max"):
                out[key] = torch.maximum(out[key], value)
            else:
                raise ValueError(f"statistic '{key}' must end in '_sum' or '_max'")
    return out


@register_credit("identity")
def identity_credit(batch: RolloutBatch, logprobs: Tensor | None) -> Tensor:
    """All ones (B, T): every token keeps its response's advantage."""
    return torch.ones(batch.response_mask.shape, dtype=torch.float32,
                      device=batch.response_mask.device)
