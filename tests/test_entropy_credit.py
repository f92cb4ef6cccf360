"""The 80/20 high-entropy token mask (arXiv 2506.01939) against hand-worked cases, and in the
trainer."""

from __future__ import annotations

import math

import pytest
import torch

from pivotal.algos.credit import CREDITS, credit_requirements
from pivotal.batch import RolloutBatch
from pivotal.config import ConfigError, load_config


def batch_of(mask):
    mask = torch.tensor(mask, dtype=torch.float32)
    B, T = mask.shape
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long), prompt_mask=torch.ones(B, 1, dtype=torch.long),
        response_ids=torch.zeros(B, T, dtype=torch.long), response_mask=mask,
        old_logprobs=torch.zeros(B, T), group_ids=torch.zeros(B, dtype=torch.long),
        truncated=torch.zeros(B, dtype=torch.bool))


credit = CREDITS.get("high_entropy")


def test_requires_the_entropy():
    assert credit_requirements(credit, {"rho": 0.2}) == frozenset({"entropy"})


def test_top_fifth_of_the_valid_tokens_over_the_whole_micro_batch():
    # 10 valid tokens with entropies 0.1 .. 1.0 spread over two rows; padding holds 9.0 and must
    # neither count in the quantile nor be masked. The 0.8 quantile (linear) of 0.1..1.0 is
    # 0.1 + 0.8 * 9 * 0.1 = 0.82, so 0.9 and 1.0 survive: 2 of 10 = rho.
    mask = [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]]
    entropy = torch.tensor([[0.1, 0.9, 0.3, 0.4, 0.5, 0.6, 9.0], [0.7, 0.8, 0.2, 1.0, 9.0, 9.0, 9.0]])
    out = credit(batch_of(mask), None, rho=0.2, entropy=entropy)
    assert out.tolist() == [[0, 1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1, 1]]


def test_rho_one_keeps_all_ties_are_kept_and_no_gradient():
    mask = [[1, 1, 1, 0]]
    entropy = torch.tensor([[0.3, 0.3, 0.1, 5.0]], requires_grad=True)
    assert credit(batch_of(mask), None, rho=1.0, entropy=entropy).tolist() == [[1, 1, 1, 1]]
    # rho = 0.2 over (0.1, 0.3, 0.3): the 0.8 quantile is 0.3; both tied tokens stay
    out = credit(batch_of(mask), None, rho=0.2, entropy=entropy)
    assert out.tolist() == [[1, 1, 0, 1]] and not out.requires_grad


def test_no_valid_token_is_all_ones_and_bad_options_are_errors():
    assert credit(batch_of([[0, 0]]), None, entropy=torch.zeros(1, 2)).tolist() == [[1, 1]]
    with pytest.raises(ValueError, match="rho"):
        credit(batch_of([[1]]), None, rho=0.0, entropy=torch.zeros(1, 1))
    with pytest.raises(ValueError, match="entropies"):
        credit(batch_of([[1]]), None)
    with pytest.raises(ConfigError, match="algo.credit_options: rho"):
        load_config(None, ["algo.credit=high_entropy", "algo.credit_options.rho=1.5"])
    with pytest.raises(ConfigError, match="no option 'entropy'"):
        load_config(None, ["algo.credit=high_entropy", "algo.credit_options.entropy=1"])


def test_trainer_masks_four_fifths_of_the_tokens(tmp_path):
    """By name in the trainer: the credit metric (the mean multiplier over response tokens) is
    the kept share, about rho, and the run's losses stay finite."""
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer
    cfg = load_config(None, [
        "model.name=tiny-random", f"train.output_dir={tmp_path}", "train.steps=2",
        "train.eval_before_after=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=16", "train.tensorboard=false", "algo.credit=high_entropy",
        "optim.micro_batch_size=8"])
    Trainer(cfg, progress=False).train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert 0.15 <= row["credit_mean"] <= 0.3, row["credit_mean"]
