"""Label selection for RL with active verifiable rewards: majority pseudo-labels, CAG, agreement.

Paper: "RL with active verifiable rewards (CAG / CARE)", see docs/algorithms.md [code]
(implemented from the paper and its released code).

Setting. Ground-truth answers are expensive, so each prompt is first pseudo-labelled by majority
vote over its G sampled answers (test-time-RL style), and only a budget p (``reward.label_budget``,
default 0.2) of the prompts get their true label queried. Which prompts?

* CAG, the Corrective Advantage Gap (oracle): for one group,
      CAG = || A_true - A_pseudo ||_2
  where A_true / A_pseudo are the GRPO group-normalised advantages computed from the rewards under
  the true label and under the pseudo label (mean-centred, divided by the population group std,
  as the released code (Lumina04/CARE ttrl_utils.py `_compute_grpo_advantage`); a group whose std
  < 1e-8 gets zero advantages). CAG is how much the training signal of that
  prompt changes if we correct its label: 0 when the pseudo label is right (identical rewards),
  large when a wrong majority flips the sign of every advantage. Querying the top-p prompts by CAG
  is the oracle selection; it needs the true labels, so it is an upper bound / analysis tool.
* Agreement (label-free, ours): the majority agreement rate (fraction of the group that voted for
  the majority answer); query the prompts with the LOWEST agreement, where the pseudo label is
  most likely wrong. No probe, no hidden states. CARE itself, which learns to predict the gap from
  the policy's hidden states, is the stateful selector `care` (`pivotal.algos.care`,
  `pivotal.care_probe`).

Everything here is a pure function on python lists / CPU-or-GPU tensors; the per-row advantage
math is one vectorised pass (``torch.unique`` + ``index_add_``), and only the final per-group
numbers are turned into python dicts keyed by the (arbitrary, possibly non-contiguous) group id.

Other simplifications: majority ties go to the answer that appears first in row order (the paper
does not specify); ``select_by_budget`` rounds ceil(p * n_groups) after snapping away float noise
(0.3 * 10 = 3.0000000000000004 selects 3, not 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pivotal.algos.advantages import group_count
from pivotal.registry import Registry
from pivotal.rewards import normalize_answer

LABEL_SELECTORS: Registry = Registry("label selector")
register_label_selector = LABEL_SELECTORS.register

# A group whose reward std is below this gets zero advantages (docs/algorithms.md).
ZERO_STD = 1e-8


def _row_groups(answers: Sequence[str | None], group_ids: Tensor) -> list[int]:
    ids = [int(g) for g in group_ids.reshape(-1).tolist()]
    if len(ids) != len(answers):
        raise ValueError(f"answers has {len(answers)} rows but group_ids has {len(ids)}")
    return ids


def majority_labels(answers: Sequence[str | None], group_ids: Tensor) -> dict[int, str | None]:
    """Majority-vote pseudo-label of each group.

    answers: B answer keys (normalised extracted answers, e.g. ``pivotal.rewards.extracted``; None
    where nothing was extracted); group_ids (B,) -> {group id: most common non-None answer}. Ties go
    to the answer whose first occurrence comes first in row order; a group with no extracted answer
    maps to None.
    """
    counts: dict[int, dict[str, int]] = {}  # dicts keep insertion (= first-occurrence) order
    for gid, ans in zip(_row_groups(answers, group_ids), answers):
        votes = counts.setdefault(gid, {})
        if ans is not None:
            votes[ans] = votes.get(ans, 0) + 1
    labels: dict[int, str | None] = {}
    for gid, votes in counts.items():
        best, best_n = None, 0
        for ans, n in votes.items():
            if n > best_n:  # strict: an equal count later in row order never wins
                best, best_n = ans, n
        labels[gid] = best
    return labels


def agreement(answers: Sequence[str | None], group_ids: Tensor) -> dict[int, float]:
    """Majority agreement rate of each group (the label-free estimate).

    answers: B answer keys or None; group_ids (B,) -> {group id: (# rows whose answer equals the
    majority label) / (group size)}, 0.0 for a group with no label. Rows with no extracted answer
    count in the denominator. Low agreement = the pseudo label is likely wrong = worth a true label
    (select with ``select_by_budget(..., largest=False)``).
    """
    rows = _row_groups(answers, group_ids)
    labels = majority_labels(answers, group_ids)
    size: dict[int, int] = {}
    hits: dict[int, int] = {}
    for gid, ans in zip(rows, answers):
        size[gid] = size.get(gid, 0) + 1
        if ans is not None and ans == labels[gid]:
            hits[gid] = hits.get(gid, 0) + 1
    return {gid: (hits.get(gid, 0) / size[gid] if labels[gid] is not None else 0.0) for gid in size}


def _group_normalised(scores: Tensor, inverse: Tensor, n: int) -> Tensor:
    """(B,) GRPO advantage as the released CAG code takes it: (r - mean_g) / std_g with the
    population std (numpy's default), 0 where std_g < 1e-8 (a group of one included)."""
    counts = group_count(inverse, n, scores.dtype)
    mean = scores.new_zeros(n).index_add_(0, inverse, scores) / counts
    centered = scores - mean[inverse]
    std = (scores.new_zeros(n).index_add_(0, inverse, centered**2) / counts).sqrt()
    flat = std[inverse] < ZERO_STD
    return torch.where(flat, torch.zeros_like(centered), centered / torch.where(flat, 1.0, std[inverse]))


def corrective_advantage_gap(true_rewards: Tensor, pseudo_rewards: Tensor,
                             group_ids: Tensor) -> dict[int, float]:
    """Corrective Advantage Gap of each group: || A_true - A_pseudo ||_2 over the group's rows.

    true_rewards (B,) rewards scored against the true answer; pseudo_rewards (B,) against the
    majority pseudo-label; group_ids (B,) -> {group id: CAG >= 0}. A is the GRPO group-normalised
    advantage (see module docstring); computed for all rows at once, then reduced per group.
    """
    true_rewards = true_rewards.reshape(-1)
    pseudo_rewards = pseudo_rewards.reshape(-1)
    group_ids = group_ids.reshape(-1)
    if not (true_rewards.numel() == pseudo_rewards.numel() == group_ids.numel()):
        raise ValueError("true_rewards, pseudo_rewards and group_ids must have the same length, got "
                         f"{true_rewards.numel()}, {pseudo_rewards.numel()}, {group_ids.numel()}")
    if group_ids.numel() == 0:
        return {}
    dtype = torch.promote_types(true_rewards.dtype, pseudo_rewards.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    t = true_rewards.to(dtype)
    p = pseudo_rewards.to(device=t.device, dtype=dtype)
    uniq, inverse = torch.unique(group_ids.to(t.device), return_inverse=True)
    n = uniq.numel()
    diff = _group_normalised(t, inverse, n) - _group_normalised(p, inverse, n)
    gap = t.new_zeros(n).index_add_(0, inverse, diff**2).sqrt()
    return {int(g): float(v) for g, v in zip(uniq.tolist(), gap.tolist())}


def select_by_budget(scores: dict[int, float], budget: float, largest: bool = True) -> set[int]:
    """Group ids to query true labels for: the top ceil(budget * n_groups) by score.

    scores: {group id: score} (CAG, or agreement with largest=False); budget in [0, 1]
    (``reward.label_budget``). The groups are ranked in ascending id order (the prompts' order)
    with numpy's argsort, as the released CAG selection does (`np.argsort(-scores)`, whose ties
    fall in index order for up to 16 groups, and as numpy's introsort leaves them beyond); the
    lowest-first ranking of the agreement selector is stable (ties by id). budget 0 -> empty set,
    1 -> every group.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
        raise ValueError(f"reward.label_budget must be a number in [0, 1], got {budget!r}")
    # Snap float noise before the ceil: 0.3 * 10 = 3.0000000000000004 must select 3 groups.
    k = math.ceil(round(budget * len(scores), 9))
    ids = sorted(scores)
    values = np.array([float(scores[g]) for g in ids], dtype=float)
    order = np.argsort(-values) if largest else np.argsort(values, kind="stable")
    return {ids[i] for i in order[:k].tolist()}


def pseudo_label_accuracy(labels: dict[int, str | None], truth: dict[int, str]) -> float:
    """Fraction of the groups in `labels` whose pseudo-label equals the true answer.

    Both sides go through ``pivotal.rewards.normalize_answer`` ("1,000" == "1000"); a None (or
    empty) label counts as wrong. Every group of `labels` needs an entry in `truth` (KeyError
    otherwise). No groups -> 0.0.
    """
    if not labels:
        return 0.0
    right = 0
    for gid, label in labels.items():
        if gid not in truth:
            raise KeyError(f"no true answer for group {gid}")
        if label is None:
            continue
        key = normalize_answer(label)
        if key and key == normalize_answer(truth[gid]):
            right += 1
    return right / len(labels)


# ---------------------------------------------------------------------------- label selectors
# fn(true_rewards (B,), pseudo_rewards (B,), answers [B], group_ids (B,), budget) -> group ids whose
# true label trains. Each says whether its choice reads the truth.

@register_label_selector("pseudo")
def select_none(true_rewards: Tensor, pseudo_rewards: Tensor, answers: Sequence[str | None],
                group_ids: Tensor, budget: float) -> set[int]:
    """No true label: every group trains on its majority pseudo-label (test-time RL)."""
    return set()


@register_label_selector("cag_oracle")
def select_by_cag(true_rewards: Tensor, pseudo_rewards: Tensor, answers: Sequence[str | None],
                  group_ids: Tensor, budget: float) -> set[int]:
    """The top `budget` groups by corrective advantage gap: an oracle that reads every label to
    choose (an upper bound for analysis)."""
    return select_by_budget(corrective_advantage_gap(true_rewards, pseudo_rewards, group_ids),
                            budget)


@register_label_selector("agreement")
def select_by_agreement(true_rewards: Tensor, pseudo_rewards: Tensor,
                        answers: Sequence[str | None], group_ids: Tensor,
                        budget: float) -> set[int]:
    """The `budget` groups whose answers agree least (label-free: reads no truth)."""
    return select_by_budget(agreement(answers, group_ids), budget, largest=False)


def training_rewards(true_rewards: Tensor, pseudo_rewards: Tensor, group_ids: Tensor,
                     queried: set[int]) -> Tensor:
    """(B,) rewards to train on: the true-label reward for rows of queried groups, the
    pseudo-label reward elsewhere. true_rewards, pseudo_rewards, group_ids (B,)."""
    use_true = torch.tensor([int(g) in queried for g in group_ids.tolist()],
                            device=true_rewards.device)
    return torch.where(use_true, true_rewards, pseudo_rewards.to(true_rewards.device))


__all__ = [
    "LABEL_SELECTORS",
    "agreement",
    "corrective_advantage_gap",
    "majority_labels",
    "pseudo_label_accuracy",
    "select_by_budget",
    "training_rewards",
]
