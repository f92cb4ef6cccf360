"""What keeps a run from losing or corrupting work: checkpoint cadence, the refusal of non-finite
steps, and the warning for a run with nothing left to learn.

A step whose loss, gradient norm or reward is not finite is refused (`pivotal.update` skips its
optimizer steps, so the weights, the optimizer state and the schedule do not move); after
`train.max_bad_steps` consecutive refused steps the run stops with a `NonFiniteError` naming the
first bad quantity and its step. Weights are checked before every checkpoint.
"""

from __future__ import annotations

import time

import torch

from .errors import NonFiniteError


class CheckpointClock:
    """When to checkpoint: every `every_steps` steps and/or once `every_minutes` have passed."""

    def __init__(self, every_steps: int, every_minutes: float):
        self.every_steps, self.every_seconds = every_steps, every_minutes * 60.0
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self.last >= self.every_seconds
        return by_steps or by_time

    def saved(self) -> None:
        self.last = time.monotonic()


class StepChecks:
    """Bookkeeping across steps: consecutive refused steps and consecutive all-agree steps."""

    def __init__(self, max_bad_steps: int, warn_zero_variance_steps: int, say):
        self.max_bad_steps, self.warn_after, self.say = max_bad_steps, warn_zero_variance_steps, say
        self.bad: list[tuple[int, str]] = []  # (step, cause) of the current run of refused steps
        self.agreeing = 0

    def after_step(self, step: int, metrics: dict) -> None:
        """Raise NonFiniteError after too many refused steps; warn once per all-agree streak."""
        cause = metrics.get("nonfinite")
        if cause is not None and not metrics.get("optimizer_steps"):
            self.bad.append((step, cause))
            if len(self.bad) >= self.max_bad_steps:
                first_step, first_cause = self.bad[0]
                raise NonFiniteError(f"non-finite {first_cause} at step {first_step}, and "
                                     f"{len(self.bad)} consecutive steps refused for non-finite "
                                     f"values (train.max_bad_steps={self.max_bad_steps})")
        else:
            self.bad.clear()
        if metrics.get("zero_variance_groups") == 1.0:
            self.agreeing += 1
            if self.agreeing == self.warn_after:
                self.say(f"warning: every group's rewards agreed in the last {self.agreeing} "
                         f"steps: nothing to learn (a collapsed or hopeless policy?); entropy "
                         f"{metrics.get('entropy', float('nan')):.3f}, truncation rate "
                         f"{metrics.get('truncation_rate', float('nan')):.2f}, reward "
                         f"{metrics.get('reward', float('nan')):.3f}")
        else:
            self.agreeing = 0


def check_finite_weights(modules, step: int) -> None:
    """NonFiniteError if any parameter of `modules` holds a NaN or inf (never checkpoint those)."""
    for module in modules:
        for name, param in module.named_parameters():
            local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard
            if not torch.isfinite(local).all():
                raise NonFiniteError(f"refusing to checkpoint step {step}: parameter '{name}' "
                                     f"is not finite")


def frozen_weight_fraction(params, lr: float) -> float:
    """The fraction of the weights an optimizer step of size `lr` cannot move: those stored in a
    16-bit float whose half-ulp exceeds `lr` (the update rounds back to the old value). An
    AdamW step is about `lr` per weight, so a bfloat16 policy (7 significand bits: half-ulp
    2^-8 |w| at worst) trained at lr 1e-6 keeps almost every weight it has. 0 for float32 and up.

    params: tensors of any shape; lr: the step size. Returns a number in [0, 1].
    """
    frozen = total = 0
    with torch.no_grad():
        for p in params:
            if p.dtype not in (torch.bfloat16, torch.float16) or p.numel() == 0:
                continue
            w = p.detach().abs().float()
            # ulp(w) = eps * 2^floor(log2 |w|) for normal numbers; 0 stays movable
            ulp = torch.finfo(p.dtype).eps * torch.exp2(torch.floor(torch.log2(w)))
            frozen += int(((w > 0) & (ulp / 2 > lr)).sum())
            total += p.numel()
    return frozen / total if total else 0.0


def low_precision_warning(params, lr: float, dtype: str) -> str | None:
    """A warning when most trained weights are too coarse for the step size, else None."""
    frozen = frozen_weight_fraction(params, lr)
    if frozen < 0.1:
        return None
    return (f"model.dtype={dtype}: an optimizer step of optim.lr={lr:g} is below half a {dtype} "
            f"ulp for {frozen:.0%} of the trained weights, so they will not change. Train in "
            f"float32 (with dist.strategy=fsdp, dist.mixed_precision=bfloat16 computes in "
            f"bfloat16 and keeps float32 weights) or raise optim.lr")
