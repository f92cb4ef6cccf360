"""Algorithm core against hand-computed values.

Expected numbers are written out literally with the arithmetic beside them; they are never
produced by calling the formula under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from pivotal.algos import (
    ADVANTAGES,
    AGGREGATIONS,
    CREDITS,
    KL_ESTIMATORS,
    LOSSES,
    LossOutput,
    aggregate_loss,
    credit_requirements,
    dynamic_sampling_mask,
    group_stats,
    kl_per_token,
    kl_reward_penalty,
    overlong_penalty,
    truncation_mask,
)
from pivotal.batch import RolloutBatch
from pivotal.registry import UnknownNameError

D = torch.float64


def close(actual, expected, tol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"\n{actual}\n!=\n{expected}"


# ----------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------
# Six responses, non-contiguous group ids:
#   group 10 -> rows 0, 2, 5 with scores 1, 0, 0    (mixed)
#   group 3  -> rows 1, 3    with scores 0.5, 0.5   (all agree -> A = 0)
#   group 42 -> row 4        with score 1           (size 1 -> A = 0)
# Response lengths 3, 1 (one-token response), 2, 0 (all padding), 3, 1.
SCORES = torch.tensor([1.0, 0.5, 0.0, 0.5, 1.0, 0.0], dtype=D)
GIDS = torch.tensor([10, 3, 10, 3, 42, 10])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=D)


def per_row(values):
    """Expected (B,) per-response values broadcast over MASK."""
    return torch.tensor(values, dtype=D)[:, None] * MASK


def test_grpo_group_std():
    # group 10: mean 1/3, deviations +2/3, -1/3, -1/3; unbiased var (4/9 + 1/9 + 1/9)/2 = 1/3,
    # std = sqrt(1/3) = 0.5773503 -> A = (2/3)/0.5773503 = 1.1547005, (-1/3)/0.5773503 = -0.5773503
    adv = ADVANTAGES.get("grpo")(SCORES, GIDS, MASK)
    close(adv, per_row([1.1547005, 0.0, -0.5773503, 0.0, 0.0, -0.5773503]))
    assert torch.isfinite(adv).all()
    # padding, the all-padding row, the agreeing group and the size-1 group are exactly 0
    assert (adv[MASK == 0] == 0).all()
    assert (adv[[1, 3, 4]] == 0).all()


def test_grpo_batch_std_and_none():
    # batch: mean 0.5, unbiased var = (0.25+0+0.25+0+0.25+0.25)/5 = 0.2, std = 0.4472136
    # A = (2/3)/0.4472136 = 1.4907120, (-1/3)/0.4472136 = -0.7453560 (group-mean centred)
    adv = ADVANTAGES.get("grpo")(SCORES, GIDS, MASK, std_scale="batch")
    close(adv, per_row([1.4907120, 0.0, -0.7453560, 0.0, 0.0, -0.7453560]))
    none = ADVANTAGES.get("grpo")(SCORES, GIDS, MASK, std_scale="none")
    close(none, per_row([2 / 3, 0.0, -1 / 3, 0.0, 0.0, -1 / 3]))
    # Dr.GRPO is grpo without the std: same numbers
    close(ADVANTAGES.get("dr_grpo")(SCORES, GIDS, MASK), per_row([2 / 3, 0, -1 / 3, 0, 0, -1 / 3]))
    with pytest.raises(ValueError, match="std_scale"):
        ADVANTAGES.get("grpo")(SCORES, GIDS, MASK, std_scale="groups")


def test_grpo_identical_rewards_exactly_zero():
    # 3 x 0.1 has a float mean of 0.10000000000000002; the result must still be exactly 0
    scores = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0], dtype=D)
    gids = torch.tensor([0, 0, 0, 1, 1])
    mask = torch.ones(5, 2, dtype=D)
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = ADVANTAGES.get(name)(scores, gids, mask)
        assert (adv[:3] == 0).all(), name
        assert (adv[3:] != 0).all(), name


def test_size_one_groups_no_nan():
    # every group a singleton: no baseline at all -> 0, never nan (unbiased std of 1 element is nan)
    scores = torch.tensor([1.0, 0.0, 3.0])
    gids = torch.tensor([7, 100, -2])
    mask = torch.ones(3, 4)
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = ADVANTAGES.get(name)(scores, gids, mask)
        assert torch.equal(adv, torch.zeros(3, 4)), name
    for mode in ("group", "batch", "none"):
        assert torch.equal(ADVANTAGES.get("grpo")(scores[:1], gids[:1], mask[:1], std_scale=mode),
                           torch.zeros(1, 4))


def test_rloo():
    # group 10: row0 1 - mean(0, 0) = 1; row2 0 - mean(1, 0) = -0.5; row5 0 - mean(1, 0) = -0.5
    adv = ADVANTAGES.get("rloo")(SCORES, GIDS, MASK)
    close(adv, per_row([1.0, 0.0, -0.5, 0.0, 0.0, -0.5]))


def test_reinforce_pp_baseline():
    # group-mean centred per row: 2/3, 0, -1/3, 0, 0, -1/3 over 3, 1, 2, 0, 3, 1 tokens (10 tokens)
    # token mean = (3*2/3 - 2/3 - 1/3)/10 = 0.1
    # token var (population) = E[a^2] - 0.1^2 = (3*4/9 + 3*1/9)/10 - 0.01 = 1/6 - 1/100 = 47/300
    # std = sqrt(47/300) = 0.3958114
    # A: (2/3 - 0.1)/0.3958114 = 1.4316583; (0 - 0.1)/.. = -0.2526456; (-1/3 - 0.1)/.. = -1.0947975
    adv = ADVANTAGES.get("reinforce_pp_baseline")(SCORES, GIDS, MASK)
    close(adv, per_row([1.4316583, -0.2526456, -1.0947975, -0.2526456, -0.2526456, -1.0947975]))
    assert (adv[3] == 0).all()  # all-padding row stays 0
    # whitened over valid tokens: mean 0, std 1
    valid = adv[MASK.bool()]
    close(valid.mean(), 0.0)
    close(valid.pow(2).mean(), 1.0)
    # no valid token anywhere: zeros, not nan
    empty = ADVANTAGES.get("reinforce_pp_baseline")(SCORES, GIDS, torch.zeros_like(MASK))
    assert torch.equal(empty, torch.zeros_like(MASK))


def test_advantage_accepts_bool_scores_and_float32_mask():
    adv = ADVANTAGES.get("dr_grpo")(torch.tensor([True, False]), torch.tensor([0, 0]),
                                    torch.ones(2, 1))
    close(adv, [[0.5], [-0.5]])


def test_group_stats():
    stats = group_stats(SCORES, GIDS)
    # 3 groups; group 3 agrees and group 42 is a singleton -> 2/3 zero-variance; sizes 3, 2, 1
    assert stats["num_groups"] == 3.0
    assert stats["zero_variance_frac"] == pytest.approx(2 / 3)
    assert stats["mean_group_size"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# Policy losses
# ----------------------------------------------------------------------------------------------

def ppo_inputs():
    """Row 0: six tokens, one per branch; row 1: all padding with garbage values."""
    ratios = torch.tensor([1.1, 1.5, 0.5, 5.0, 0.5, 1.2], dtype=D)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, -2.0], [1.0] * 6], dtype=D)
    old = torch.full((2, 6), math.log(0.3), dtype=D)
    lp = torch.cat([old[:1] + ratios.log(), torch.full((1, 6), 30.0, dtype=D)])  # row 1: r = e^30
    mask = torch.tensor([[1.0] * 6, [0.0] * 6], dtype=D)
    return lp.requires_grad_(), old, adv, mask


def test_ppo_clip_branches_and_metrics():
    lp, old, adv, mask = ppo_inputs()
    out = LOSSES.get("ppo_clip")(lp, old, adv, mask)
    assert isinstance(out, LossOutput)
    # t0 A=+1 r=1.1  unclipped           : -1.1
    # t1 A=+1 r=1.5  clipped high        : max(-1.5, -1.28) = -1.28
    # t2 A=-1 r=0.5  clipped low         : max(0.5, 0.8) = 0.8
    # t3 A=-1 r=5    dual clip (c = 3)   : min(3, max(5, 1.28)) = 3
    # t4 A=+2 r=0.5  A>0, low r: unclipped: max(-1.0, -1.6) = -1.0
    # t5 A=-2 r=1.2  unclipped           : max(2.4, 2.4) = 2.4
    close(out.per_token_loss, [[-1.1, -1.28, 0.8, 3.0, -1.0, 2.4], [0.0] * 6])
    m = out.metrics
    close(m["clip_frac_low"], 1 / 6)
    close(m["clip_frac_high"], 1 / 6)
    close(m["dual_clip_frac"], 1 / 6)
    close(m["ratio_mean"], 9.8 / 6)  # (1.1+1.5+0.5+5+0.5+1.2)/6
    # k3 = r-1-ln r: .0046898 + .0945349 + .1931472 + 2.3905621 + .1931472 + .0176784 = 2.8937596
    close(m["approx_kl"], 2.8937596 / 6)
    assert all(not v.requires_grad and v.dim() == 0 for v in m.values())

    # gradient: d(-A r)/d lp = -A r where unclipped, 0 where any clip is active and on padding
    out.per_token_loss.sum().backward()
    close(lp.grad, [[-1.1, 0.0, 0.0, 0.0, -1.0, 2.4], [0.0] * 6])


def test_ppo_clip_symmetric_and_no_dual():
    lp, old, adv, mask = ppo_inputs()
    out = LOSSES.get("ppo_clip")(lp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=None)
    # t1 now clipped at 1.2 -> -1.2; t3 no dual clip -> max(5, 1.2) = 5
    close(out.per_token_loss[0], [-1.1, -1.2, 0.8, 5.0, -1.0, 2.4])
    close(out.metrics["dual_clip_frac"], 0.0)
    with pytest.raises(ValueError, match="dual_clip"):
        LOSSES.get("ppo_clip")(lp, old, adv, mask, dual_clip=0.5)


def test_ppo_clip_on_policy_equals_vanilla_gradient():
    # at r = 1 nothing is clipped and grad(-A r) = -A = grad(-A lp)
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D, requires_grad=True)
    adv = torch.tensor([[0.7, -1.3, 2.0]], dtype=D)
    mask = torch.ones(1, 3, dtype=D)
    LOSSES.get("ppo_clip")(lp, lp.detach(), adv, mask).per_token_loss.sum().backward()
    close(lp.grad, [[-0.7, 1.3, -2.0]])


def test_gspo_sequence_ratio_and_clip():
    # row 0: log-ratios 0.3, -0.1, 0.1 -> mean 0.1 -> s = e^0.1 = 1.1051709, A = +2
    # row 1: log-ratios 0.2, 0.4 (+ padding) -> mean 0.3 -> s = e^0.3 = 1.3498588, A = -1
    # row 2: log-ratio -0.01 (one token) -> s = e^-0.01 = 0.9900498, A = -1
    # row 3: all padding
    old = torch.full((4, 3), -1.0, dtype=D)
    log_r = torch.tensor([[0.3, -0.1, 0.1], [0.2, 0.4, 7.0], [-0.01, 9.0, 9.0], [5.0] * 3],
                         dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=D)
    adv = torch.tensor([2.0, -1.0, -1.0, 1.0], dtype=D)[:, None] * mask
    lp = (old + log_r).requires_grad_()

    out = LOSSES.get("gspo")(lp, old, adv, mask)  # clip 3e-4 / 4e-4
    # row 0 (A>0, s > 1.0004): clipped high, -2 * 1.0004 = -2.0008, no gradient
    # row 1 (A<0, s > 1):      max(1.3498588, 1.0004) = 1.3498588, unclipped
    # row 2 (A<0, s < 0.9997): max(0.9900498, 0.9997) = 0.9997, clipped low
    close(out.per_token_loss, [[-2.0008] * 3, [1.3498588, 1.3498588, 0.0], [0.9997, 0, 0],
                               [0.0] * 3])
    # 6 valid tokens: row 0's three clipped high, row 2's one clipped low
    close(out.metrics["clip_frac_high"], 3 / 6)
    close(out.metrics["clip_frac_low"], 1 / 6)
    close(out.metrics["ratio_mean"], 7.0052802 / 6)  # 3*1.1051709 + 2*1.3498588 + 0.9900498
    out.per_token_loss.sum().backward()
    # d(-A s_it)/d lp_t = -A s_i: row 1 gets +1.3498588 on each token, clipped rows get 0
    close(lp.grad, [[0.0] * 3, [1.3498588, 1.3498588, 0.0], [0.0] * 3, [0.0] * 3])


def test_gspo_gradient_equal_across_tokens_when_unclipped():
    old = torch.full((2, 3), -1.0, dtype=D)
    log_r = torch.tensor([[0.3, -0.1, 0.1], [0.2, 0.4, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    adv = torch.tensor([2.0, -1.0], dtype=D)[:, None] * mask
    lp = (old + log_r).requires_grad_()
    out = LOSSES.get("gspo")(lp, old, adv, mask, clip_low=0.5, clip_high=0.5)
    # every token of a sequence carries the sequence ratio: -2 * 1.1051709 = -2.2103418
    close(out.per_token_loss, [[-2.2103418] * 3, [1.3498588, 1.3498588, 0.0]])
    out.per_token_loss.sum().backward()
    close(lp.grad, [[-2.2103418] * 3, [1.3498588, 1.3498588, 0.0]])
    # seq-mean-token-mean then gives the sequence objective's gradient -A s_i / |y_i| per token
    lp.grad = None
    out = LOSSES.get("gspo")(lp, old, adv, mask, clip_low=0.5, clip_high=0.5)
    aggregate_loss(out.per_token_loss, mask, "seq-mean-token-mean").backward()
    # row 0: -2.2103418 / 3 / 2 seqs = -0.3683903; row 1: 1.3498588 / 2 / 2 = 0.3374647
    close(lp.grad, [[-0.3683903] * 3, [0.3374647, 0.3374647, 0.0]])


def test_vanilla_pg():
    lp = torch.tensor([[-0.5, -2.0, 4.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 3.0]], dtype=D)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    out = LOSSES.get("vanilla_pg")(lp, lp.detach(), adv, mask)
    close(out.per_token_loss, [[0.5, -2.0, 0.0]])  # -A * lp, padding 0
    close(out.metrics["ratio_mean"], 1.0)
    close(out.metrics["approx_kl"], 0.0)
    out.per_token_loss.sum().backward()
    close(lp.grad, [[-1.0, 1.0, 0.0]])


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "vanilla_pg", "cispo", "sapo", "gmpo"])
def test_losses_no_nan_with_padding_garbage(name):
    # padding holds inf / nan log-probs: loss, metrics and gradient stay finite
    lp = torch.tensor([[-1.0, float("inf")], [float("nan"), float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.2, float("-inf")], [0.0, 0.0]])
    adv = torch.tensor([[1.0, 5.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    out = LOSSES.get(name)(lp, old, adv, mask)
    assert torch.isfinite(out.per_token_loss).all()
    assert (out.per_token_loss[mask == 0] == 0).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    out.per_token_loss.sum().backward()
    assert torch.isfinite(lp.grad).all()
    assert (lp.grad[mask == 0] == 0).all()


def test_log_ratio_clamped():
    lp = torch.tensor([[100.0]], dtype=D)
    out = LOSSES.get("ppo_clip")(lp, torch.zeros(1, 1, dtype=D), -torch.ones(1, 1, dtype=D),
                                 torch.ones(1, 1, dtype=D), dual_clip=None)
    close(out.metrics["ratio_mean"], math.exp(20), tol=1.0)  # exp(clamp(100, -20, 20))
    close(out.per_token_loss, [[math.exp(20)]], tol=1.0)


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------
# rows of lengths 3, 1, 2, 0; a garbage 100 sits on padding and must be ignored
AGG_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0], [5.0, 6.0, 0.0], [0.0, 0.0, 0.0]])
AGG_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 3.5),                # (1+2+3+4+5+6) / 6 tokens = 21/6
    ("seq-mean-token-mean", 2.875),     # (2 + 4 + 5.5 + 0) / 4 sequences
    ("seq-mean-token-sum", 5.25),       # (6 + 4 + 11 + 0) / 4
    ("seq-mean-token-sum-norm", 1.05),  # 21 / (4 sequences * L_max 5)
])
def test_aggregation_by_hand(mode, expected):
    close(aggregate_loss(AGG_LOSS, AGG_MASK, mode, max_len=5), expected)


def test_aggregation_explicit_totals_and_errors():
    # totals override the batch's own counts: token-mean 21/10, seq modes divide by 7 sequences
    close(aggregate_loss(AGG_LOSS, AGG_MASK, "token-mean", total_tokens=10), 2.1)
    close(aggregate_loss(AGG_LOSS, AGG_MASK, "seq-mean-token-sum", total_seqs=7), 3.0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(AGG_LOSS, AGG_MASK, "seq-mean-token-sum-norm")
    # nothing valid at all: 0, not nan
    for mode in AGGREGATIONS.names():
        assert aggregate_loss(AGG_LOSS, torch.zeros_like(AGG_MASK), mode, max_len=5) == 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_micro_batch_split_sums_to_full(mode):
    g = torch.Generator().manual_seed(0)
    B, T = 7, 6
    loss = torch.randn(B, T, generator=g, dtype=D)
    lengths = torch.tensor([6, 1, 0, 3, 5, 2, 4])  # includes an all-padding row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(D)
    full = aggregate_loss(loss, mask, mode, max_len=T)
    totals = dict(total_tokens=float(mask.sum()), total_seqs=B, max_len=T)
    parts = [slice(0, 1), slice(1, 4), slice(4, 7)]  # uneven micro-batches 1 / 3 / 3
    summed = sum(aggregate_loss(loss[s], mask[s], mode, **totals) for s in parts)
    close(summed, float(full), tol=1e-12)
    assert torch.isfinite(full)


# ----------------------------------------------------------------------------------------------
# KL
# ----------------------------------------------------------------------------------------------

def test_kl_estimators_by_hand():
    lp = torch.tensor([[-1.0, -0.5, -2.0]], dtype=D)
    rlp = torch.tensor([[-1.5, -0.5, -1.0]], dtype=D)
    close(KL_ESTIMATORS.get("k1")(lp, rlp), [[0.5, 0.0, -1.0]])       # lp - rlp
    close(KL_ESTIMATORS.get("k2")(lp, rlp), [[0.125, 0.0, 0.5]])      # 0.5 * (lp - rlp)^2
    # d = rlp - lp = -0.5, 0, 1: e^-0.5 + 0.5 - 1 = 0.1065307; 0; e - 1 - 1 = 0.7182818
    close(KL_ESTIMATORS.get("k3")(lp, rlp), [[0.1065307, 0.0, 0.7182818]])


def test_k3_nonnegative_and_clamped():
    g = torch.Generator().manual_seed(1)
    lp, rlp = torch.randn(2, 50, 40, generator=g) * 3
    assert (KL_ESTIMATORS.get("k3")(lp, rlp) >= 0).all()
    # d = 30 -> 20 -> e^20 - 21 -> clamped to 10; d = -1000 -> -20 -> 19.0... -> clamped to 10
    out = KL_ESTIMATORS.get("k3")(torch.tensor([-30.0, 0.0]), torch.tensor([0.0, -1000.0]))
    assert torch.equal(out, torch.tensor([10.0, 10.0]))


def test_kl_per_token_and_reward_penalty():
    lp = torch.tensor([[-1.0, -0.5, -2.0], [0.0, 0.0, 0.0]], dtype=D)
    rlp = torch.tensor([[-1.5, -0.5, -1.0], [float("-inf")] * 3], dtype=D)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    close(kl_per_token(lp, rlp, mask, "k2"), [[0.125, 0.0, 0.0], [0.0] * 3])
    # row 0: 0.1 * (0.5 + 0) = 0.05 (third token is padding); row 1 all padding: 0
    close(kl_reward_penalty(lp, rlp, mask, coef=0.1), [0.05, 0.0])


# ----------------------------------------------------------------------------------------------
# Credit
# ----------------------------------------------------------------------------------------------

def make_batch(advantages=None):
    B, T = 2, 3
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2, dtype=torch.long),
        response_ids=torch.zeros(B, T, dtype=torch.long),
        response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        old_logprobs=torch.zeros(B, T), group_ids=torch.tensor([0, 0]),
        truncated=torch.tensor([False, True]), advantages=advantages)


def test_identity_credit():
    adv = torch.tensor([[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]])
    batch = make_batch(adv)
    assert torch.equal(CREDITS.get("identity")(batch, None), torch.ones(2, 3))
    assert credit_requirements(CREDITS.get("identity"), {}) == frozenset()


# ----------------------------------------------------------------------------------------------
# Shaping
# ----------------------------------------------------------------------------------------------

def test_overlong_penalty():
    # max_len 20, buffer 5: penalty starts after 15 tokens
    lengths = torch.tensor([10, 15, 17, 20, 25])
    # 10, 15 -> 0; 17 -> -(17-15)/5 = -0.4; 20 -> -(5/5) = -1; 25 (never generated) clamps at -1
    close(overlong_penalty(lengths, 20, 5), [0.0, 0.0, -0.4, -1.0, -1.0])
    # factor 0.5 at 18 tokens: -(3/5) * 0.5 = -0.3
    close(overlong_penalty(torch.tensor([18]), 20, 5, factor=0.5), [-0.3])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 20, 0)


def test_dynamic_sampling_mask():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.1, 0.1, 0.1])
    gids = torch.tensor([5, 5, 9, 9, 2, 11, 11, 11])
    # group 5 mixed -> keep; group 9 agrees -> drop; group 2 singleton -> drop; 3 x 0.1 -> drop
    assert dynamic_sampling_mask(scores, gids).tolist() == [True, True, False, False, False,
                                                           False, False, False]


def test_truncation_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    out = truncation_mask(torch.tensor([False, True, False]), mask)
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


# ----------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("registry,typo,right", [
    (ADVANTAGES, "grpoo", "grpo"), (LOSSES, "ppo_clipp", "ppo_clip"),
    (AGGREGATIONS, "token_mean", "token-mean"), (KL_ESTIMATORS, "k33", "k3"),
    (CREDITS, "identty", "identity"),
])
def test_unknown_name_suggests(registry, typo, right):
    with pytest.raises(UnknownNameError) as err:
        registry.get(typo)
    msg = str(err.value)
    assert f"'{typo}'" in msg and f"Did you mean '{right}'?" in msg


def test_registry_contents():
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "nsr", "otb", "psr", "reinforce_pp_baseline",
                                  "rloo", "w_reinforce"]
    assert LOSSES.names() == ["cispo", "gmpo", "gspo", "gspo_rescue", "ppo_clip", "ppo_clip_rescue",
                              "sapo", "vanilla_pg"]
    assert AGGREGATIONS.names() == ["seq-mean-token-mean", "seq-mean-token-sum",
                                    "seq-mean-token-sum-norm", "token-mean"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert CREDITS.names() == ["amr_sd", "divergence", "dlogp", "fipo", "high_entropy", "identity",
                              "owpo", "self_distill"]
