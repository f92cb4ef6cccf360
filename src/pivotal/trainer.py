"""The RLVR training loop: rollout -> reward -> advantage -> credit -> clipped policy updates.

One training step samples `prompts_per_step x group_size` responses, scores them, computes (B, T)
advantages, then runs `epochs_per_rollout x mini_batches` optimizer steps over that batch with
gradient accumulation over micro-batches. Every algorithmic choice is a registry name in config; this
file never branches on a method's name.

Simplifications: one process, one device. The transformers engine shares the policy's weights (no
copy, sync is free); the vLLM engine holds its own copy, refreshed in place before the next rollout
after every update (`time_sync`). On the first mini-batch after a rollout the policy *is* the
sampling policy, so log pi_old is taken from that same forward pass (exactly equal, no second
forward); later mini-batches use the sampler's log-probs (or a recompute,
`algo.old_logprobs=recompute`). The sampler's own log-probs stay in `extras["sampler_logprobs"]`
for the sampler/trainer gap metric and truncated importance sampling (`algo.tis_cap`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .algos import (
    ADVANTAGES,
    AGGREGATIONS,
    CREDITS,
    KL_ESTIMATORS,
    LOSSES,
    dynamic_sampling_mask,
    group_stats,
    kl_reward_penalty,
    overlong_penalty,
)
from .algos.correction import logprob_mismatch, truncated_is_weights
from .algos.labels import agreement, corrective_advantage_gap, majority_labels, pseudo_label_accuracy, select_by_budget
from .algos.occ import occ_coefficients
from .batch import RolloutBatch
from .config import Config, reference_users, save_config, validate_config
from .divergence import response_divergences
from .evaluate import evaluate
from .logprobs import (
    has_plain_head,
    logprobs_from_states,
    policy_logprobs,
    response_hidden_states,
    trim_padding,
)
from .metrics import MetricsLogger
from .models import load_model, tokenizer_fingerprint
from .mtp import MTPHeads, mtp_logprobs
from .plots import plot_run
from .rewards import RewardScorer, extracted
from .rollout import SamplingParams, build_engine
from .shift_monitor import monitored_rows, shift_metrics
from .tasks import build_task, format_prompt

log = logging.getLogger("pivotal.trainer")


def _seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, step, round...)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (2**63)
    return h


class Trainer:
    def __init__(self, cfg: Config, progress: bool = True):
        validate_config(cfg)
        self.cfg = cfg
        self.progress = progress
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        torch.manual_seed(cfg.train.seed)
        self.task = build_task(cfg.task.name, **cfg.task.options)
        self.scorer = RewardScorer(_with_extraction(cfg.reward.components, cfg.reward.extract),
                                   timeout_s=cfg.reward.timeout_s)
        self.model, self.tokenizer = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype,
                                                cfg.model.cache_dir, seed=cfg.train.seed)
        self.device = next(self.model.parameters()).device
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        # beta = 0 loads no reference model (saves its memory and forward passes), unless the
        # credit method reads reference log-probs (e.g. OWPO); by default the initial policy
        self._credit = CREDITS.get(cfg.algo.credit)
        self._credit_needs = set(getattr(self._credit, "needs", ()))
        self.ref_model = self._load_reference() if reference_users(cfg) else None
        self.initial_model = None  # the shift monitor's frozen initial policy
        if cfg.train.shift_monitor:
            self.initial_model = self.ref_model if self._reference_is_initial() else \
                copy.deepcopy(self.model).eval().requires_grad_(False)
        self.engine = build_engine(self.model, self.tokenizer, cfg.rollout, cfg.train.seed)
        self._engine_stale = False  # the policy changed since the engine last took its weights
        self._timing = {"sync": 0.0, "generate": 0.0, "score": 0.0, "train": 0.0}
        self._mismatch = {"sum": 0.0, "n": 0.0, "max": 0.0}
        self.mtp = self._build_mtp_heads() if cfg.algo.mtp_heads else None
        self.optimizer = torch.optim.AdamW(self._trainable(), lr=cfg.optim.lr,
                                           betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.step = 0
        self.cursor = 0  # index of the next training problem
        self.labels_queried = 0  # true labels read for training (active-label modes)
        self.history: dict = {}  # before/after evaluations
        self.eval_problems = self.task.eval_problems()[: cfg.eval.size]
        self._advantage = ADVANTAGES.get(cfg.algo.advantage)
        self._loss = LOSSES.get(cfg.algo.loss)
        self._aggregate = AGGREGATIONS.get(cfg.algo.aggregation)
        self._kl = KL_ESTIMATORS.get(cfg.algo.kl_estimator)

    def _build_mtp_heads(self) -> MTPHeads:
        """OCC's multi-token-prediction heads (`pivotal.mtp`), on the policy's device and dtype."""
        if not has_plain_head(self.model):
            raise ValueError(f"algo.mtp_heads needs a model whose LM head is a linear map of its "
                             f"hidden states; '{self.cfg.model.name}' is a "
                             f"{self.model.config.model_type} model")
        param = next(self.model.parameters())
        return MTPHeads(self.model.config.hidden_size, self.cfg.algo.mtp_heads).to(
            device=param.device, dtype=param.dtype)

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer steps: the policy's, and the MTP heads' when attached."""
        params = list(self.model.parameters())
        return params + list(self.mtp.parameters()) if self.mtp is not None else params

    # ------------------------------------------------------------------ rollout and scoring
    def _prompts(self, problems) -> list[str]:
        t = self.cfg.task
        return [format_prompt(p, self.tokenizer, t.instruction, t.system_prompt) for p in problems]

    def _sync_engine(self) -> float:
        """Give the rollout engine the current weights if they changed. Returns the seconds."""
        if not self._engine_stale:
            return 0.0
        t0 = time.perf_counter()
        self.engine.sync_weights(self.model)
        self._engine_stale = False
        return time.perf_counter() - t0

    def _sample_round(self, round_index: int, group_offset: int) -> RolloutBatch:
        cfg = self.cfg
        self._timing["sync"] += self._sync_engine()
        problems = [self.task.train_problem(self.cursor + i)
                    for i in range(cfg.rollout.prompts_per_step)]
        self.cursor += len(problems)
        params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                                cfg.rollout.top_p, cfg.rollout.top_k)
        t0 = time.perf_counter()
        batch, texts = self.engine.generate(self._prompts(problems), cfg.rollout.group_size, params,
                                            seed=_seed_for(cfg.train.seed, self.step, round_index))
        t1 = time.perf_counter()
        G = cfg.rollout.group_size
        expanded = [p for p in problems for _ in range(G)]
        scores = self.scorer.score(texts, expanded)
        batch.rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float32)
        # `correct` always uses the ground truth: a diagnostic, also under active labels
        batch.correct = torch.tensor([s["correct"] for s in scores], dtype=torch.bool)
        if cfg.reward.labels != "all":
            batch.rewards = self._active_label_rewards(texts, expanded, batch)
        if cfg.reward.overlong_buffer > 0:
            batch.rewards = batch.rewards + overlong_penalty(
                batch.response_lengths, cfg.rollout.max_new_tokens, cfg.reward.overlong_buffer,
                cfg.reward.overlong_factor)
        batch.group_ids = batch.group_ids + group_offset
        batch.extras = {"text": texts, "problem_id": [p.id for p in expanded]}
        self._timing["generate"] += t1 - t0
        self._timing["score"] += time.perf_counter() - t1
        return batch

    def _active_label_rewards(self, texts: list[str], problems: list, batch: RolloutBatch):
        """Training rewards when only some prompts' true labels may be used (CAG / CARE).

        Every group gets a pseudo-label (majority vote of its extracted answers). The true label
        is used for the `reward.label_budget` share of groups chosen by `reward.labels`; the rest
        train on their pseudo-label. Returns (B,) rewards and records the label metrics.
        The training signal reads the truth only for the chosen groups ('agreement' chooses
        without it; 'cag_oracle' peeks at every label to choose, as an upper bound). The logged
        accuracy and pseudo-label accuracy use the truth for every group, as diagnostics only.
        """
        cfg = self.cfg
        if any(p.reward != "math" for p in problems):
            raise ValueError("reward.labels other than 'all' needs answer-type problems "
                             "(reward 'math'); majority votes are undefined for other verifiers")
        gids = batch.group_ids.tolist()
        answers = [extracted(t, tuple(cfg.reward.extract)) for t in texts]
        majority = majority_labels(answers, batch.group_ids)
        # rows of a group whose vote found no answer score 0 against their pseudo-label
        pseudo_problems = [replace(p, answer=majority[g]) if majority[g] is not None else None
                           for p, g in zip(problems, gids)]
        scored = self.scorer.score([t for t, p in zip(texts, pseudo_problems) if p is not None],
                                   [p for p in pseudo_problems if p is not None])
        pseudo = torch.zeros(len(texts))
        pseudo[[i for i, p in enumerate(pseudo_problems) if p is not None]] = torch.tensor(
            [s["reward"] for s in scored], dtype=torch.float32)
        true = batch.rewards
        mode, budget = cfg.reward.labels, cfg.reward.label_budget
        if mode == "pseudo":
            queried: set[int] = set()
        elif mode == "cag_oracle":
            queried = select_by_budget(corrective_advantage_gap(true, pseudo, batch.group_ids),
                                       budget)
        else:  # "agreement": label-free estimate, so truth is read only for the chosen groups
            queried = select_by_budget(agreement(answers, batch.group_ids), budget,
                                       largest=False)
        use_true = torch.tensor([g in queried for g in gids])
        truth = {g: p.answer for p, g in zip(problems, gids)}
        self.labels_queried += len(queried)
        self._label_metrics = {
            "labels_queried": len(queried), "labels_queried_total": self.labels_queried,
            "pseudo_label_accuracy": pseudo_label_accuracy(majority, truth)}
        return torch.where(use_true, true, pseudo)

    def rollout(self) -> tuple[RolloutBatch, dict]:
        """Sample and score one step's batch (with DAPO dynamic sampling when enabled)."""
        cfg = self.cfg
        want = cfg.rollout.prompts_per_step
        if not cfg.algo.dynamic_sampling:
            batch = self._sample_round(0, 0)
            return batch, {"sampling_rounds": 1, **self._group_metrics(batch),
                           **self._label_metrics}
        kept, n_groups, first = [], 0, None
        for r in range(cfg.algo.max_sampling_rounds):
            batch = self._sample_round(r, r * want)
            first = first or self._group_metrics(batch)
            keep = dynamic_sampling_mask(batch.rewards, batch.group_ids)
            if keep.any():
                kept.append(batch.select(keep.nonzero().squeeze(-1)))
                n_groups += len(torch.unique(kept[-1].group_ids))
            if n_groups >= want:
                break
        if not kept:  # every group agreed in every round: nothing to learn from this step
            return batch.select([]), {"sampling_rounds": r + 1, **first, **self._label_metrics}
        batch = RolloutBatch.concat(kept, self.tokenizer.pad_token_id)
        groups = torch.unique(batch.group_ids)[:want]  # trim the overfill to whole groups
        batch = batch.select(torch.isin(batch.group_ids, groups).nonzero().squeeze(-1))
        return batch, {"sampling_rounds": r + 1, **first, **self._label_metrics}

    @staticmethod
    def _group_metrics(batch: RolloutBatch) -> dict:
        lengths = batch.response_lengths
        return {"reward": batch.rewards.mean().item(),
                "accuracy": batch.correct.float().mean().item(),
                "response_length": lengths.mean().item(),
                "response_length_max": lengths.max().item(),
                "truncation_rate": batch.truncated.float().mean().item(),
                "zero_variance_groups": group_stats(batch.rewards, batch.group_ids)
                ["zero_variance_frac"]}

    # ------------------------------------------------------------------ log-prob helpers
    @torch.no_grad()
    def _per_token_no_grad(self, batch: RolloutBatch, compute) -> dict[str, torch.Tensor]:
        """Run `compute(view) -> {name: (b, t)}` over micro-batches; reassemble (B, T) tensors."""
        out: dict[str, torch.Tensor] = {}
        mb = self.cfg.optim.micro_batch_size
        for start in range(0, batch.size, mb):
            idx = torch.arange(start, min(start + mb, batch.size))
            view = trim_padding(batch.select(idx)).to(self.device)
            for key, value in compute(view).items():
                out.setdefault(key, torch.zeros_like(batch.old_logprobs))
                out[key][idx, : value.shape[1]] = value.cpu()
        return out

    def _logprobs_no_grad(self, model, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) log-probs of the batch's responses under `model`."""
        return self._per_token_no_grad(batch, lambda view: {"logp": policy_logprobs(
            model, view, self.cfg.rollout.temperature,
            share_prompt=self.cfg.optim.share_prompt)[0]})["logp"]

    def _divergences(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """(B, T) per-token divergences between the policy and the frozen reference."""
        return self._per_token_no_grad(batch, lambda view: response_divergences(
            self.model, self.ref_model, view, temperature=self.cfg.rollout.temperature,
            share_prompt=self.cfg.optim.share_prompt))

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        cfg = self.cfg
        self._timing = {"sync": 0.0, "generate": 0.0, "score": 0.0, "train": 0.0}
        self._mismatch = {"sum": 0.0, "n": 0.0, "max": 0.0}
        self._label_metrics: dict = {}
        self.model.eval()
        t_start = time.perf_counter()
        batch, metrics = self.rollout()
        if batch.size == 0:
            log.warning("step %d: every group's rewards agree; no update", self.step)
            return {**metrics, "skipped": 1, **{f"time_{k}": v for k, v in self._timing.items()}}
        t_train = time.perf_counter()
        # the sampler's own log-probs, kept apart from pi_old for the mismatch metric and TIS
        batch.extras["sampler_logprobs"] = batch.old_logprobs.clone()
        if self.ref_model is not None:
            batch.ref_logprobs = self._logprobs_no_grad(self.ref_model, batch)
            if cfg.algo.kl_in_reward:
                batch.rewards = batch.rewards - kl_reward_penalty(
                    batch.old_logprobs, batch.ref_logprobs, batch.response_mask,
                    coef=cfg.algo.kl_beta)
        if self.initial_model is not None:
            metrics.update(self._shift_metrics(batch))
        if "divergence" in self._credit_needs:  # per-token divergence: old policy vs frozen base
            kind = cfg.algo.credit_options.get("kind", "js")
            batch.extras["divergence"] = self._divergences(batch)[kind]
        if cfg.algo.old_logprobs == "recompute":
            batch.old_logprobs = self._logprobs_no_grad(self.model, batch)
        batch.advantages = self._advantage(batch.rewards, batch.group_ids, batch.response_mask,
                                           **cfg.algo.advantage_options)
        if cfg.reward.mask_truncated:
            batch.token_weights = (~batch.truncated).float()[:, None].expand_as(
                batch.response_mask).clone()
        self.last_batch = batch  # kept for inspection and the benchmarks
        update_metrics = self._update(batch)
        self._engine_stale = True
        self._timing["train"] += time.perf_counter() - t_train
        total = time.perf_counter() - t_start
        n_tokens = batch.response_mask.sum().item()
        metrics.update(update_metrics)
        if self._mismatch["n"]:  # |trainer pi_old - sampler| log-probs, on the same weights
            metrics["sampler_logprob_diff"] = self._mismatch["sum"] / self._mismatch["n"]
            metrics["sampler_logprob_diff_max"] = self._mismatch["max"]
        metrics.update({"lr": self.scheduler.get_last_lr()[0], "tokens": n_tokens,
                        "tokens_per_s": n_tokens / max(total, 1e-9), "time_step": total,
                        **{f"time_{k}": v for k, v in self._timing.items()}})
        return metrics

    def _update(self, batch: RolloutBatch) -> dict:
        """epochs x mini-batches optimizer steps over one rollout batch. Returns averaged metrics."""
        cfg, model = self.cfg, self.model
        model.train()
        sums: dict[str, float] = {}
        weight_total = 0.0
        grad_norms = []
        on_policy = True  # no optimizer step since the rollout: pi_theta == pi_old exactly
        for epoch in range(cfg.optim.epochs_per_rollout):
            gen = torch.Generator().manual_seed(_seed_for(cfg.train.seed, self.step, epoch, 7))
            order = torch.randperm(batch.size, generator=gen)
            for mini_idx in order.chunk(cfg.optim.mini_batches):
                mini = batch.select(mini_idx)
                loss_mask = self._loss_mask(mini)
                totals = {"total_tokens": max(loss_mask.sum().item(), 1.0),
                          "total_seqs": mini.size, "max_len": cfg.rollout.max_new_tokens}
                # Length-sorted micro-batches: each is padded only to its own longest response,
                # and the loss is normalised by the mini-batch totals, so the gradient does not
                # depend on how rows are grouped into micro-batches.
                by_length = torch.argsort(mini.response_lengths, stable=True)
                for idx in by_length.split(cfg.optim.micro_batch_size):
                    micro = trim_padding(mini.select(idx)).to(self.device)
                    m = self._micro_step(micro, on_policy, totals)
                    w = micro.response_mask.sum().item()
                    weight_total += w
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * w
                if cfg.optim.max_grad_norm > 0:
                    norm = torch.nn.utils.clip_grad_norm_(self._trainable(),
                                                          cfg.optim.max_grad_norm)
                else:
                    norm = torch.linalg.vector_norm(torch.stack(
                        [p.grad.norm() for p in self._trainable() if p.grad is not None]))
                grad_norms.append(float(norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                on_policy = False
        model.eval()
        out = {k: v / max(weight_total, 1e-9) for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["optimizer_steps"] = len(grad_norms)
        return out

    def _loss_mask(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.token_weights is None:
            return batch.response_mask
        return batch.response_mask * (batch.token_weights != 0)

    def _micro_step(self, micro: RolloutBatch, on_policy: bool, totals: dict) -> dict:
        cfg = self.cfg
        entropy_grad = cfg.algo.entropy_coef > 0
        states = None
        if self.mtp is not None:  # the heads read the trunk's states: compute them once
            states = response_hidden_states(self.model, micro, cfg.optim.share_prompt)
            logp, entropy = logprobs_from_states(self.model, states, micro, cfg.rollout.temperature,
                                                 with_entropy=True, entropy_grad=entropy_grad)
        else:
            logp, entropy = policy_logprobs(self.model, micro, cfg.rollout.temperature,
                                            with_entropy=True, entropy_grad=entropy_grad,
                                            share_prompt=cfg.optim.share_prompt)
        mask = micro.response_mask
        if on_policy:  # pi_theta is pi_old here: use the exact values, so ratios are exactly 1
            micro.old_logprobs = logp.detach()
        old = micro.old_logprobs
        sampler = micro.extras.get("sampler_logprobs")
        if sampler is not None and (on_policy or cfg.algo.old_logprobs == "recompute"):
            gap, n = logprob_mismatch(old, sampler, mask), float(mask.sum())  # same weights
            self._mismatch["sum"] += gap["sampler_logprob_diff"] * n
            self._mismatch["n"] += n
            self._mismatch["max"] = max(self._mismatch["max"], gap["sampler_logprob_diff_max"])
        multiplier = self._credit(micro, logp.detach(), **cfg.algo.credit_options)
        advantages = micro.advantages * multiplier
        out = self._loss(logp, old, advantages, mask, **cfg.algo.loss_options)
        per_token = out.per_token_loss
        metrics = {k: float(v) for k, v in out.metrics.items()}
        if self.mtp is not None:
            per_token = per_token + self._mtp_loss(states, micro, logp, old, advantages, metrics)
        if micro.token_weights is not None:
            per_token = per_token * micro.token_weights
        if cfg.algo.tis_cap > 0 and sampler is not None:
            tis = truncated_is_weights(old, sampler, cfg.algo.tis_cap)
            per_token = per_token * tis
            metrics["tis_weight"] = ((tis * mask).sum() / mask.sum().clamp(min=1)).item()
            metrics["tis_capped_frac"] = (((tis >= cfg.algo.tis_cap) * mask).sum()
                                          / mask.sum().clamp(min=1)).item()
        if micro.ref_logprobs is not None:
            kl = self._kl(logp, micro.ref_logprobs) * mask
            metrics["kl_ref"] = (kl.detach().sum() / mask.sum().clamp(min=1)).item()
            if cfg.algo.kl_beta > 0 and not cfg.algo.kl_in_reward:
                per_token = per_token + cfg.algo.kl_beta * kl
        if cfg.algo.entropy_coef > 0:
            per_token = per_token - cfg.algo.entropy_coef * entropy * mask
        loss = self._aggregate(per_token, self._loss_mask(micro), **totals)
        loss.backward()
        # per-token mean of the full objective on this micro-batch (comparable across aggregations)
        metrics["loss"] = ((per_token.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
        metrics["entropy"] = ((entropy.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
        metrics["credit_mean"] = ((multiplier * mask).sum() / mask.sum().clamp(min=1)).item()
        return metrics

    def _mtp_loss(self, states, micro: RolloutBatch, logp, old, advantages, metrics: dict):
        """OCC (`pivotal.algos.occ`): the heads' policy losses with advantages A * c_k. (B, T)."""
        cfg = self.cfg
        head_lp, head_mask = mtp_logprobs(self.mtp, self.model.get_output_embeddings(), states,
                                          micro.response_ids, micro.response_mask,
                                          cfg.rollout.temperature)
        coefs = occ_coefficients(head_lp, logp, old, head_mask, cfg.algo.occ_scale)
        total = torch.zeros_like(logp)
        for k in range(len(self.mtp)):
            mask = head_mask[k].to(logp.dtype)
            out = self._loss(head_lp[k], old, advantages * coefs[k], mask, **cfg.algo.loss_options)
            total = total + out.per_token_loss * mask
            n = mask.sum().clamp(min=1)
            metrics[f"occ_coef_{k + 1}"] = float(coefs[k])
            metrics[f"mtp_logprob_gap_{k + 1}"] = float(((head_lp[k] - old).detach() * mask).sum() / n)
        return total

    def _reference_is_initial(self) -> bool:
        """The frozen reference is the initial policy and stays it (no ratchet)."""
        return self.ref_model is not None and self.cfg.model.reference == "initial" \
            and not self._ratchets()

    def _shift_metrics(self, batch: RolloutBatch) -> dict:
        """The live shift monitor (`pivotal.shift_monitor`): |Δlog p| of the sampled tokens
        between the sampling policy and the initial policy, on a few responses."""
        t0 = time.perf_counter()
        if self.initial_model is self.ref_model and batch.ref_logprobs is not None:
            sub, initial_lp = batch, batch.ref_logprobs  # already computed: free
        else:
            sub = batch.select(monitored_rows(batch.size, self.cfg.train.shift_monitor_rows))
            initial_lp = self._logprobs_no_grad(self.initial_model, sub)
        mask = sub.response_mask
        T = min(initial_lp.shape[1], mask.shape[1])
        dlogp = sub.old_logprobs[:, :T].cpu() - initial_lp[:, :T].cpu()
        out = shift_metrics(dlogp, mask[:, :T].cpu(), self.cfg.train.shift_thresholds)
        out["time_shift_monitor"] = time.perf_counter() - t0
        return out

    def _load_reference(self):
        """The frozen reference: a copy of the initial policy, or the model `model.reference`."""
        spec = self.cfg.model.reference
        if spec == "initial":
            return copy.deepcopy(self.model).eval().requires_grad_(False)
        ref, ref_tokenizer = load_model(spec, self.cfg.model.device, self.cfg.model.dtype,
                                        self.cfg.model.cache_dir)
        if tokenizer_fingerprint(ref_tokenizer) != tokenizer_fingerprint(self.tokenizer):
            raise ValueError(f"model.reference '{spec}' has a different tokenizer from the policy "
                             f"'{self.cfg.model.name}': per-token reference log-probs need one "
                             "shared vocabulary")
        return ref.eval().requires_grad_(False)

    def ratchet_reference(self) -> int:
        """Make the frozen reference the current policy (OWPO's ratchet). Returns 1 if done.

        Copies weights in place, so no second model is allocated and nothing leaks across
        ratchets. A no-op without a reference model.
        """
        if self.ref_model is None:
            return 0
        with torch.no_grad():
            for ref_param, param in zip(self.ref_model.parameters(), self.model.parameters()):
                ref_param.copy_(param)
        return 1

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tag: str) -> dict:
        e = self.cfg.eval
        self._sync_engine()
        summary, records = evaluate(
            self.model, self.tokenizer, self.eval_problems, n_samples=1,
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
            instruction=self.cfg.task.instruction, system_prompt=self.cfg.task.system_prompt,
            seed=self.cfg.train.seed, progress=self.progress, engine=self.engine)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"eval_{tag}.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        return summary

    # ------------------------------------------------------------------ checkpoints
    def _ratchets(self) -> bool:
        return bool(self.cfg.algo.reference_ratchet_every or self.cfg.algo.reference_ratchet_on_eval)

    def _state(self) -> dict:
        state = {"step": self.step, "cursor": self.cursor,
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": ckpt.rng_state(),
                 "history": self.history, "config": self.cfg.to_dict(),
                 "labels_queried": self.labels_queried}
        if self.mtp is not None:
            state["mtp_heads"] = {k: v.detach().cpu() for k, v in self.mtp.state_dict().items()}
        if self.ref_model is not None and self._ratchets():  # the reference moved: keep it
            state["reference"] = {k: v.detach().cpu() for k, v in
                                  self.ref_model.state_dict().items()}
        return state

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.ckpt_dir, self.step, self.model, self.tokenizer,
                                    self._state(), keep=self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns whether one was found."""
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state = ckpt.load_trainer_state(path)
        from safetensors.torch import load_file
        weights = load_file(path / "model.safetensors", device=str(self.device))
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        # tied embeddings are saved once; anything else missing means a different model
        if unexpected or any("lm_head" not in k for k in missing):
            raise RuntimeError(f"checkpoint {path} does not match model '{self.cfg.model.name}'")
        if "reference" in state and self.ref_model is not None:
            self.ref_model.load_state_dict(state["reference"])
        if self.mtp is not None:
            if "mtp_heads" not in state:
                raise RuntimeError(f"checkpoint {path} has no MTP heads, but algo.mtp_heads="
                                   f"{self.cfg.algo.mtp_heads}")
            self.mtp.load_state_dict(state["mtp_heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.cursor = state["step"], state["cursor"]
        self.history = state.get("history", {})
        self.labels_queried = state.get("labels_queried", 0)
        self._engine_stale = True
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> dict:
        cfg = self.cfg
        resumed = self.resume() if resume else False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out_dir / "config.yaml")
        logger = MetricsLogger(self.out_dir, cfg.train.tensorboard, cfg.train.wandb,
                               resume_step=self.step if resumed else None,
                               run_config=cfg.to_dict())
        say = tqdm.write if self.progress else log.info
        if cfg.train.eval_before_after and "before" not in self.history:
            self.history["before"] = self.evaluate("before")
            say(_fmt_eval("before", self.history["before"]))
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress)
        try:
            while self.step < cfg.train.steps:
                metrics = self.train_step()
                self.step += 1
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 \
                        and self.step < cfg.train.steps:
                    ev = self.evaluate(f"step{self.step}")
                    metrics.update({f"eval_{k}": v for k, v in ev.items()})
                    best = self.history.get("best_eval", -1.0)
                    if ev["greedy_lenient"] > best:
                        self.history["best_eval"] = ev["greedy_lenient"]
                        if cfg.algo.reference_ratchet_on_eval:
                            metrics["reference_ratchet"] = self.ratchet_reference()
                if cfg.algo.reference_ratchet_every and \
                        self.step % cfg.algo.reference_ratchet_every == 0:
                    metrics["reference_ratchet"] = self.ratchet_reference()
                logger.log(self.step, metrics)
                say(_fmt_step(self.step, cfg.train.steps, metrics))
                bar.update(1)
                if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                    self.save()
        finally:
            bar.close()
            logger.close()
        if cfg.train.eval_before_after and "after" not in self.history:
            self.history["after"] = self.evaluate("after")
            say(_fmt_eval("after", self.history["after"]))
        if not cfg.train.save_every or self.step % cfg.train.save_every:
            self.save()
        final = ckpt.latest_checkpoint(self.ckpt_dir)
        summary = {"steps": self.step, "final_checkpoint": str(final), **self.history}
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            say(f"training curves: {plot_run(self.out_dir)}")
        except ImportError:
            log.warning("matplotlib is not installed; no curves.png")
        except ValueError as e:  # e.g. every step was skipped: nothing to plot, the run still ends
            log.warning("no curves.png: %s", e)
        if "before" in self.history and "after" in self.history:
            say(_fmt_before_after(self.history["before"], self.history["after"],
                                  len(self.eval_problems)))
        return summary


def _with_extraction(components: list[dict], extract: list[str]) -> list[dict]:
    """Give reward.extract to the answer-matching components that did not set their own."""
    out = []
    for comp in components:
        if comp["name"] in ("task", "math") and "extract" not in comp.get("options", {}):
            comp = {**comp, "options": {**comp.get("options", {}), "extract": tuple(extract)}}
        out.append(comp)
    return out


def _fmt_step(step: int, total: int, m: dict) -> str:
    if m.get("skipped"):
        return f"step {step}/{total} | skipped (all groups agree) | reward {m['reward']:.3f}"
    labels = (f" | labels {m['labels_queried']} (total {m['labels_queried_total']}) pseudo-acc "
              f"{m['pseudo_label_accuracy']:.2f}" if "labels_queried" in m else "")
    shift_keys = [k for k in m if k.startswith("shift_frac_")]  # the live shift monitor
    shift = (f" | shifted(|Δlogp|>{shift_keys[0][len('shift_frac_'):]}) {m[shift_keys[0]]:.3f}"
             if shift_keys else "")
    return (f"step {step}/{total} | reward {m['reward']:.3f} acc {m['accuracy']:.3f}{labels}{shift} "
            f"| len {m['response_length']:.1f} trunc {m['truncation_rate']:.2f} "
            f"| ent {m.get('entropy', math.nan):.3f} clip {m.get('clip_frac_low', 0):.3f}/"
            f"{m.get('clip_frac_high', 0):.3f} gnorm {m.get('grad_norm', math.nan):.3f} "
            f"zero-var {m['zero_variance_groups']:.2f} | {m['tokens_per_s']:.0f} tok/s "
            f"| gen {m['time_generate']:.1f}s score {m['time_score']:.1f}s "
            f"train {m['time_train']:.1f}s")


def _fmt_eval(tag: str, s: dict) -> str:
    return (f"eval {tag}: greedy accuracy strict {100 * s['greedy_strict']:.1f}% | lenient "
            f"{100 * s['greedy_lenient']:.1f}% | boxed {100 * s['boxed_rate']:.1f}% "
            f"| mean length {s['greedy_mean_length']:.1f} ({s['num_problems']} held-out problems)")


def _fmt_before_after(before: dict, after: dict, n: int) -> str:
    rows = [("strict (boxed answer only)", "greedy_strict"),
            ("lenient (last number if no box)", "greedy_lenient"),
            ("writes a \\boxed{} answer", "boxed_rate")]
    lines = [f"held-out greedy accuracy on {n} problems: before -> after"]
    for label, key in rows:
        b, a = 100 * before[key], 100 * after[key]
        lines.append(f"  {label:34s} {b:5.1f}% -> {a:5.1f}%  ({a - b:+.1f} points)")
    return "\n".join(lines)
