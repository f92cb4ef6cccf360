"""The policy update: `epochs_per_rollout x mini_batches` optimizer steps over one rollout batch.

Each mini-batch is split into length-sorted micro-batches (gradient accumulation): each is padded
only to its own longest response, and every micro-batch's loss is divided by the whole mini-batch's
totals, so the gradient does not depend on how rows are grouped into micro-batches. Statistics a
credit function or an auxiliary loss normalises by are computed over the mini-batch before it is
split, for the same reason. The loss itself is `pivotal.algos.objective.policy_objective`.

On the first mini-batch after a rollout the policy *is* the sampling policy, so log pi_old is taken
from that same forward pass (exactly equal, no second forward); later mini-batches use the batch's
old_logprobs (the sampler's, or a recompute with `algo.old_logprobs=recompute`). Where pi_old is
the trainer's own value of the sampler's weights, the gap to the sampler's log-probs is logged
(`sampler_logprob_diff`, `_max`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .algos import CREDITS
from .algos.correction import logprob_mismatch
from .algos.objective import ObjectiveConfig, Totals, loss_mask, policy_objective
from .batch import RolloutBatch
from .logprobs import logprobs_from_states, policy_logprobs, response_hidden_states, trim_padding


def seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, step, round...)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (2**63)
    return h


@dataclass
class Mismatch:
    """Running token-weighted mean and max of |pi_old - pi_sampler| log-probs."""

    total: float = 0.0
    tokens: float = 0.0
    largest: float = 0.0

    def add(self, old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> None:
        gap, n = logprob_mismatch(old, sampler, mask), float(mask.sum())
        self.total += gap["sampler_logprob_diff"] * n
        self.tokens += n
        self.largest = max(self.largest, gap["sampler_logprob_diff_max"])

    def metrics(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        return {"sampler_logprob_diff": self.total / self.tokens,
                "sampler_logprob_diff_max": self.largest}


def trainable_parameters(model, auxiliary: list) -> list[torch.nn.Parameter]:
    """What the optimizer steps: the policy's parameters, then the auxiliary losses'."""
    return list(model.parameters()) + [p for aux in auxiliary for p in aux.parameters()]


class PolicyUpdate:
    """Runs the optimizer steps of one training step over a prepared rollout batch.

    The batch must carry advantages (and whatever the credit function requires); `auxiliary` are
    the run's `pivotal.auxiliary.AuxiliaryLoss` objects (their parameters are in `optimizer`).
    """

    def __init__(self, cfg, model, optimizer, scheduler, auxiliary: list):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.auxiliary = auxiliary
        self.objective = ObjectiveConfig.from_config(cfg)
        self.credit = CREDITS.get(cfg.algo.credit)
        self.credit_options = dict(cfg.algo.credit_options)
        self.credit_statistics = getattr(self.credit, "minibatch_statistics", None)
        self.want_states = any(aux.needs_hidden_states for aux in auxiliary)
        self.device = next(model.parameters()).device
        self.params = trainable_parameters(model, auxiliary)

    def __call__(self, batch: RolloutBatch, step: int) -> dict:
        """Every optimizer step of training step `step` over `batch`. Returns the metrics averaged
        over micro-batches by their response tokens, the mean grad norm and the mismatch."""
        cfg = self.cfg
        self.model.train()
        sums: dict[str, float] = {}
        weight_total = 0.0
        grad_norms, skipped = [], []
        mismatch = Mismatch()
        on_policy = True  # no optimizer step since the rollout: pi_theta == pi_old exactly
        for epoch in range(cfg.optim.epochs_per_rollout):
            gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, step, epoch, 7))
            order = torch.randperm(batch.size, generator=gen)
            for mini_idx in order.chunk(cfg.optim.mini_batches):
                mini = batch.select(mini_idx)
                totals = Totals(tokens=max(loss_mask(mini.response_mask, mini.token_weights)
                                           .sum().item(), 1.0),
                                seqs=mini.size, max_len=cfg.rollout.max_new_tokens)
                credit_stats = (self.credit_statistics(mini, **self.credit_options)
                                if self.credit_statistics is not None else None)
                by_length = torch.argsort(mini.response_lengths, stable=True)
                micros = [trim_padding(mini.select(idx)).to(self.device)
                          for idx in by_length.split(cfg.optim.micro_batch_size)]
                aux_stats = [aux.minibatch_statistics(self.model, micros, on_policy)
                             for aux in self.auxiliary]
                finite_loss = True
                for micro in micros:
                    m, finite = self._micro_step(micro, on_policy, totals, credit_stats,
                                                 aux_stats, mismatch)
                    finite_loss &= finite
                    w = micro.response_mask.sum().item()
                    weight_total += w
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w
                norm, cause = self._optimizer_step(None if finite_loss else "loss")
                if cause is None:
                    grad_norms.append(norm)
                    on_policy = False
                else:
                    skipped.append(cause)
        self.model.eval()
        out = {k: v / max(weight_total, 1e-9) for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        out["optimizer_steps"] = len(grad_norms)
        if skipped:  # refused steps: the weights, the optimizer and the schedule did not move
            out["skipped_optimizer_steps"] = len(skipped)
            out["nonfinite"] = skipped[0]
        out.update(mismatch.metrics())
        return out

    def _optimizer_step(self, cause: str | None) -> tuple[float, str | None]:
        """Clip (when optim.max_grad_norm > 0), step, zero the gradients. A non-finite loss
        (`cause`) or gradient norm refuses the step: the gradients are dropped and nothing moves.
        Returns the grad norm and the cause of a refusal (None when the step was taken)."""
        params = self.params
        if self.cfg.optim.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in params if p.grad is not None])))
        cause = cause or (None if math.isfinite(norm) else "grad_norm")
        if cause is None:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, cause

    def _micro_step(self, micro: RolloutBatch, on_policy: bool, totals: Totals,
                    credit_stats: dict | None, aux_stats: list[dict],
                    mismatch: Mismatch) -> tuple[dict, bool]:
        """Forward, objective and backward of one micro-batch. Returns its metrics and whether its
        loss is finite."""
        cfg = self.cfg
        entropy_grad = cfg.algo.entropy_coef > 0
        states = None
        if self.want_states:  # auxiliary heads read the trunk's states: compute them once
            states = response_hidden_states(self.model, micro, cfg.optim.share_prompt)
            logp, entropy = logprobs_from_states(self.model, states, micro, cfg.rollout.temperature,
                                                 with_entropy=True, entropy_grad=entropy_grad)
        else:
            logp, entropy = policy_logprobs(self.model, micro, cfg.rollout.temperature,
                                            with_entropy=True, entropy_grad=entropy_grad,
                                            share_prompt=cfg.optim.share_prompt)
        if on_policy:  # pi_theta is pi_old here: use the exact values, so ratios are exactly 1
            micro.old_logprobs = logp.detach()
        old = micro.old_logprobs
        if micro.sampler_logprobs is not None and (on_policy or cfg.algo.old_logprobs == "recompute"):
            mismatch.add(old, micro.sampler_logprobs, micro.response_mask)  # same weights
        options = self.credit_options if credit_stats is None else {**self.credit_options,
                                                                     "stats": credit_stats}
        multiplier = self.credit(micro, logp.detach(), **options)
        auxiliary = [aux.term(self.model, states, micro, logp, old, stats)
                     for aux, stats in zip(self.auxiliary, aux_stats)]
        loss, metrics = policy_objective(
            self.objective, totals, logprobs=logp, old_logprobs=old, advantages=micro.advantages,
            response_mask=micro.response_mask, credit=multiplier, token_weights=micro.token_weights,
            sampler_logprobs=micro.sampler_logprobs, ref_logprobs=micro.ref_logprobs,
            entropy=entropy, auxiliary=auxiliary)
        loss.backward()
        return metrics, math.isfinite(loss.item())
