"""The reward stage under active labels (CAG / CARE): which groups train on their true label.

Every group gets a pseudo-label (majority vote of its extracted answers). The true label is used
for the `reward.label_budget` share of groups that the selector `reward.labels` chooses
(`pivotal.algos.labels.LABEL_SELECTORS`: functions of the rewards and answers, or a stateful
selector such as CARE's probe, `pivotal.care_probe`, which also reads the policy's hidden states);
the rest train on their pseudo-label, with the advantage weight `reward.unlabeled_weight`: 0 by
default, as the released code (Lumina04/CARE verl/trainer/ppo/ray_trainer.py multiplies the
advantages of prompts without a true label by 0 under its oracle and ranked-label estimators), so
only queried prompts train; `soft`, CARE's clip(soft_adv * expected gap, 0, 1) on the prompts its
probe trusts (the default under labels=care); 1 with `pseudo` (and under `reward.labels=pseudo`,
test-time RL, where no prompt is queried). The weight goes to
batch.extras[ADVANTAGE_WEIGHT_KEY] (`pivotal.batch`) and scales the advantages after they are
computed, so the unweighted rows still count in the loss's denominators, as there.
`reward.labels=all` (the default) switches this stage off: every group trains on its true label.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from . import care_probe  # noqa: F401  (registers the 'care' selector)
from .algos.labels import LABEL_SELECTORS, majority_labels, pseudo_label_accuracy, training_rewards
from .errors import DataError
from .logprobs import last_token_states
from .rewards import RewardScorer, extracted

UNLABELED_WEIGHTS = ("auto", "zero", "soft", "pseudo")


class ActiveLabels:
    """Turns true-label rewards into training rewards under a label budget."""

    def __init__(self, selector: str, budget: float, scorer: RewardScorer, extract: list[str],
                 unlabeled_weight: str = "auto", options: dict | None = None, *,
                 group_size: int = 0, max_len: int = 0, seed: int = 0, states=None):
        entry = LABEL_SELECTORS.get(selector)
        # a class is a stateful selector (CARE's probe): built with the run's shape and seed
        self.stateful = entry(group_size, max_len, seed, **(options or {})) if isinstance(entry, type) else None
        if self.stateful is None and options:
            raise DataError(f"reward.labels={selector} takes no reward.label_options, got "
                            f"{', '.join(options)}")
        self.select = entry
        self.selector, self.budget, self.scorer = selector, budget, scorer
        self.extract = tuple(extract)
        self.states = states  # batch -> (prompt (B, H), response (B, H)) states, for selectors that read them
        if unlabeled_weight == "auto":
            unlabeled_weight = ("pseudo" if selector == "pseudo" else
                                "soft" if self.stateful is not None else "zero")
        if unlabeled_weight == "soft" and self.stateful is None:
            raise DataError(f"reward.unlabeled_weight=soft needs a selector that scores the "
                            f"unqueried prompts (reward.labels=care), not {selector!r}")
        self.unlabeled_weight = unlabeled_weight

    def __call__(self, texts: list[str], problems: list, true_rewards: torch.Tensor,
                 group_ids: torch.Tensor, runtime=None, *, correct: torch.Tensor | None = None,
                 batch=None, step: int = 0) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(B,) training rewards, the label metrics (labels_queried, pseudo_label_accuracy, and
        the selector's own) and (B,) advantage weights: 1 on queried groups, the unlabeled weight
        elsewhere.

        The training signal reads the truth only for the chosen groups (and for choosing, where
        the selector says so). The pseudo-label accuracy uses the truth for every group, as a
        diagnostic only. With data parallelism (`runtime`) the budget is a share of every rank's
        groups together (`select_over_ranks`), not of each rank's. A stateful selector also
        reads `batch` (its hidden states, through `states`), `correct` (B,) (the verifier's verdict
        against the truth; default true_rewards > 0.5) and the trainer's `step`.
        """
        if any(p.reward != "math" for p in problems):
            raise DataError(f"reward.labels={self.selector} needs answer-type problems (reward "
                            "'math'); majority votes are undefined for other verifiers")
        gids = group_ids.tolist()
        answers = [extracted(t, self.extract) for t in texts]
        majority = majority_labels(answers, group_ids)
        # rows of a group whose vote found no answer score 0 against their pseudo-label
        pseudo_problems = [replace(p, answer=majority[g]) if majority[g] is not None else None
                           for p, g in zip(problems, gids)]
        scored = self.scorer.score([t for t, p in zip(texts, pseudo_problems) if p is not None],
                                   [p for p in pseudo_problems if p is not None])
        pseudo = torch.zeros(len(texts))
        pseudo[[i for i, p in enumerate(pseudo_problems) if p is not None]] = torch.tensor(
            [s["reward"] for s in scored], dtype=torch.float32)
        extra = None
        if self.stateful is not None:
            if batch is None or self.states is None:
                raise ValueError(f"reward.labels={self.selector} reads the policy's hidden states: "
                                 "pass the batch and a states function")
            correct = true_rewards > 0.5 if correct is None else correct
            extra = (batch.response_lengths.cpu(), correct.cpu(), *self.states(batch))
        active = runtime is not None and runtime.active
        part = (true_rewards, pseudo, answers, group_ids, extra)
        parts = runtime.gather_objects(part) if active else [part]
        queried, group_weight, choice_metrics = self._choose(parts, runtime.rank if active else 0, step)
        truth = {g: p.answer for p, g in zip(problems, gids)}
        metrics = {"labels_queried": len(queried),
                   "pseudo_label_accuracy": pseudo_label_accuracy(majority, truth), **choice_metrics}
        fallback = 1.0 if self.unlabeled_weight == "pseudo" else 0.0
        weights = torch.tensor([1.0 if g in queried else group_weight.get(g, fallback) if
                                self.unlabeled_weight == "soft" else fallback for g in gids])
        return training_rewards(true_rewards, pseudo, group_ids, queried), metrics, weights

    def _choose(self, parts: list[tuple], rank: int, step: int) -> tuple[set[int], dict, dict]:
        """(queried groups of `rank`, {group: weight} of `rank`'s groups from a stateful
        selector, the selector's metrics), choosing once over every rank's groups."""
        if self.stateful is None:
            if len(parts) == 1:
                return self.select(*parts[0][:4], self.budget), {}, {}
            return select_over_ranks(self.select, [p[:4] for p in parts], rank, self.budget), {}, {}
        offsets, ids = _global_group_ids([p[3] for p in parts])
        lengths, correct, prompt_states, response_states = (
            torch.cat([p[4][k] for p in parts]) for k in range(4))
        chosen, weights, metrics = self.stateful.choose(
            [a for p in parts for a in p[2]], ids, lengths, correct, prompt_states,
            response_states, self.budget, step)
        lo, hi = offsets[rank], offsets[rank + 1]
        return ({g - lo for g in chosen if lo <= g < hi},
                {g - lo: w for g, w in weights.items() if lo <= g < hi}, metrics)

    def state_dict(self) -> dict:
        """The stateful selector's state (CARE's probes and replay buffer); {} for the others."""
        return self.stateful.state_dict() if self.stateful is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stateful is not None:
            self.stateful.load_state_dict(state)


def _global_group_ids(group_ids: list[torch.Tensor]) -> tuple[list[int], torch.Tensor]:
    """(offsets, ids): rank r's groups (ids from 0) become offsets[r] + id, so that with
    consecutive slices of the stream the ids are the one process's on the same rows;
    offsets[-1] is the total."""
    offsets, shifted, offset = [], [], 0
    for ids in group_ids:
        offsets.append(offset)
        shifted.append(ids + offset)
        offset += int(ids.max()) + 1 if len(ids) else 0
    return offsets + [offset], torch.cat(shifted)


def select_over_ranks(select, parts: list[tuple], rank: int, budget: float) -> set[int]:
    """Run `select` once over every rank's groups and return the chosen groups of `rank`, in its
    own group ids. parts[r] = (true_rewards, pseudo_rewards, answers, group_ids) of rank r, whose
    group ids run from 0 (`_global_group_ids`), so the choice (ties by id) is the one process's
    on the same rows. Every rank computes the same choice from the same gathered inputs."""
    offsets, ids = _global_group_ids([p[3] for p in parts])
    chosen = select(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                    [a for p in parts for a in p[2]], ids, budget)
    return {g - offsets[rank] for g in chosen if offsets[rank] <= g < offsets[rank + 1]}


def build_active_labels(cfg, scorer: RewardScorer, policy=None) -> ActiveLabels | None:
    """The stage for `cfg.reward.labels`, or None when every group uses its true label ('all').
    policy: the (unsharded) policy whose last-token states a selector such as CARE reads."""
    reward = cfg.reward
    if reward.labels == "all":
        return None
    states = None if policy is None else (
        lambda batch: last_token_states(policy, batch, cfg.optim.micro_batch_size))
    return ActiveLabels(reward.labels, reward.label_budget, scorer, reward.extract,
                        reward.unlabeled_weight, reward.label_options,
                        group_size=cfg.rollout.group_size, max_len=cfg.rollout.max_new_tokens,
                        seed=cfg.train.seed, states=states)
