"""PSR, NSR and W-REINFORCE: the two halves of RLVR's objective, trained apart or reweighted.

Paper: Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning",
https://arxiv.org/abs/2506.01347; checked against the released code (TianHongZXY/RLVR-Decomposed,
verl/trainer/ppo/core_algos.py `compute_psr_nsr_outcome_advantage` and the trainer's batch subset in
ray_trainer.py). Not to be confused with the near-boundary stochastic rescue of the "Clipping
Bottleneck" paper, which that paper also calls NSR: here it is the `clip_rescue` losses.

With a verifier reward R (1 correct, 0 incorrect) and no baseline:

    psr          A = R          trained on the correct responses only   (positive sample reinf.)
    nsr          A = R - 1      trained on the incorrect responses only (negative sample reinf.)
    w_reinforce  A = lam * R    on correct responses,                   (weighted REINFORCE:
                 A = R - 1      on incorrect ones, lam = 0.1             both halves, positives
                                                                         down-weighted)

"Correct" is the task verifier's verdict (`RolloutBatch.correct`, the "correct" advantage input);
R is the response's total reward, so a shaped reward (format bonus, overlong penalty, KL in the
reward) shifts A as it does in the released code, where A is the return of the token-level rewards.

psr and nsr train only on their half: the released trainer removes the other rows from the batch
before the update, so they leave the loss and its token-mean denominator, and cost no compute.
Here that is the estimator's `trained_rows` rule (`pivotal.algos.advantages.trained_rows`), which
the step applies after the advantages (each data-parallel rank to its own rows). The released
trainer keeps verl's mini-batch size in samples, so a smaller subset gives fewer optimizer steps;
pivotal keeps `optim.mini_batches` fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.advantages import _as_float, _broadcast, register_advantage, trains_on
from pivotal.algos.credit import requires


def _verdicts(correct: Tensor | None, scores: Tensor, name: str) -> Tensor:
    if correct is None:
        raise ValueError(f"advantage '{name}' needs the verifier's verdicts (the `correct` input)")
    if correct.shape != scores.shape:
        raise ValueError(f"advantage '{name}': correct {tuple(correct.shape)} and scores "
                         f"{tuple(scores.shape)} must both be (B,)")
    return correct.bool()


@register_advantage("psr")
@requires({"correct"})
@trains_on(lambda correct, **_: correct.bool())
def psr_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                  correct: Tensor | None = None) -> Tensor:
    """Positive sample reinforcement (arXiv 2506.01347): A = R on correct responses; the incorrect
    ones are not trained on (their rows leave the batch; here their advantage is 0).

    scores (B,), group_ids (B,) (unused: no baseline), response_mask (B, T), correct (B,) bool
    -> (B, T)
    """
    scores = _as_float(scores)
    ok = _verdicts(correct, scores, "psr")
    return _broadcast(torch.where(ok, scores, torch.zeros_like(scores)), response_mask)


@register_advantage("nsr")
@requires({"correct"})
@trains_on(lambda correct, **_: ~correct.bool())
def nsr_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                  correct: Tensor | None = None) -> Tensor:
    """Negative sample reinforcement (arXiv 2506.01347): A = R - 1 on incorrect responses (-1 for
    a 0/1 reward), pushing probability mass off wrong answers and redistributing it by the model's
    prior; the correct ones are not trained on (their rows leave the batch; here A = 0).

    scores (B,), group_ids (B,) (unused), response_mask (B, T), correct (B,) bool -> (B, T)
    """
    scores = _as_float(scores)
    ok = _verdicts(correct, scores, "nsr")
    return _broadcast(torch.where(ok, torch.zeros_like(scores), scores - 1.0), response_mask)


@register_advantage("w_reinforce")
@requires({"correct"})
def w_reinforce_advantage(scores: Tensor, group_ids: Tensor, response_mask: Tensor, *,
                          correct: Tensor | None = None, lam: float = 0.1) -> Tensor:
    """Weighted REINFORCE (arXiv 2506.01347): A = lam * R on correct responses, R - 1 on incorrect
    ones; every row trains. lam = 0.1 is the paper's recommendation (the released code's
    `positive_advantage_weight`); lam = 1 is REINFORCE with a constant baseline of 1 on failures.

    scores (B,), group_ids (B,) (unused), response_mask (B, T), correct (B,) bool -> (B, T)
    """
    if lam < 0:
        raise ValueError(f"w_reinforce: lam must be >= 0, got {lam}")
    scores = _as_float(scores)
    ok = _verdicts(correct, scores, "w_reinforce")
    return _broadcast(torch.where(ok, lam * scores, scores - 1.0), response_mask)
