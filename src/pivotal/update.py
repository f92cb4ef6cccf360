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

from .algos import CREDITS, LOSSES, credit_requirements, masked_mean
from .algos.correction import logprob_mismatch
from .algos.credit import active_row_rule, credit_is_additive, resolve_credit_options
from .algos.objective import ObjectiveConfig, Totals, loss_mask, policy_objective
from .batch import RolloutBatch
from .distributed import SINGLE, Runtime, TrainedModules, full_tensor, gradient_sync
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

    def reduced(self, rt: Runtime) -> Mismatch:
        """The same over every rank's tokens."""
        if not rt.active:
            return self
        parts = rt.gather_objects((self.total, self.tokens, self.largest))
        return Mismatch(sum(p[0] for p in parts), sum(p[1] for p in parts),
                        max(p[2] for p in parts))

    def metrics(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        return {"sampler_logprob_diff": self.total / self.tokens,
                "sampler_logprob_diff_max": self.largest}


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer steps: the parameters that train (with LoRA, the adapters and the
    auxiliary heads; otherwise all of them), in module order."""
    return [p for p in module.parameters() if p.requires_grad]


class PolicyUpdate:
    """Runs the optimizer steps of one training step over a prepared rollout batch.

    The batch must carry advantages (and whatever the credit function requires); `auxiliary` are
    the run's `pivotal.auxiliary.AuxiliaryLoss` objects (their parameters are in `optimizer`).

    Data parallelism: `trained` is the DDP / FSDP2 wrapper of `TrainedModules(model, auxiliary)`
    (`pivotal.distributed.wrap_for_training`) and `runtime` this rank. Each rank holds its own rows
    of every mini-batch; the loss is divided by the totals of the whole global mini-batch and
    multiplied by the world size (DDP and FSDP2 average the gradients over ranks), so the gradient
    is the single-process gradient of all ranks' rows, however they are split. Every rank runs the
    same number of micro-batches (a rank with fewer repeats its last one with weight 0, so that
    the collectives of the backward passes pair up), and gradients are reduced on the last one.
    """

    def __init__(self, cfg, model, optimizer, scheduler, auxiliary: list, trained=None,
                 runtime: Runtime = SINGLE):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.auxiliary, self.runtime = auxiliary, runtime
        self.trained = trained if trained is not None else TrainedModules(model, auxiliary)
        self.objective = ObjectiveConfig.from_config(cfg)
        self.credit = CREDITS.get(cfg.algo.credit)
        self.credit_options = resolve_credit_options(self.credit, cfg.algo.credit_options,
                                                     LOSSES.get(cfg.algo.loss), cfg.algo.loss_options)
        self.credit_drops = active_row_rule(self.credit, self.credit_options)
        self.credit_statistics = getattr(self.credit, "minibatch_statistics", None)
        inputs = credit_requirements(self.credit, self.credit_options)
        self.credit_reads_entropy = "entropy" in inputs
        self.credit_reads_progress = "progress" in inputs
        self.credit_adds = credit_is_additive(self.credit, self.credit_options)
        self.progress = 0.0  # of the step being trained: 0 at the first, 1 at the last
        self.want_states = any(aux.needs_hidden_states for aux in auxiliary)
        self.device = next(model.parameters()).device
        self.params = trainable_parameters(self.trained)

    def __call__(self, batch: RolloutBatch, step: int) -> dict:
        """Every optimizer step of training step `step` over `batch`. Returns the metrics averaged
        over micro-batches by their response tokens (over every rank's), the mean grad norm and
        the mismatch."""
        cfg, rt = self.cfg, self.runtime
        self.model.train()
        self.progress = step / max(1, cfg.train.steps - 1)
        sums: dict[str, float] = {}
        weight_total = 0.0
        grad_norms, skipped = [], []
        mismatch = Mismatch()
        on_policy = True  # no optimizer step since the rollout: pi_theta == pi_old exactly
        dropped_rows = 0
        for epoch in range(cfg.optim.epochs_per_rollout):
            gen = torch.Generator().manual_seed(seed_for(cfg.train.seed, step, epoch, 7))
            order = torch.randperm(batch.size, generator=gen)
            # with several ranks, exactly mini_batches parts everywhere (chunk can give fewer,
            # and a rank whose rows run out must still join every optimizer step)
            parts = (order.tensor_split(cfg.optim.mini_batches) if rt.active
                     else order.chunk(cfg.optim.mini_batches))
            for mini_idx in parts:
                mini = batch.select(mini_idx)
                credit_stats = (rt.reduce_statistics(self.credit_statistics(mini, **self.credit_options))
                                if self.credit_statistics is not None else None)
                # packed rows hold whole groups, so a group's rows go together; padded rows
                # waste least beside rows of their own length
                order_in_mini = torch.argsort(mini.group_ids if cfg.optim.pack_responses
                                              else mini.response_lengths, stable=True)
                micros = [trim_padding(mini.select(idx)).to(self.device)
                          for idx in order_in_mini.split(cfg.optim.micro_batch_size)]
                n_real, n_micro = len(micros), rt.max_int(len(micros))
                if not micros:  # this rank has no rows here: one row of the batch, weight 0
                    micros = [trim_padding(batch.select(order[:1])).to(self.device)]
                padded = [micros[min(i, len(micros) - 1)] for i in range(n_micro)]
                aux_stats = [rt.reduce_statistics(aux.minibatch_statistics(
                    self.trained, padded, n_real, on_policy)) for aux in self.auxiliary]
                dropped_rows += self._drop_rows(micros, n_real, n_micro, on_policy)
                tokens, seqs = rt.sum_floats(sum(
                    loss_mask(m.response_mask, m.token_weights).sum().item() for m in micros[:n_real]),
                    mini.size)
                totals = Totals(tokens=max(tokens, 1.0), seqs=int(seqs),
                                max_len=cfg.rollout.max_new_tokens)
                finite_loss = True
                for i, micro in enumerate(padded):
                    with gradient_sync(self.trained, i == n_micro - 1):
                        m, finite = self._micro_step(micro, on_policy, totals, credit_stats,
                                                     aux_stats, mismatch, padding=i >= n_real)
                    if i >= n_real:
                        continue
                    finite_loss &= finite
                    w = micro.response_mask.sum().item()
                    weight_total += w
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w
                finite_loss = rt.all_true(finite_loss)
                norm, cause = self._optimizer_step(None if finite_loss else "loss")
                if cause is None:
                    grad_norms.append(norm)
                    on_policy = False
                else:
                    skipped.append(cause)
        self.model.eval()
        sums, weight_total = _sum_weighted(rt, sums, weight_total)
        out = {k: v / max(weight_total, 1e-9) for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        out["optimizer_steps"] = len(grad_norms)
        if skipped:  # refused steps: the weights, the optimizer and the schedule did not move
            out["skipped_optimizer_steps"] = len(skipped)
            out["nonfinite"] = skipped[0]
        out.update(mismatch.reduced(rt).metrics())
        if self.credit_drops is not None:  # rows over every epoch's mini-batches, all ranks
            out["dropped_rows_frac"] = rt.sum_floats(dropped_rows)[0] / max(
                rt.sum_floats(batch.size)[0] * cfg.optim.epochs_per_rollout, 1)
        return out

    @torch.no_grad()
    def _drop_rows(self, micros: list[RolloutBatch], n_real: int, n_micro: int,
                   on_policy: bool) -> int:
        """Give the rows the credit's `drops_rows` rule drops (`pivotal.algos.credit`) token weight
        0 on this mini-batch's micro-batches, in place, from one no-grad pass of the current policy
        (every rank runs `n_micro` forwards, so FSDP2's all-gathers pair up). Returns the number of
        rows dropped on this rank."""
        if self.credit_drops is None or (on_policy and self.credit_drops.on_policy_drops_none):
            return 0
        cfg, dropped = self.cfg, 0
        for i in range(n_micro):
            micro = micros[min(i, len(micros) - 1)]
            logp = self.trained(lambda policy, m=micro: policy_logprobs(
                policy, m, cfg.rollout.temperature, share_prompt=cfg.optim.share_prompt,
                pack=cfg.optim.pack_responses)[0])
            if i >= n_real:
                continue
            drop = self.credit_drops(micro, logp, **self.credit_options)
            weights = (micro.token_weights if micro.token_weights is not None
                       else torch.ones_like(micro.response_mask, dtype=torch.float32))
            micro.token_weights = torch.where(drop[:, None], torch.zeros_like(weights), weights)
            dropped += int(drop.sum())
        return dropped

    def _optimizer_step(self, cause: str | None) -> tuple[float, str | None]:
        """Clip (when optim.max_grad_norm > 0), step, zero the gradients. A non-finite loss
        (`cause`) or gradient norm refuses the step: the gradients are dropped and nothing moves.
        Returns the grad norm and the cause of a refusal (None when the step was taken)."""
        params = self.params
        if self.cfg.optim.max_grad_norm > 0:  # FSDP2: a norm over every rank's shards
            norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params,
                                                                    self.cfg.optim.max_grad_norm)))
        elif self.runtime.active:
            norm = float(full_tensor(torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None])))
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
                    mismatch: Mismatch, padding: bool = False) -> tuple[dict, bool]:
        """Forward, objective and backward of one micro-batch. Returns its metrics and whether its
        loss is finite. A `padding` micro-batch (data parallelism: this rank has run out of rows)
        adds nothing: its loss is multiplied by 0 and it records no mismatch."""
        cfg = self.cfg
        entropy_grad = cfg.algo.entropy_coef > 0

        def forward(policy):  # every use of a trained parameter, inside the wrapped forward
            states = None
            if self.want_states:  # auxiliary heads read the trunk's states: compute them once
                states = response_hidden_states(policy, micro, cfg.optim.share_prompt,
                                                cfg.optim.pack_responses)
                logp, entropy = logprobs_from_states(policy, states, micro, cfg.rollout.temperature,
                                                     with_entropy=True, entropy_grad=entropy_grad)
            else:
                logp, entropy = policy_logprobs(policy, micro, cfg.rollout.temperature,
                                                with_entropy=True, entropy_grad=entropy_grad,
                                                share_prompt=cfg.optim.share_prompt,
                                                pack=cfg.optim.pack_responses)
            if on_policy:  # pi_theta is pi_old here: use the exact values, so ratios are exactly 1
                micro.old_logprobs = logp.detach()
            old = micro.old_logprobs
            if not padding and micro.sampler_logprobs is not None and (
                    on_policy or cfg.algo.old_logprobs == "recompute"):
                mismatch.add(old, micro.sampler_logprobs, micro.response_mask)  # same weights
            options = dict(self.credit_options)
            if credit_stats is not None:
                options["stats"] = credit_stats
            if self.credit_reads_entropy:
                options["entropy"] = entropy.detach()
            if self.credit_reads_progress:
                options["progress"] = self.progress
            credit = self.credit(micro, logp.detach(), **options)
            # an additive credit's term joins the advantages; any other multiplies them
            advantages, multiplier = ((micro.advantages + credit, None) if self.credit_adds
                                      else (micro.advantages, credit))
            auxiliary = [aux.term(policy, states, micro, logp, old, stats)
                         for aux, stats in zip(self.auxiliary, aux_stats)]
            loss, metrics = policy_objective(
                self.objective, totals, logprobs=logp, old_logprobs=old,
                advantages=advantages, response_mask=micro.response_mask, credit=multiplier,
                token_weights=micro.token_weights, sampler_logprobs=micro.sampler_logprobs,
                ref_logprobs=micro.ref_logprobs, entropy=entropy, auxiliary=auxiliary)
            if self.credit_adds:
                metrics["credit_add_mean"] = masked_mean(credit, micro.response_mask).item()
            return loss, metrics

        loss, metrics = self.trained(forward)
        if self.runtime.active:  # the wrappers average gradients over ranks; we want their sum
            loss = loss * (0.0 if padding else float(self.runtime.world))
        loss.backward()
        return metrics, math.isfinite(loss.item())


def _sum_weighted(rt: Runtime, sums: dict[str, float], weight: float) -> tuple[dict, float]:
    """Token-weighted metric sums and their weight, added over ranks (keys in any order)."""
    if not rt.active:
        return sums, weight
    parts = rt.gather_objects((sums, weight))
    total: dict[str, float] = {}
    for part, _ in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total, sum(w for _, w in parts)
