"""CARE's two-stage probe for active labels: what it reads, what it predicts, whom it queries.

Paper: CARE, "RL with active verifiable rewards" (docs/algorithms.md); checked against the
released code, Lumina04/CARE verl/trainer/ppo/ttrl_utils.py (`apply_grpo_adv_diff_probe_setscorer_gt`,
`train_grpo_adv_diff_probe_setscorer`, the two probe classes) and ray_trainer.py (the soft
advantage weight), written again here from what those compute.

Setting (as `pivotal.algos.labels`): each prompt's G answers are clustered by answer (equal
normalised answer keys; the released code clusters with its math grader's equivalence), the
largest cluster is the vote V (ties: the cluster that appears first), |V| = x. If the vote is
wrong and y of the other answers are right, correcting the label changes the group's GRPO
advantages by the corrective advantage gap

    gap(G, x, y) = || A(1 on the x voters) - A(1 on y other rows) ||_2

(A = (r - mean) / population std, 0 where std < 1e-8). CARE predicts it without the truth:

* stage 1 (`VoteProbe`): P(the vote is right) from the prompt's last hidden state, the answer
  statistics of `group_labels` (share of rows with an answer, cluster sizes / G, lengths / L_max)
  and each response's last hidden state; after a warm-up the `prob_gate` share of prompts it is
  most sure of are gated out of querying ("confident");
* stage 2 (`GapProbe`): a distribution over y (classes 0..G; only 0 and the sizes of the
  non-vote clusters are possible) from the prompt state and the states of the answered non-vote
  responses; the expected gap E[gap] = sum_y p(y) gap(G, x, y) ranks the prompts to query.

Both are small MLPs trained online, on the queried prompts only, where the truth is known
(`pivotal.care_probe`). Everything in this module is a pure function or a module definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

ZERO_STD = 1e-8  # as pivotal.algos.labels: a flat group has zero advantages


def answer_clusters(answers: Sequence[str | None]) -> list[list[int]]:
    """Row indices of each distinct answer, largest cluster first, ties by first occurrence.

    answers: one group's G answer keys (None: nothing extracted; in no cluster)."""
    by_key: dict[str, list[int]] = {}
    for j, a in enumerate(answers):
        if a is not None:
            by_key.setdefault(a, []).append(j)
    return sorted(by_key.values(), key=lambda rows: (-len(rows), rows[0]))


def count_gap(n: int, x: int, y: int) -> float:
    """gap(n, x, y): the L2 distance between the GRPO advantages of x ones (the voters) and of y
    ones on other rows, in a group of n (population std; a flat vector has advantages 0)."""
    if not (0 <= y <= x and x + y <= n):
        raise ValueError(f"need 0 <= y <= x and x + y <= n, got n={n}, x={x}, y={y}")
    pseudo = np.zeros(n)
    pseudo[:x] = 1.0
    true = np.zeros(n)
    true[x:x + y] = 1.0

    def adv(r: np.ndarray) -> np.ndarray:
        std = r.std()
        return np.zeros_like(r) if std < ZERO_STD else (r - r.mean()) / std

    return float(np.linalg.norm(adv(pseudo) - adv(true)))


@dataclass
class GroupLabels:
    """What one group gives the probe: inputs that need no truth, and targets that do.

    features (1 + 2G,): [answered share, cluster sizes / G (largest first, G slots), response
    lengths / max_len clipped to 1 (G slots)]; answered_other (G,) bool: rows with an answer
    outside the vote (stage 2 reads only these); class_mask (G+1,) bool: the possible y;
    class_gap (G+1,): gap(G, x, y) per possible y (0 elsewhere). Targets: vote_correct, the
    stage-2 class y (0 when the vote is right), each row's correctness, and the true gap."""
    features: Tensor
    answered_other: Tensor
    class_mask: Tensor
    class_gap: Tensor
    vote_correct: bool
    correct_count: int
    row_correct: Tensor
    true_gap: float


def group_labels(answers: Sequence[str | None], lengths: Sequence[float],
                 correct: Sequence[bool], max_len: int) -> GroupLabels:
    """`GroupLabels` of one group: answers (G,) keys or None, lengths (G,) response tokens,
    correct (G,) the verifier's verdict against the truth (targets only), max_len = L_max."""
    G = len(answers)
    clusters = answer_clusters(answers)
    features = torch.zeros(1 + 2 * G)
    features[0] = sum(a is not None for a in answers) / G
    for i, rows in enumerate(clusters[:G]):
        features[1 + i] = len(rows) / G
    features[1 + G:] = (torch.tensor([float(n) for n in lengths]) / max_len).clamp(0.0, 1.0)
    vote = clusters[0] if clusters else []
    answered_other = torch.tensor([a is not None and j not in vote for j, a in enumerate(answers)])
    class_mask = torch.zeros(G + 1, dtype=torch.bool)
    class_mask[0] = True
    for rows in clusters[1:]:
        class_mask[len(rows)] = True
    x = len(vote)
    class_gap = torch.zeros(G + 1)
    for y in class_mask.nonzero().flatten().tolist():
        class_gap[y] = count_gap(G, x, y)
    vote_correct = any(correct[j] for j in vote)
    count = 0 if vote_correct else min(G, sum(len(rows) for rows in clusters[1:]
                                               if any(correct[j] for j in rows)))
    # the right answers can outnumber the vote when they fall into several clusters (answers the
    # verifier accepts but whose keys differ): no gap(G, x, y) exists there, and the released
    # code's table holds 0 for it
    true_gap = 0.0 if vote_correct or count > x else count_gap(G, x, count)
    return GroupLabels(features, answered_other, class_mask, class_gap, vote_correct, count,
                       torch.tensor([bool(c) for c in correct]), true_gap)


def expected_gap(class_logits: Tensor, class_mask: Tensor, class_gap: Tensor) -> Tensor:
    """E[gap] under the stage-2 distribution restricted to the possible classes.
    class_logits, class_mask, class_gap (N, G+1) -> (N,)."""
    probs = torch.softmax(class_logits.masked_fill(~class_mask, -1e9), dim=-1)
    return (probs * class_gap).sum(dim=-1)


def care_choice(vote_right: Tensor, gap: Tensor, budget: float, prob_gate: float,
                gate_open: bool) -> tuple[list[int], Tensor]:
    """(queried prompt indices, (N,) bool confident) from stage-1 P(vote right) (N,) and the
    expected gaps (N,).

    With the gate open, the ceil(N * prob_gate) prompts of highest P(vote right) are confident and
    rank last; the ceil(N * budget) prompts of highest expected gap are queried (a stable sort:
    ties in prompt order). Before the warm-up ends the gate is shut: nobody is confident."""
    n = vote_right.numel()
    confident = torch.zeros(n, dtype=torch.bool)
    k = math.ceil(round(n * prob_gate, 9)) if gate_open and prob_gate > 0 else 0
    if k:
        order = np.argsort(-vote_right.numpy(), kind="stable")
        confident[torch.as_tensor(order[:k].copy())] = True
    rank = torch.where(confident, torch.full_like(gap, -1.0), gap)
    want = math.ceil(round(n * budget, 9))
    order = np.argsort(-rank.numpy(), kind="stable")
    return [int(i) for i in order[:want]], confident


def soft_weights(gap: Tensor, confident: Tensor, queried: Sequence[int], soft_adv: float) -> Tensor:
    """(N,) advantage weight per prompt: 1 where queried, clip(soft_adv * E[gap], 0, 1) on the
    confident unqueried prompts, 0 on the rest (the released soft coefficient)."""
    weights = torch.where(confident, (soft_adv * gap).clamp(0.0, 1.0), torch.zeros_like(gap))
    weights[list(queried)] = 1.0
    return weights


def class_balance(labels: Tensor, num_classes: int, power: float, low: float, high: float) -> Tensor:
    """(C,) cross-entropy class weights: count^-power normalised to mean 1 over the classes
    present, clipped to [low, high]; 0 for absent classes."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = counts[present].pow(-max(power, 1e-8))
    weights[present] = weights[present] / weights[present].mean()
    return torch.where(present, weights.clamp(low, high), torch.zeros_like(weights))


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _mlp(sizes: Sequence[int], act: str, final_act: bool) -> nn.Sequential:
    """BatchNorm on the input, then Linear layers with `act` between (and after, if final_act)."""
    layers: list[nn.Module] = [nn.BatchNorm1d(sizes[0])]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_act or i < len(sizes) - 2:
            layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class VoteProbe(nn.Module):
    """Stage 1: logits (N, 2) of "the vote is right" and, for its auxiliary loss, (N, G, 2) of
    each response's correctness.

    prompt (N, H) last prompt-token state; features (N, 1+2G) (`group_labels`); responses
    (N, G, H) last response-token states. The prompt branch reads [prompt, answered share, cluster
    sizes]; the response branch reads [state, length] per response and is mean-pooled."""

    def __init__(self, hidden: int, group: int, prompt_dim: int = 128, mid_dim: int = 256,
                 resp_dim: int = 64, resp_out: int = 512, activation: str = "relu"):
        super().__init__()
        self.group = group
        self.prompt = _mlp([hidden + 1 + group, prompt_dim], activation, True)
        self.response = _mlp([hidden + 1, resp_dim, resp_out], activation, True)
        self.head = _mlp([prompt_dim + resp_out, mid_dim, 2], activation, False)
        self.row_head = _mlp([prompt_dim + resp_out, mid_dim, 2], activation, False)

    def _encode(self, prompt, features, responses):
        g = self.group
        p = self.prompt(torch.cat([prompt, features[:, :1 + g]], dim=-1))
        n = responses.shape[0]
        lengths = features[:, 1 + g:].clamp(0.0, 1.0).unsqueeze(-1)
        r = self.response(torch.cat([responses, lengths], dim=-1).reshape(n * g, -1)).reshape(n, g, -1)
        return p, r

    def forward(self, prompt: Tensor, features: Tensor, responses: Tensor) -> Tensor:
        p, r = self._encode(prompt, features, responses)
        return self.head(torch.cat([p, r.mean(dim=1)], dim=-1))

    def with_rows(self, prompt: Tensor, features: Tensor, responses: Tensor) -> tuple[Tensor, Tensor]:
        p, r = self._encode(prompt, features, responses)
        n, g, _ = r.shape
        rows = torch.cat([p.unsqueeze(1).expand(-1, g, -1), r], dim=-1).reshape(n * g, -1)
        return self.head(torch.cat([p, r.mean(dim=1)], dim=-1)), self.row_head(rows).reshape(n, g, 2)


class GapProbe(nn.Module):
    """Stage 2: logits (N, G+1) over y, the number of right answers outside the vote.

    prompt (N, H), features (N, 1+2G) (the prompt branch reads the first 1+G), responses (N, G, H)
    and answered_other (N, G) bool: only those responses' states enter, averaged."""

    def __init__(self, hidden: int, group: int, prompt_dim: int = 128, mid_dim: int = 256,
                 resp_dim: int = 64, resp_out: int = 512, activation: str = "relu"):
        super().__init__()
        self.group = group
        self.prompt = _mlp([hidden + 1 + group, prompt_dim], activation, True)
        self.response = _mlp([hidden, resp_dim, resp_out], activation, True)
        self.head = _mlp([prompt_dim + resp_out, mid_dim, group + 1], activation, False)

    def forward(self, prompt: Tensor, features: Tensor, responses: Tensor,
                answered_other: Tensor) -> Tensor:
        g = self.group
        p = self.prompt(torch.cat([prompt, features[:, :1 + g]], dim=-1))
        keep = answered_other.to(responses.dtype).unsqueeze(-1)
        n = responses.shape[0]
        r = self.response((responses * keep).reshape(n * g, -1)).reshape(n, g, -1) * keep
        pooled = r.sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(torch.cat([p, pooled], dim=-1))
