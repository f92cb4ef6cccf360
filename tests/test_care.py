"""CARE's two-stage probe (pivotal.algos.care, pivotal.care_probe): the released rules pinned on
hand-made groups, the probes' inputs, online training, checkpoints, and a run of the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from pivotal.algos.care import (
    GapProbe,
    VoteProbe,
    answer_clusters,
    care_choice,
    class_balance,
    count_gap,
    expected_gap,
    group_labels,
    soft_weights,
)
from pivotal.care_probe import CareSelector
from pivotal.config import load_config
from pivotal.errors import ConfigError
from test_trainer import tiny_config


def test_count_gap_by_hand():
    # n=8, x=3 voters, y=2 right answers elsewhere: pseudo adv 1.291 / -0.775, true 1.732 / -0.577
    s1 = math.sqrt(3 / 8 * 5 / 8)
    s2 = math.sqrt(2 / 8 * 6 / 8)
    pseudo = [(1 - 3 / 8) / s1] * 3 + [(-3 / 8) / s1] * 5
    true = [(-2 / 8) / s2] * 3 + [(1 - 2 / 8) / s2] * 2 + [(-2 / 8) / s2] * 3
    want = math.sqrt(sum((a - b) ** 2 for a, b in zip(pseudo, true)))
    assert count_gap(8, 3, 2) == pytest.approx(want, rel=1e-12)
    assert count_gap(8, 3, 0) == pytest.approx(math.sqrt(8))  # true rewards flat: A_true = 0
    assert count_gap(8, 0, 0) == 0.0
    assert count_gap(8, 8, 0) == 0.0  # every row votes: both flat
    with pytest.raises(ValueError, match="y <= x"):
        count_gap(8, 2, 3)


def test_clusters_largest_first_ties_by_first_row():
    assert answer_clusters(["5", "6", None, "6", "5", "7"]) == [[0, 4], [1, 3], [5]]
    assert answer_clusters([None, None]) == []


def test_group_labels_by_hand():
    answers = ["5", "5", "6", None, "5", "7", "6", "6"]  # 5 x3 (first), 6 x3, 7 x1, one unanswered
    lengths = [10, 20, 30, 48, 5, 6, 7, 96]
    correct = [0, 0, 1, 0, 0, 0, 1, 1]  # truth 6: the vote (5) is wrong
    g = group_labels(answers, lengths, correct, max_len=48)
    G = 8
    assert g.features[0] == pytest.approx(7 / 8)
    assert g.features[1:1 + G].tolist() == pytest.approx([3 / 8, 3 / 8, 1 / 8] + [0.0] * 5)
    assert g.features[1 + G:].tolist() == pytest.approx([n / 48 for n in lengths[:7]] + [1.0])
    assert g.answered_other.tolist() == [False, False, True, False, False, True, True, True]
    assert torch.nonzero(g.class_mask).flatten().tolist() == [0, 1, 3]
    assert g.class_gap[3] == pytest.approx(count_gap(8, 3, 3))
    assert g.class_gap[2] == 0.0
    assert not g.vote_correct and g.correct_count == 3
    assert g.true_gap == pytest.approx(count_gap(8, 3, 3))
    # right answers in two clusters ("0.5", "1/2": both accepted) outnumber the vote (3 > 2)
    split = group_labels(["9", "9", "0.5", "0.5", "1/2", None, None, None], [1] * 8,
                         [0, 0, 1, 1, 1, 0, 0, 0], max_len=8)
    assert split.correct_count == 3 and split.true_gap == 0.0  # no gap(8, 2, 3): the released 0
    right = group_labels(answers, lengths, [1, 0, 0, 0, 0, 0, 0, 0], max_len=48)
    assert right.vote_correct and right.correct_count == 0 and right.true_gap == 0.0


def test_expected_gap_ignores_impossible_classes():
    logits = torch.tensor([[0.0, 0.0, 50.0, 0.0]])  # class 2 would dominate but is impossible
    mask = torch.tensor([[True, True, False, True]])
    cost = torch.tensor([[1.0, 2.0, 100.0, 4.0]])
    assert expected_gap(logits, mask, cost).item() == pytest.approx((1 + 2 + 4) / 3)


def test_choice_gate_and_budget():
    vote_right = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.7, 0.4])
    gap = torch.tensor([5.0, 1.0, 4.0, 1.0, 0.5, 3.0, 2.0, 1.0])
    # gate shut (warm-up): nobody confident; budget 0.25 -> ceil(2) highest gaps: 0, 2
    queried, confident = care_choice(vote_right, gap, 0.25, 0.25, gate_open=False)
    assert queried == [0, 2] and not confident.any()
    # gate open: ceil(8 * 0.25) = 2 most trusted votes (0, 2) rank last; next gaps: 5 (3.0), 6 (2.0)
    queried, confident = care_choice(vote_right, gap, 0.25, 0.25, gate_open=True)
    assert confident.nonzero().flatten().tolist() == [0, 2] and queried == [5, 6]
    # ties by prompt order (stable): gaps 1.0 at 1, 3, 7 -> 1 then 3
    queried, _ = care_choice(vote_right, gap, 5 / 8, 0.25, gate_open=True)
    assert queried == [5, 6, 1, 3, 7]


def test_soft_weights():
    gap = torch.tensor([0.5, 2.0, 0.2, 3.0])
    confident = torch.tensor([True, True, False, False])
    w = soft_weights(gap, confident, [3], soft_adv=1.0)
    # confident: clip(1.0 * gap, 0, 1) -> 0.5, 1.0; neither confident nor queried: 0; queried: 1
    assert w.tolist() == [0.5, 1.0, 0.0, 1.0]
    assert soft_weights(gap, confident, [], soft_adv=0.0).tolist() == [0.0] * 4


def test_class_balance_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1])  # counts 4, 1 -> 1/2, 1 -> mean-normalised 2/3, 4/3
    assert class_balance(labels, 3, 0.5, 0.25, 4.0).tolist() == pytest.approx([2 / 3, 4 / 3, 0.0])
    assert class_balance(labels, 2, 0.5, 0.9, 1.1).tolist() == pytest.approx([0.9, 1.1])


def test_gap_probe_reads_only_answered_non_vote_responses():
    torch.manual_seed(0)
    probe = GapProbe(hidden=6, group=4, prompt_dim=8, mid_dim=8, resp_dim=8, resp_out=8).eval()
    prompt, features = torch.randn(3, 6), torch.rand(3, 9)
    responses = torch.randn(3, 4, 6)
    keep = torch.tensor([[True, False, True, False]] * 3)
    other = responses.clone()
    other[:, 1] += 10.0  # states of rows the probe must not read
    assert torch.equal(probe(prompt, features, responses, keep), probe(prompt, features, other, keep))
    assert not torch.equal(probe(prompt, features, responses, ~keep), probe(prompt, features, responses, keep))
    vote = VoteProbe(hidden=6, group=4, prompt_dim=8, mid_dim=8, resp_dim=8, resp_out=8).eval()
    logits, rows = vote.with_rows(prompt, features, responses)
    assert logits.shape == (3, 2) and rows.shape == (3, 4, 2)
    assert torch.equal(logits, vote(prompt, features, responses))


def _groups(seed: int, n_groups: int = 6, G: int = 4, H: int = 5):
    gen = torch.Generator().manual_seed(seed)
    answers = [str(int(a)) for a in torch.randint(0, 3, (n_groups * G,), generator=gen)]
    correct = torch.tensor([a == "1" for a in answers])
    return dict(answers=answers, group_ids=torch.arange(n_groups).repeat_interleave(G),
                lengths=torch.randint(1, 9, (n_groups * G,), generator=gen).float(),
                correct=correct, prompt_states=torch.randn(n_groups * G, H, generator=gen),
                response_states=torch.randn(n_groups * G, H, generator=gen))


def _selector(**options):
    return CareSelector(4, 8, 0, prompt_dim=8, mid_dim=8, resp_dim=8, resp_out=8, **options)


def test_selector_warmup_then_gate_and_online_training():
    sel = _selector(warmup_steps=1, buffer_batch=4)
    queried, weights, m = sel.choose(**_groups(0), budget=0.34, step=0)
    assert len(queried) == 3 and m["labels_gated"] == 0 and m["probe_gate_open"] == 0.0
    assert all(weights[g] == (1.0 if g in queried else 0.0) for g in weights)  # warm-up: no soft
    assert m["probe_buffer"] == 3 and "probe_vote_loss" in m and "probe_gap_loss" in m
    before = {k: v.clone() for k, v in sel.vote.state_dict().items()}
    queried, weights, m = sel.choose(**_groups(1), budget=0.34, step=1)
    assert m["labels_gated"] == 2 and m["probe_buffer"] == 6  # ceil(6 * 0.25) trusted votes
    assert not all(torch.equal(before[k], v) for k, v in sel.vote.state_dict().items())
    unqueried = [g for g in weights if g not in queried]
    assert all(0.0 <= weights[g] <= 1.0 for g in unqueried)


def test_choice_over_ranks_is_the_one_process_choice():
    """Two ranks' groups (ids from 0 on each) scored together give, per rank, the one-process
    choice and weights on all rows."""
    from pivotal.labeling import ActiveLabels
    rows = _groups(4)
    half = len(rows["answers"]) // 2

    def labels():
        return ActiveLabels("care", 0.5, None, ["last_number"], "auto",
                            {"warmup_steps": 0, "prompt_dim": 8, "mid_dim": 8, "resp_dim": 8,
                             "resp_out": 8}, group_size=4, max_len=8, seed=0)

    def part(lo, hi, shift):
        extra = (rows["lengths"][lo:hi], rows["correct"][lo:hi], rows["prompt_states"][lo:hi],
                 rows["response_states"][lo:hi])
        return (None, None, rows["answers"][lo:hi], rows["group_ids"][lo:hi] - shift, extra)

    one = labels()._choose([part(0, 2 * half, 0)], 0, step=1)
    two = [labels()._choose([part(0, half, 0), part(half, 2 * half, 3)], r, step=1) for r in (0, 1)]
    assert two[0][0] | {g + 3 for g in two[1][0]} == one[0]
    assert {**two[0][1], **{g + 3: w for g, w in two[1][1].items()}} == one[1]
    assert two[0][2] == two[1][2] == one[2]


def test_selector_state_round_trip_is_weights_only(tmp_path):
    from pivotal.safe_load import load_state_file
    sel = _selector(warmup_steps=0)
    for step in range(3):
        sel.choose(**_groups(step), budget=0.5, step=step)
    torch.save({"label_selector": sel.state_dict()}, tmp_path / "state.pt")
    again = _selector(warmup_steps=0)
    again.load_state_dict(load_state_file(tmp_path / "state.pt")["label_selector"])
    a = sel.choose(**_groups(9), budget=0.5, step=3)
    b = again.choose(**_groups(9), budget=0.5, step=3)
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]  # same choice, weights, replay, losses


def test_options_are_checked():
    with pytest.raises(ConfigError, match="prob_gat"):
        load_config(None, ["reward.labels=care", "reward.label_options={prob_gat: 0.2}"])
    with pytest.raises(ConfigError, match="prob_gate must be in"):
        load_config(None, ["reward.labels=care", "reward.label_options={prob_gate: 2}"])
    with pytest.raises(ConfigError, match="takes no options"):
        load_config(None, ["reward.labels=agreement", "reward.label_options={prob_gate: 0.2}"])
    with pytest.raises(ConfigError, match="reward.unlabeled_weight=soft"):
        load_config(None, ["reward.labels=agreement", "reward.unlabeled_weight=soft"])
    load_config(None, ["reward.labels=care", "reward.unlabeled_weight=zero"])


def test_care_in_the_trainer_resumes_with_its_probe(tmp_path):
    """A tiny run with CARE: the queried groups train, the rest get the released soft weight; a
    run stopped after 2 steps and resumed logs what the uninterrupted run logs, probe included."""
    from pivotal.trainer import Trainer
    extra = {"reward.labels": "care", "reward.label_budget": 0.5, "rollout.prompts_per_step": 4,
             "reward.components": "[{name: task}]", "train.save_every": 1,
             "reward.label_options": "{warmup_steps: 1, prompt_dim: 8, mid_dim: 8, resp_dim: 8, "
                                     "resp_out: 8}"}
    whole = Trainer(tiny_config(tmp_path / "whole", **extra), progress=False)
    batch, m = whole.rollout()  # step 0, in the warm-up: only the 2 queried groups train
    weight = batch.extras["advantage_weight"]
    assert m["labels_queried"] == 2 and (weight == 1).sum() == 2 * 4 and (weight == 0).sum() == 2 * 4
    whole = Trainer(tiny_config(tmp_path / "whole", **extra), progress=False)
    whole.train()
    part = tmp_path / "part"
    Trainer(tiny_config(part, **{**extra, "train.steps": 2}), progress=False).train()
    resumed = Trainer(tiny_config(part, **extra), progress=False)
    resumed.train(resume=True)
    from pivotal.metrics import read_metrics
    from test_trainer import _deterministic
    a = _deterministic(read_metrics(tmp_path / "whole" / "metrics.jsonl"))
    b = _deterministic(read_metrics(part / "metrics.jsonl"))
    assert len(a) == 4 and a == b
    assert all("probe_vote_loss" in r for r in read_metrics(part / "metrics.jsonl"))
    probe_a = whole.active_labels.stateful.state_dict()
    probe_b = resumed.active_labels.stateful.state_dict()
    for key in ("vote", "gap"):
        for k, v in probe_a[key].items():
            assert torch.equal(probe_b[key][k], v), (key, k)
    assert torch.equal(probe_a["buffer"]["prompt"], probe_b["buffer"]["prompt"])
