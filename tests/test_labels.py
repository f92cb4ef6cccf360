"""CAG / CARE label selection (pivotal.algos.labels) against hand-computed values.

Expected numbers are written out literally with the arithmetic beside them.
"""

from __future__ import annotations

import math

import pytest
import torch

from pivotal.algos.labels import (
    LABEL_SELECTORS,
    agreement,
    corrective_advantage_gap,
    majority_labels,
    pseudo_label_accuracy,
    select_by_budget,
)

D = torch.float64


def ids(*values):
    return torch.tensor(values, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Majority labels and agreement
# ----------------------------------------------------------------------------------------------

def test_majority_labels_counts_ties_and_nones():
    answers = ["3", "5", "5", None,        # group 7: 5 x2 beats 3 x1; None ignored
               "2", "4", "4", "2",         # group 1: 2 x2 vs 4 x2 tie -> "2" (first in row order)
               None, None,                  # group 9: nothing extracted -> None
               None, "8", "6", "6"]        # group 4: None first, then 8 x1, 6 x2 -> "6"
    g = ids(7, 7, 7, 7, 1, 1, 1, 1, 9, 9, 4, 4, 4, 4)
    assert majority_labels(answers, g) == {7: "5", 1: "2", 9: None, 4: "6"}


def test_majority_tie_uses_first_occurrence_not_last_vote():
    # group 0: rows a, b, b, a -> tie 2-2; "a" appears first (row 0) -> "a"
    # group 1: rows b, a, a, b -> tie 2-2; "b" appears first -> "b"
    answers = ["a", "b", "b", "a", "b", "a", "a", "b"]
    assert majority_labels(answers, ids(0, 0, 0, 0, 1, 1, 1, 1)) == {0: "a", 1: "b"}


def test_majority_interleaved_noncontiguous_groups():
    # rows alternate between groups 10 and -3
    answers = ["1", "x", "2", "y", "2", "y"]
    g = ids(10, -3, 10, -3, 10, -3)
    # group 10: 1, 2, 2 -> "2"; group -3: x, y, y -> "y"
    assert majority_labels(answers, g) == {10: "2", -3: "y"}


def test_majority_length_mismatch():
    with pytest.raises(ValueError):
        majority_labels(["1", "2"], ids(0, 0, 0))


def test_agreement():
    answers = ["3", "5", "5", None,        # group 7: label 5, 2 of 4 rows agree -> 0.5
               "2", "4", "4", "2",         # group 1: label 2 (tie), 2 of 4 -> 0.5
               None, None,                  # group 9: no label -> 0.0
               "6", "6", "6",               # group 4: 3 of 3 -> 1.0
               "1", "2", "2", "2", "3"]    # group 2: label 2, 3 of 5 -> 0.6
    g = ids(7, 7, 7, 7, 1, 1, 1, 1, 9, 9, 4, 4, 4, 2, 2, 2, 2, 2)
    got = agreement(answers, g)
    assert got.keys() == {7, 1, 9, 4, 2}
    assert got[7] == pytest.approx(0.5)
    assert got[1] == pytest.approx(0.5)
    assert got[9] == 0.0
    assert got[4] == pytest.approx(1.0)
    assert got[2] == pytest.approx(0.6)


# ----------------------------------------------------------------------------------------------
# Corrective Advantage Gap
# ----------------------------------------------------------------------------------------------

def test_cag_right_and_wrong_pseudo_label():
    # group 0: pseudo label right -> identical rewards -> identical advantages -> gap 0
    # group 1: true [1,0,0,0], pseudo [0,1,1,1] (wrong majority).
    #   mean 0.25, centred [0.75,-0.25,-0.25,-0.25], population var (0.5625+3*0.0625)/4 = 0.1875,
    #   std 0.4330127 (the released code's np.std): A_true = [1.7320508, -0.5773503 x3], whose
    #   squares sum to n = 4; pseudo is 1 - true, so A_pseudo = -A_true and gap = 2 ||A_true|| = 4
    #   (the unbiased std gave 2 sqrt(3): the factor sqrt(n / (n - 1)))
    true = torch.tensor([1, 0, 1, 0, 1, 0, 0, 0], dtype=D)
    pseudo = torch.tensor([1, 0, 1, 0, 0, 1, 1, 1], dtype=D)
    got = corrective_advantage_gap(true, pseudo, ids(0, 0, 0, 0, 1, 1, 1, 1))
    assert got.keys() == {0, 1}
    assert got[0] == pytest.approx(0.0, abs=1e-12)
    assert got[1] == pytest.approx(4.0, abs=1e-12)


def test_cag_constant_groups_give_zero_advantages():
    # group 5: all-correct truth [1,1,1], pseudo all-wrong [0,0,0]: both std 0 -> A = 0 -> gap 0
    # group 6: truth [0,0,0] (nobody right), pseudo [0,1,1]: A_true = 0; A_pseudo has population
    #   std, so its squares sum to n = 3: gap = sqrt(3) = 1.7320508
    true = torch.tensor([1, 1, 1, 0, 0, 0], dtype=D)
    pseudo = torch.tensor([0, 0, 0, 0, 1, 1], dtype=D)
    got = corrective_advantage_gap(true, pseudo, ids(5, 5, 5, 6, 6, 6))
    assert got[5] == 0.0
    assert got[6] == pytest.approx(1.7320508075688772, abs=1e-12)


def test_cag_noncontiguous_interleaved_ids_and_int_rewards():
    # Same two groups as the right/wrong test, rows interleaved and ids 42 / -1, bool/int rewards.
    # group 42 rows 0,2,4,6: true [1,0,0,0], pseudo [0,1,1,1] -> 4
    # group -1 rows 1,3,5,7: true [1,1,0,0], pseudo [1,1,0,0] -> 0
    true = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0])
    pseudo = torch.tensor([0, 1, 1, 1, 1, 0, 1, 0])
    got = corrective_advantage_gap(true, pseudo, ids(42, -1, 42, -1, 42, -1, 42, -1))
    assert got.keys() == {42, -1}
    assert got[42] == pytest.approx(4.0, abs=1e-5)
    assert got[-1] == pytest.approx(0.0, abs=1e-7)


def test_cag_single_row_group_and_empty():
    # a group of one has no spread: A = 0 under both labels -> gap 0 (never nan)
    got = corrective_advantage_gap(torch.tensor([1.0]), torch.tensor([0.0]), ids(3))
    assert got == {3: 0.0}
    assert corrective_advantage_gap(torch.zeros(0), torch.zeros(0), ids()) == {}


def test_cag_partial_disagreement():
    # G=4, true [1,1,0,0], pseudo [1,0,0,0]
    # A_true: mean .5, population std 0.5 -> [1, 1, -1, -1]
    # A_pseudo = [1.7320508, -0.5773503 x3] (see above)
    # diff = [-0.7320508, 1.5773503, -0.4226497, -0.4226497]
    # squares: 0.5358984 + 2.4880339 + 0.1786328 + 0.1786328 = 3.3811979 -> gap 1.8388035
    got = corrective_advantage_gap(torch.tensor([1.0, 1, 0, 0], dtype=D),
                                   torch.tensor([1.0, 0, 0, 0], dtype=D), ids(0, 0, 0, 0))
    assert got[0] == pytest.approx(1.8388035, abs=1e-6)


def test_cag_selection_is_the_released_one_with_one_queried_prompt_of_five():
    # five prompts of four answers, budget 0.2 -> ceil(0.2 * 5) = 1 queried prompt. Groups 0 and 3
    # tie at the largest gap (a wrong 3-1 majority each): the released np.argsort(-gaps) takes the
    # first in prompt order, group 0; the three right majorities have gap 0
    true = torch.tensor([1, 0, 0, 0,  1, 1, 0, 0,  0, 0, 0, 0,  1, 0, 0, 0,  1, 1, 1, 1], dtype=D)
    pseudo = torch.tensor([0, 1, 1, 1,  1, 1, 0, 0,  0, 0, 0, 0,  0, 1, 1, 1,  1, 1, 1, 1], dtype=D)
    groups = torch.arange(5).repeat_interleave(4)
    gaps = corrective_advantage_gap(true, pseudo, groups)
    assert gaps == pytest.approx({0: 4.0, 1: 0.0, 2: 0.0, 3: 4.0, 4: 0.0})
    assert LABEL_SELECTORS.get("cag_oracle")(true, pseudo, [None] * 20, groups, 0.2) == {0}


def test_cag_length_mismatch():
    with pytest.raises(ValueError):
        corrective_advantage_gap(torch.zeros(3), torch.zeros(4), ids(0, 0, 0))


# ----------------------------------------------------------------------------------------------
# Budgeted selection
# ----------------------------------------------------------------------------------------------

TEN = {g: float(g) for g in range(10)}  # group g has score g


def test_select_by_budget_counts():
    assert select_by_budget(TEN, 0.2) == {9, 8}           # ceil(0.2 * 10) = 2, largest scores
    assert select_by_budget(TEN, 0.0) == set()
    assert select_by_budget(TEN, 1.0) == set(range(10))
    assert len(select_by_budget(TEN, 0.3)) == 3            # 0.3*10 = 3.0000000000000004 -> 3, not 4
    assert len(select_by_budget(TEN, 0.25)) == 3           # ceil(2.5) = 3
    assert len(select_by_budget(TEN, 0.01)) == 1           # ceil(0.1) = 1
    assert select_by_budget({}, 0.5) == set()


def test_select_by_budget_ordering_lowest():
    agree = {3: 0.9, 8: 0.25, 1: 0.5, 6: 1.0}
    # lowest agreement first: 8 (0.25), 1 (0.5), 3 (0.9), 6 (1.0); ceil(0.5 * 4) = 2
    assert select_by_budget(agree, 0.5, largest=False) == {8, 1}
    # largest: 6, 3
    assert select_by_budget(agree, 0.5) == {6, 3}


def test_select_by_budget_ties_by_group_id():
    scores = {5: 1.0, 2: 1.0, 9: 1.0, 7: 0.0}
    # ceil(0.5 * 4) = 2 of the three tied 1.0s: ids ascending -> 2, 5
    assert select_by_budget(scores, 0.5) == {2, 5}
    # lowest: 7 (0.0), then tie among 2, 5, 9 -> 2
    assert select_by_budget(scores, 0.5, largest=False) == {7, 2}


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.2", True])
def test_select_by_budget_bad_budget(bad):
    with pytest.raises(ValueError, match="reward.label_budget"):
        select_by_budget(TEN, bad)


# ----------------------------------------------------------------------------------------------
# Pseudo-label accuracy
# ----------------------------------------------------------------------------------------------

def test_pseudo_label_accuracy():
    labels = {0: "1,000", 1: "7", 2: None, 3: "0.5"}
    truth = {0: "1000", 1: "8", 2: "3", 3: "1/2", 4: "unused"}
    # 0: "1,000" == "1000" right; 1: wrong; 2: None wrong; 3: 0.5 == 1/2 right -> 2/4
    assert pseudo_label_accuracy(labels, truth) == 0.5
    assert pseudo_label_accuracy({}, truth) == 0.0
    with pytest.raises(KeyError):
        pseudo_label_accuracy({99: "1"}, truth)


def test_end_to_end_majority_then_accuracy():
    answers = ["1,000", "1000", "999", "4", "5", "5"]
    labels = majority_labels(answers, ids(0, 0, 0, 1, 1, 1))
    # group 0: "1,000" and "1000" are different raw keys (callers pass normalised keys), tie 1-1-1
    # -> first row "1,000"; normalised it still matches truth "1000". group 1: "5" vs truth "4".
    assert labels == {0: "1,000", 1: "5"}
    assert pseudo_label_accuracy(labels, {0: "1000", 1: "4"}) == 0.5
    assert math.isclose(agreement(answers, ids(0, 0, 0, 1, 1, 1))[1], 2 / 3)


def test_cag_matches_registered_grpo_advantage():
    # Cross-check the vectorised path against ADVANTAGES["grpo"] on random 0/1 rewards: GRPO
    # divides by the unbiased std (+ 1e-6), CAG by the population std, a factor sqrt(n / (n - 1))
    from pivotal.algos.advantages import ADVANTAGES
    gen = torch.Generator().manual_seed(0)
    g = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6] * 4)
    t = torch.randint(0, 2, (32,), generator=gen).to(D)
    p = torch.randint(0, 2, (32,), generator=gen).to(D)
    grpo = ADVANTAGES.get("grpo")
    mask = torch.ones(32, 1, dtype=D)
    diff = (grpo(t, g, mask) - grpo(p, g, mask))[:, 0]
    got = corrective_advantage_gap(t, p, g)
    for gid in g.unique().tolist():
        n = int((g == gid).sum())
        assert got[gid] == pytest.approx(float(diff[g == gid].norm()) * math.sqrt(n / (n - 1)),
                                         abs=1e-5)


@pytest.mark.parametrize("selector", ["cag_oracle", "agreement"])
def test_selection_over_ranks_is_the_one_process_selection(selector):
    """Two ranks' groups selected together give, per rank, the groups one process would choose
    on all rows (the budget is a share of the global batch, not of each rank's)."""
    from pivotal.algos.labels import LABEL_SELECTORS
    from pivotal.labeling import select_over_ranks

    select = LABEL_SELECTORS.get(selector)
    gen = torch.Generator().manual_seed(3)
    rows = 6 * 4  # 6 groups of 4
    true = torch.randint(0, 2, (rows,), generator=gen).float()
    pseudo = torch.randint(0, 2, (rows,), generator=gen).float()
    answers = [str(int(x)) for x in torch.randint(0, 3, (rows,), generator=gen)]
    groups = torch.arange(6).repeat_interleave(4)
    for budget in (0.2, 0.5, 1.0):
        whole = select(true, pseudo, answers, groups, budget)
        half = rows // 2  # rank 0: groups 0-2, rank 1: groups 3-5 (renumbered from 0)
        parts = [(true[:half], pseudo[:half], answers[:half], groups[:half]),
                 (true[half:], pseudo[half:], answers[half:], groups[half:] - 3)]
        mine = [select_over_ranks(select, parts, r, budget) for r in (0, 1)]
        assert mine[0] | {g + 3 for g in mine[1]} == whole, (budget, mine, whole)
        if budget == 0.5:  # ceil(0.5 * 6) = 3 groups in all; per rank it would be 2 + 2
            assert len(mine[0]) + len(mine[1]) == 3
            assert sum(len(select(*part, budget)) for part in parts) == 4
