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
    "context_logprobs"   batch.extras["context_logprobs"] (B, T): the sampling policy's log-probs of
                         the same tokens with a hint in the prompt (`pivotal.hints`; the hint
                         options are the credit's `hint_source`, `hint_tokens`, `hint_answers`)
    "progress"           training progress in [0, 1] (first step 0, last step 1), passed as the
                         `progress` keyword (annealed strengths)

Additive credit. A credit declared `@additive_credit(active)` returns, when `active(**options)`,
a term added to the advantages (A' = A + term) instead of a multiplier.

Mini-batch statistics. The trainer calls a credit function once per micro-batch, but a method may
normalise over the whole mini-batch (the divergence credit's mean / max). Such a method declares
`@minibatch_statistics(fn)`: `fn(batch, **options) -> {name: tensor}` runs once on the mini-batch
before it is split, and the credit function receives the result as its `stats` keyword. Each name
ends in `_sum` or `_max`, which says how the values of several parts combine (added, or the
maximum), so that statistics of row subsets can be merged, across micro-batches or processes.

Rollout statistics. A credit whose multiplier needs whole groups (Δlog p's ppl-norm standardises
each response within its group) declares `@rollout_statistics(fn)`: `fn(batch, **options) ->
{extras key: (B,) or (B, T) tensor}` runs once on the step's rollout batch after the advantages
(with data parallelism, on each rank's rows, which are whole groups), the results go into
batch.extras and follow the rows into every mini- and micro-batch.

Dropped rows. A method may leave whole responses out of the loss, and out of its denominators, by
a rule on the current policy (FIPO drops a response with more than one dual-clipped token). It
declares `@drops_rows(rule, active)`: `rule(batch, logprobs, **options) -> (B,) bool`, True for
the rows to drop, and `active(**options) -> bool`, whether the rule is on. The update evaluates it once per
mini-batch, from a no-grad pass of the current policy before the gradient passes (the weights do
not move within a mini-batch, so the rows it drops are the ones the released code drops per
micro-batch), and gives the dropped rows token weight 0, which removes them from the loss mask.
Right after a rollout the policy is the old policy, and the pass is skipped where the rule drops
nothing there (`on_policy_drops_none=True`, the default).

Options shared with the loss. A credit that must use the same value as one of the policy loss's
options (FIPO's IS filter and the loss's dual clip are one constant in the released code)
declares `@shares_loss_options({"credit_option": "loss_option"})`: `resolve_credit_options`
gives the credit the loss's value (configured or default) and refuses a different one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from pivotal.batch import RolloutBatch
from pivotal.registry import Registry

CREDITS: Registry = Registry("credit function")
register_credit = CREDITS.register

INPUTS = ("logprobs", "ref_logprobs", "entropy", "context_logprobs", "progress")
DIVERGENCE_INPUT = "divergence:"


def requires(rule: Iterable[str] | Callable[..., Iterable[str]]) -> Callable[[Callable], Callable]:
    """Decorator: record what a credit function reads (a set of input names, or a function of
    its options returning one) on `fn.requirements`."""

    def decorator(fn: Callable) -> Callable:
        fn.requirements = rule if callable(rule) else (lambda _names=frozenset(rule), **_: _names)
        return fn

    return decorator


def additive_credit(active: Callable[..., bool]) -> Callable[[Callable], Callable]:
    """Decorator: under options where `active(**options)`, the function's output is added to the
    advantages rather than multiplied (see the module docstring)."""

    def decorator(fn: Callable) -> Callable:
        fn.additive = active
        return fn

    return decorator


def credit_is_additive(fn: Callable, options: dict) -> bool:
    rule = getattr(fn, "additive", None)
    return bool(rule is not None and rule(**options))


def minibatch_statistics(stats_fn: Callable[..., dict[str, Tensor]]) -> Callable[[Callable], Callable]:
    """Decorator: the credit function normalises over the mini-batch; `stats_fn(batch, **options)`
    computes the statistics once per mini-batch (see the module docstring)."""

    def decorator(fn: Callable) -> Callable:
        fn.minibatch_statistics = stats_fn
        return fn

    return decorator


def rollout_statistics(stats_fn: Callable[..., dict[str, Tensor]]) -> Callable[[Callable], Callable]:
    """Decorator: `stats_fn(batch, **options)` fills batch.extras once per rollout batch (see the
    module docstring)."""

    def decorator(fn: Callable) -> Callable:
        fn.rollout_statistics = stats_fn
        return fn

    return decorator


def drops_rows(rule: Callable[..., Tensor], active: Callable[..., bool],
               on_policy_drops_none: bool = True) -> Callable[[Callable], Callable]:
    """Decorator: the credit function drops whole rows by `rule(batch, logprobs, **options)`
    (B,) bool, when `active(**options)` (see the module docstring)."""

    def decorator(fn: Callable) -> Callable:
        rule.active, rule.on_policy_drops_none = active, on_policy_drops_none
        fn.dropped_rows = rule
        return fn

    return decorator


def active_row_rule(fn: Callable, options: dict) -> Callable[..., Tensor] | None:
    """The credit's `drops_rows` rule when it is on under `options`, else None."""
    rule = getattr(fn, "dropped_rows", None)
    return rule if rule is not None and rule.active(**options) else None


def shares_loss_options(names: dict[str, str]) -> Callable[[Callable], Callable]:
    """Decorator: credit option -> the policy-loss option it must equal (module docstring)."""

    def decorator(fn: Callable) -> Callable:
        fn.shared_loss_options = dict(names)
        return fn

    return decorator


def resolve_credit_options(fn: Callable, options: dict, loss_fn: Callable,
                           loss_options: dict) -> dict:
    """The credit's options with its shared loss options filled in from the loss: the loss's
    configured value, else its default. A credit value that differs from the loss's raises
    ValueError; a loss without the option leaves the credit's own default."""
    out = dict(options)
    params = inspect.signature(loss_fn).parameters
    for mine, theirs in getattr(fn, "shared_loss_options", {}).items():
        if theirs in loss_options:
            value = loss_options[theirs]
        elif theirs in params and params[theirs].default is not inspect.Parameter.empty:
            value = params[theirs].default
        else:
            continue
        if mine in out and out[mine] != value:
            raise ValueError(f"{mine}={out[mine]} differs from the loss's {theirs}={value}; they "
                             f"are one constant (set algo.loss_options.{theirs} alone)")
        out[mine] = value
    return out


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
