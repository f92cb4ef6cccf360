"""The reward stage under active labels (CAG / CARE): which groups train on their true label.

Every group gets a pseudo-label (majority vote of its extracted answers). The true label is used
for the `reward.label_budget` share of groups that the selector `reward.labels` chooses
(`pivotal.algos.labels.LABEL_SELECTORS`); the rest train on their pseudo-label, with the advantage
weight `reward.unlabeled_weight`: 0 by default, as the released code (Lumina04/CARE
verl/trainer/ppo/ray_trainer.py multiplies the advantages of prompts without a true label by 0
under its oracle and ranked-label estimators), so only queried prompts train; 1 with `pseudo`
(and under `reward.labels=pseudo`, test-time RL, where no prompt is queried). The weight goes to
batch.extras[ADVANTAGE_WEIGHT_KEY] (`pivotal.batch`) and scales the advantages after they are computed, so the
unweighted rows still count in the loss's denominators, as there. `reward.labels=all` (the
default) switches this stage off: every group trains on its true label.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .algos.labels import LABEL_SELECTORS, majority_labels, pseudo_label_accuracy, training_rewards
from .errors import DataError
from .rewards import RewardScorer, extracted

UNLABELED_WEIGHTS = ("auto", "zero", "pseudo")


class ActiveLabels:
    """Turns true-label rewards into training rewards under a label budget."""

    def __init__(self, selector: str, budget: float, scorer: RewardScorer, extract: list[str],
                 unlabeled_weight: str = "auto"):
        self.select = LABEL_SELECTORS.get(selector)
        self.selector, self.budget, self.scorer = selector, budget, scorer
        self.extract = tuple(extract)
        if unlabeled_weight == "auto":
            unlabeled_weight = "pseudo" if selector == "pseudo" else "zero"
        self.unlabeled_weight = 0.0 if unlabeled_weight == "zero" else 1.0

    def __call__(self, texts: list[str], problems: list, true_rewards: torch.Tensor,
                 group_ids: torch.Tensor, runtime=None) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(B,) training rewards, the label metrics (labels_queried, pseudo_label_accuracy) and
        (B,) advantage weights: 1 on queried groups, `unlabeled_weight` elsewhere.

        The training signal reads the truth only for the chosen groups (and for choosing, where
        the selector says so). The pseudo-label accuracy uses the truth for every group, as a
        diagnostic only. With data parallelism (`runtime`) the budget is a share of every rank's
        groups together (`select_over_ranks`), not of each rank's.
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
        if runtime is not None and runtime.active:
            parts = runtime.gather_objects((true_rewards, pseudo, answers, group_ids))
            queried = select_over_ranks(self.select, parts, runtime.rank, self.budget)
        else:
            queried = self.select(true_rewards, pseudo, answers, group_ids, self.budget)
        truth = {g: p.answer for p, g in zip(problems, gids)}
        metrics = {"labels_queried": len(queried),
                   "pseudo_label_accuracy": pseudo_label_accuracy(majority, truth)}
        weights = torch.tensor([1.0 if g in queried else self.unlabeled_weight for g in gids])
        return training_rewards(true_rewards, pseudo, group_ids, queried), metrics, weights


def select_over_ranks(select, parts: list[tuple], rank: int, budget: float) -> set[int]:
    """Run `select` once over every rank's groups and return the chosen groups of `rank`, in its
    own group ids. parts[r] = (true_rewards, pseudo_rewards, answers, group_ids) of rank r, whose
    group ids run from 0; rank r's groups become r's offset + id, so that with consecutive slices
    of the stream the choice (ties by id) is the one process's on the same rows. Every rank
    computes the same choice from the same gathered inputs."""
    offsets, ids = [], []
    offset = 0
    for _, _, _, group_ids in parts:
        offsets.append(offset)
        ids.append(group_ids + offset)
        offset += int(group_ids.max()) + 1 if len(group_ids) else 0
    chosen = select(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                    [a for p in parts for a in p[2]], torch.cat(ids), budget)
    end = offsets[rank + 1] if rank + 1 < len(parts) else offset
    return {g - offsets[rank] for g in chosen if offsets[rank] <= g < end}


def build_active_labels(reward_cfg, scorer: RewardScorer) -> ActiveLabels | None:
    """The stage for `reward.labels`, or None when every group uses its true label ('all')."""
    if reward_cfg.labels == "all":
        return None
    return ActiveLabels(reward_cfg.labels, reward_cfg.label_budget, scorer, reward_cfg.extract,
                        reward_cfg.unlabeled_weight)
