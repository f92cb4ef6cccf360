"""What the update reads, added to a scored rollout batch: the stage between scoring and the update.

The configured methods say what they need (a KL term or a credit's `@requires` reads reference
log-probs; a credit may require a per-token divergence), resolved once when the stage is built;
this module gathers exactly that, with no branch on a method's name.
"""

from __future__ import annotations

import inspect
import time

import torch

from .algos import (
    ADVANTAGES,
    CREDITS,
    advantage_inputs,
    credit_requirements,
    kl_reward_penalty,
    trained_rows,
    truncation_mask,
)
from .algos.correction import rollout_correction_weights
from .algos.credit import DIVERGENCE_INPUT
from .algos.objective import rollout_correction_of
from .algos.self_distill import CONTEXT_LOGPROBS_KEY
from .batch import ADVANTAGE_WEIGHT_KEY, RolloutBatch
from .distributed import SINGLE
from .divergence import response_divergences
from .frozen import ShardedFrozen, run_frozen
from .hints import context_batch
from .logprobs import logprobs_no_grad, micro_batch_count, per_token_no_grad, policy_token_stats


class StepInputs:
    """Fills a batch in place with the sampler's log-probs, reference log-probs, divergences,
    recomputed pi_old, the KL reward penalty, advantages and token weights.

    `model` is a whole (unsharded) copy of the current policy: under FSDP2 the rollout replica,
    whose weights were refreshed before this step's rollout; the reference and the shift
    monitor's initial copy are then sharded (`pivotal.frozen`). With data parallelism, an
    advantage estimator with batch-level statistics gets `runtime.sum` as its `all_ranks` keyword.
    """

    def __init__(self, cfg, model, ref_model, shift_monitor, runtime=None):
        self.cfg, self.model, self.ref_model, self.shift_monitor = cfg, model, ref_model, shift_monitor
        credit = CREDITS.get(cfg.algo.credit)
        inputs = credit_requirements(credit, cfg.algo.credit_options)
        self.credit_statistics = getattr(credit, "rollout_statistics", None)
        self.reads_context = "context_logprobs" in inputs
        self.divergence_kinds = sorted(n[len(DIVERGENCE_INPUT):] for n in inputs
                                       if n.startswith(DIVERGENCE_INPUT))
        self.advantage = ADVANTAGES.get(cfg.algo.advantage)
        self.advantage_options = dict(cfg.algo.advantage_options)
        self.advantage_inputs = advantage_inputs(self.advantage, self.advantage_options)
        if (runtime is not None and runtime.active
                and "all_ranks" in inspect.signature(self.advantage).parameters):
            self.advantage_options["all_ranks"] = runtime.sum
        self.runtime = runtime if runtime is not None else SINGLE
        self.device = next(model.parameters()).device
        self._trained = None  # the last filled batch's trained rows (B,) bool, or None: all

    def logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) no-grad log-probs of the batch's responses under `model` (plain or a sharded
        frozen model), micro-batched."""
        optim, forwards = self.cfg.optim, self._forwards(model, batch)
        return run_frozen(model, lambda m: logprobs_no_grad(
            m, batch, self.cfg.rollout.temperature, optim.share_prompt, optim.micro_batch_size,
            optim.pack_responses, forwards))

    def _forwards(self, model, batch: RolloutBatch) -> int:
        """How many micro-batch forwards every rank runs through a sharded frozen `model` (the
        most any rank has, so that their all-gathers pair up); 0 for a plain model."""
        if not isinstance(model, ShardedFrozen):
            return 0
        return self.runtime.max_int(micro_batch_count(batch.size, self.cfg.optim.micro_batch_size))

    def policy_stats(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """The "policy_stats" advantage input: the current (old) policy's log-probs and
        sum_v pi(v)^2 per response position (B, T), from one no-grad pass, micro-batched."""
        cfg = self.cfg

        def compute(view):
            logp, sum_sq = policy_token_stats(self.model, view, cfg.rollout.temperature,
                                              cfg.optim.share_prompt, cfg.optim.pack_responses)
            return {"logprobs": logp, "sum_sq_probs": sum_sq}

        return per_token_no_grad(batch, compute, cfg.optim.micro_batch_size, self.device)

    def __call__(self, batch: RolloutBatch) -> dict:
        """Fill `batch` in place; returns the shift monitor's metrics (if it is on)."""
        cfg, metrics = self.cfg, {}
        batch.sampler_logprobs = batch.old_logprobs.clone()
        if self.ref_model is not None:
            batch.ref_logprobs = self.logprobs(self.ref_model, batch)
        if self.shift_monitor is not None:
            metrics.update(self.shift_monitor(batch, self.logprobs))
        if self.reads_context:  # the old policy's log-probs with the hint in the prompt
            t0 = time.perf_counter()
            batch.extras[CONTEXT_LOGPROBS_KEY] = self.logprobs(self.model, context_batch(batch, 0))
            metrics["time_context_logprobs"] = time.perf_counter() - t0
        if self.divergence_kinds:  # per-token divergence: old policy vs the frozen reference
            forwards = self._forwards(self.ref_model, batch)
            divergences = run_frozen(self.ref_model, lambda ref: per_token_no_grad(
                batch, lambda view: response_divergences(
                    self.model, ref, view, temperature=cfg.rollout.temperature,
                    share_prompt=cfg.optim.share_prompt),
                cfg.optim.micro_batch_size, self.device, forwards))
            batch.divergence = divergences[self.divergence_kinds[0]]
        stats = self.policy_stats(batch) if "policy_stats" in self.advantage_inputs else None
        if cfg.algo.old_logprobs == "recompute":  # the stats pass gives the same log-probs
            batch.old_logprobs = stats["logprobs"] if stats else self.logprobs(self.model, batch)
        if cfg.algo.kl_in_reward:  # after the recompute: pi_old is the trainer's where it exists
            batch.rewards = batch.rewards - kl_reward_penalty(
                batch.old_logprobs, batch.ref_logprobs, batch.response_mask, coef=cfg.algo.kl_beta)
        extra = dict(stats or {})
        if "correct" in self.advantage_inputs:
            extra["correct"] = batch.correct.bool()
        if "rollout_is_weights" in self.advantage_inputs:
            correction = rollout_correction_of(cfg.algo)
            extra["is_weights"] = rollout_correction_weights(
                batch.old_logprobs, batch.sampler_logprobs, batch.response_mask,
                correction)[0] if correction.active else None
        batch.advantages = self.advantage(batch.rewards, batch.group_ids, batch.response_mask,
                                          **self.advantage_options, **extra)
        weight = batch.extras.get(ADVANTAGE_WEIGHT_KEY)  # e.g. 0 on prompts without a true label
        if weight is not None:
            batch.advantages = batch.advantages * weight.to(batch.advantages)[:, None]
        if cfg.reward.mask_truncated:
            batch.token_weights = truncation_mask(batch.truncated, batch.response_mask)
        if self.credit_statistics is not None:  # whole-group inputs of the credit, once per step
            batch.extras.update(self.credit_statistics(batch, **cfg.algo.credit_options))
        self._trained = trained_rows(self.advantage, extra, self.advantage_options)
        return metrics

    def trained_rows(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict]:
        """The rows of a filled batch that the update trains on: all of them, unless the advantage
        estimator declares a subset (`pivotal.algos.advantages.trains_on`; PSR keeps the correct
        responses). Returns the batch (a new one when rows were left out) and the kept share."""
        keep, self._trained = self._trained, None
        if keep is None:
            return batch, {}
        share = {"trained_rows_frac": keep.float().mean().item() if batch.size else 0.0}
        return batch.select(keep.nonzero().squeeze(-1)), share
