"""The reward stage under active labels (CAG / CARE): which groups train on their true label.

Every group gets a pseudo-label (majority vote of its extracted answers). The true label is used
for the `reward.label_budget` share of groups that the selector `reward.labels` chooses
(`pivotal.algos.labels.LABEL_SELECTORS`); the rest train on their pseudo-label. `reward.labels=all`
(the default) switches this stage off: every group trains on its true label.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .algos.labels import LABEL_SELECTORS, majority_labels, pseudo_label_accuracy, training_rewards
from .errors import DataError
from .rewards import RewardScorer, extracted


class ActiveLabels:
    """Turns true-label rewards into training rewards under a label budget."""

    def __init__(self, selector: str, budget: float, scorer: RewardScorer, extract: list[str]):
        self.select = LABEL_SELECTORS.get(selector)
        self.selector, self.budget, self.scorer = selector, budget, scorer
        self.extract = tuple(extract)

    def __call__(self, texts: list[str], problems: list, true_rewards: torch.Tensor,
                 group_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(B,) training rewards and the label metrics (labels_queried, pseudo_label_accuracy).

        The training signal reads the truth only for the chosen groups (and for choosing, where
        the selector says so). The pseudo-label accuracy uses the truth for every group, as a
        diagnostic only.
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
        queried = self.select(true_rewards, pseudo, answers, group_ids, self.budget)
        truth = {g: p.answer for p, g in zip(problems, gids)}
        metrics = {"labels_queried": len(queried),
                   "pseudo_label_accuracy": pseudo_label_accuracy(majority, truth)}
        return training_rewards(true_rewards, pseudo, group_ids, queried), metrics


def build_active_labels(reward_cfg, scorer: RewardScorer) -> ActiveLabels | None:
    """The stage for `reward.labels`, or None when every group uses its true label ('all')."""
    if reward_cfg.labels == "all":
        return None
    return ActiveLabels(reward_cfg.labels, reward_cfg.label_budget, scorer, reward_cfg.extract)
