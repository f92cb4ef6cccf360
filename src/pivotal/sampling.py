"""A training step's rollout: the sampling rounds of `pivotal.trainer.Trainer` (a mixin).

Each round gives the engine the current weights if they changed, samples this rank's slice of the
step's prompts (`rollout.prompts_per_step / world`, consecutive in the stream), scores them, runs
the stages after scoring (active labels, the self-teacher's hints) and offsets the group ids so
that they are unique over ranks. `rollout` adds DAPO's dynamic sampling: more rounds until every
rank holds its share of groups with signal.

The mixin reads the trainer's engine, task, scorer, tokenizer, stages and stream position
(`cursor`, `step`, `labels_queried`), which the trainer owns and checkpoints.
"""

from __future__ import annotations

import time

import torch

from .algos import dynamic_sampling_mask, overlong_penalty
from .batch import ADVANTAGE_WEIGHT_KEY, RolloutBatch
from .distributed import copy_full_parameters
from .metrics import StepState, group_metrics
from .rollout import SamplingParams
from .tasks import format_prompt
from .update import seed_for


class SamplingRounds:
    """The rollout half of the trainer: `sync_engine`, `rollout` and its rounds."""

    def sync_engine(self) -> float:
        """Give the rollout engine the current weights if they changed. Returns the seconds."""
        if not self.engine_stale:
            return 0.0
        t0 = time.perf_counter()
        if self.whole_policy is not self.model:  # FSDP2: gather the shards into the replica
            copy_full_parameters(self.model, self.whole_policy)
        self.engine.sync_weights(self.whole_policy)
        self.engine_stale = False
        return time.perf_counter() - t0

    def _sync_metrics(self) -> dict:
        """`sync_bytes` of the engine's last weight sync, for engines that copy weights."""
        moved = getattr(self.engine, "sync_bytes", None)
        return {"sync_bytes": moved[-1]} if moved else {}

    def _sample_round(self, round_index: int, group_offset: int, state: StepState) -> RolloutBatch:
        cfg, r, rt = self.cfg, self.cfg.rollout, self.runtime
        state.seconds["sync"] += self.sync_engine()
        state.sync_metrics = self._sync_metrics()
        share = r.prompts_per_step // rt.world  # this rank's slice of the step's prompts
        first = self.cursor + rt.rank * share
        problems = [self.task.train_problem(first + i) for i in range(share)]
        self.cursor += r.prompts_per_step
        prompts = [format_prompt(p, self.tokenizer, cfg.task.instruction, cfg.task.system_prompt)
                   for p in problems]
        t0 = time.perf_counter()
        batch, texts = self.engine.generate(prompts, r.group_size,
                                            SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k),
                                            seed=seed_for(cfg.train.seed, self.step, round_index,
                                                          *((rt.rank,) if rt.active else ())))
        t1 = time.perf_counter()
        expanded = [p for p in problems for _ in range(r.group_size)]
        scores = self.scorer.score(texts, expanded)
        batch.rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float32)
        # `correct` always uses the ground truth: a diagnostic, also under active labels
        batch.correct = torch.tensor([s["correct"] for s in scores], dtype=torch.bool)
        extras = {"text": texts, "problem_id": [p.id for p in expanded]}
        if self.active_labels is not None:
            batch.rewards, state.stage_metrics, extras[ADVANTAGE_WEIGHT_KEY] = self.active_labels(
                texts, expanded, batch.rewards, batch.group_ids, rt, correct=batch.correct,
                batch=batch, step=self.step)
            # the run's total over every rank, the same on each (what a checkpoint keeps)
            self.labels_queried += int(rt.sum_floats(state.stage_metrics["labels_queried"])[0])
            state.stage_metrics["labels_queried_total"] = self.labels_queried
        if cfg.reward.overlong_buffer > 0:
            batch.rewards = batch.rewards + overlong_penalty(
                batch.response_lengths, r.max_new_tokens, cfg.reward.overlong_buffer,
                cfg.reward.overlong_factor)
        batch.group_ids = batch.group_ids + group_offset + rt.rank * share  # unique over ranks
        batch.extras = extras
        t2 = time.perf_counter()
        if self.hints is not None:  # the self-teacher's context (AMR-SD, self_distill)
            state.stage_metrics.update(self.hints(batch, expanded, texts, self.step, seed=seed_for(
                cfg.train.seed, self.step, round_index, 11, *((rt.rank,) if rt.active else ()))))
        state.seconds["generate"] += t1 - t0
        state.seconds["score"] += t2 - t1
        state.seconds["hints"] += time.perf_counter() - t2
        return batch

    def rollout(self, state: StepState | None = None) -> tuple[RolloutBatch, dict]:
        """Sample and score one step's batch (with DAPO dynamic sampling when enabled): this rank's
        share of it. Under dynamic sampling each rank keeps its share of groups with signal, and
        the ranks sample another round until every rank has its share (or rounds run out)."""
        state = state if state is not None else StepState()
        per_step = self.cfg.rollout.prompts_per_step
        want = per_step // self.runtime.world
        if not self.cfg.algo.dynamic_sampling:
            batch = self._sample_round(0, 0, state)
            return batch, {"sampling_rounds": 1, **group_metrics(batch), **state.stage_metrics}
        kept, n_groups, first = [], 0, None
        for r in range(self.cfg.algo.max_sampling_rounds):
            batch = self._sample_round(r, r * per_step, state)
            first = first or group_metrics(batch)
            keep = dynamic_sampling_mask(batch.rewards, batch.group_ids)
            if keep.any():
                kept.append(batch.select(keep.nonzero().squeeze(-1)))
                n_groups += len(torch.unique(kept[-1].group_ids))
            if self.runtime.min_int(n_groups) >= want:
                break
        metrics = {"sampling_rounds": r + 1, **first, **state.stage_metrics}
        if not kept:  # every group agreed in every round: nothing to learn from this step
            return batch.select([]), metrics
        batch = RolloutBatch.concat(kept, self.tokenizer.pad_token_id)
        groups = torch.unique(batch.group_ids)[:want]  # trim the overfill to whole groups
        return batch.select(torch.isin(batch.group_ids, groups).nonzero().squeeze(-1)), metrics
