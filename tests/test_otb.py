"""The optimal token baseline (pivotal.algos.otb) against hand-computed values, its energy against
autograd, the stats pass against the log-prob pass, and a training run on the tiny model."""

import math

import pytest
import torch

from pivotal.algos import ADVANTAGES, advantage_inputs
from pivotal.algos.otb import otb_advantage, realised_energy
from pivotal.config import ConfigError, load_config


def _by_hand(scores, groups, logp, ssp, mask, w=None, eps=1e-8):
    """The formula of the module docstring, written with Python loops."""
    B, T = len(scores), len(mask[0])
    W = [[0.0] * T for _ in range(B)]
    for i in range(B):
        acc = 0.0
        for t in range(T):
            if mask[i][t]:
                acc += 1 - 2 * math.exp(logp[i][t]) + ssp[i][t]
                W[i][t] = acc * (w[i][t] ** 2 if w else 1.0)
    out = [[0.0] * T for _ in range(B)]
    for i in range(B):
        for t in range(T):
            if not mask[i][t]:
                continue
            mates = [k for k in range(B) if groups[k] == groups[i] and mask[k][t]]
            num = sum(scores[k] * W[k][t] for k in mates)
            den = sum(W[k][t] for k in mates)
            out[i][t] = scores[i] - num / (den + eps)
    return out


# sum pi^2 >= pi(y)^2 at every position, as for a real distribution
LOGP = [[-0.1, -1.2, -0.7], [-2.0, -0.3, -0.05], [-0.5, -0.5, -0.5], [-1.0, -0.2, -3.0]]
SSP = [[0.85, 0.3, 0.45], [0.2, 0.6, 0.92], [0.4, 0.4, 0.4], [0.35, 0.7, 0.1]]
MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]


def test_otb_matches_the_formula_by_hand():
    scores, groups = [1.0, 0.0, 0.0, 1.0], [0, 0, 1, 1]
    got = otb_advantage(torch.tensor(scores), torch.tensor(groups), torch.tensor(MASK),
                        logprobs=torch.tensor(LOGP), sum_sq_probs=torch.tensor(SSP))
    torch.testing.assert_close(got, torch.tensor(_by_hand(scores, groups, LOGP, SSP, MASK)),
                               rtol=1e-5, atol=1e-6)
    assert got[1, 2] == 0 and got[2, 1:].abs().sum() == 0  # padding stays 0
    # past the shorter response only the longer one is valid: its baseline is its own return
    assert abs(float(got[0, 2])) < 1e-6 and abs(float(got[3, 1])) < 1e-6


def test_otb_with_importance_weights_rescales_the_energy():
    scores, groups = [1.0, 0.0, 0.5, 1.0], [0, 0, 0, 0]
    w = [[1.0, 0.5, 2.0], [1.5, 1.0, 1.0], [0.8, 1.0, 1.0], [1.0, 1.0, 0.3]]
    got = otb_advantage(torch.tensor(scores), torch.tensor(groups), torch.tensor(MASK),
                        logprobs=torch.tensor(LOGP), sum_sq_probs=torch.tensor(SSP),
                        is_weights=torch.tensor(w))
    torch.testing.assert_close(got, torch.tensor(_by_hand(scores, groups, LOGP, SSP, MASK, w)),
                               rtol=1e-5, atol=1e-6)


def test_agreeing_groups_and_empty_responses_give_zero():
    mask = torch.tensor(MASK)
    agree = otb_advantage(torch.ones(4), torch.tensor([0, 0, 1, 1]), mask,
                          logprobs=torch.tensor(LOGP), sum_sq_probs=torch.tensor(SSP))
    assert agree.abs().max() < 1e-6
    empty = otb_advantage(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.zeros(2, 3),
                          logprobs=torch.zeros(2, 3), sum_sq_probs=torch.zeros(2, 3))
    assert torch.equal(empty, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps must be > 0"):
        otb_advantage(torch.ones(2), torch.zeros(2), torch.ones(2, 1), logprobs=torch.zeros(2, 1),
                      sum_sq_probs=torch.zeros(2, 1), eps=0.0)


def test_the_energy_is_the_squared_logit_gradient_norm():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 5))
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    grads = torch.stack([torch.autograd.grad(logp[i, t], logits, retain_graph=True)[0][i, t]
                         for i in range(3) for t in range(5)]).view(3, 5, 11)
    norms = (grads ** 2).sum(-1)
    z = logits.detach()
    ssp = torch.exp(torch.logsumexp(2 * z, -1) - 2 * torch.logsumexp(z, -1))
    torch.testing.assert_close(ssp, torch.softmax(z, -1).pow(2).sum(-1))
    energy = realised_energy(logp.detach(), ssp, torch.ones(3, 5))
    torch.testing.assert_close(energy, norms.cumsum(1), rtol=1e-5, atol=1e-6)


def test_otb_declares_its_inputs():
    assert advantage_inputs(ADVANTAGES.get("otb"), {}) == {"policy_stats", "rollout_is_weights"}
    assert advantage_inputs(ADVANTAGES.get("grpo"), {}) == frozenset()
    with pytest.raises(ConfigError, match="algo.advantage_options: otb: eps must be > 0"):
        load_config(None, ["algo.advantage=otb", "algo.advantage_options={eps: 0}"])


def test_stats_pass_gives_the_logprob_pass_and_the_squared_probabilities(tiny):
    from pivotal.logprobs import policy_logprobs, policy_token_stats, response_logits
    from pivotal.rollout import SamplingParams, TransformersEngine

    model, tokenizer = tiny
    batch, _ = TransformersEngine(model, tokenizer).generate(["2+3=", "Say hi"], 2,
                                                             SamplingParams(6, 1.0), seed=1)
    with torch.no_grad():
        logp, ssp = policy_token_stats(model, batch, temperature=0.7)
        expected_logp = policy_logprobs(model, batch, 0.7)[0]
        probs = torch.softmax(response_logits(model, batch, 0.7).float(), -1)
    assert torch.equal(logp, expected_logp)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(ssp[mask], probs.pow(2).sum(-1)[mask], rtol=1e-5, atol=1e-7)
    assert (ssp[~mask] == 0).all()


def test_otb_trains_on_the_tiny_model(tmp_path):
    from pivotal.trainer import Trainer

    cfg = load_config(None, [
        "model.name=tiny-random", f"train.output_dir={tmp_path}", "train.steps=2",
        "train.eval_before_after=false", "train.tensorboard=false", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.lr=1e-3",
        "reward.components=[{name: 'rewards_for_tests:ascii_fraction'}]",
        "algo.advantage=otb", "algo.old_logprobs=recompute",
        "algo.rollout_correction={level: token, mode: truncate, high: 2.0}"])
    trainer = Trainer(cfg, progress=False)
    summary = trainer.train()
    assert summary["steps"] == 2
    batch = trainer.last_batch
    mask = batch.response_mask.bool()
    assert torch.isfinite(batch.advantages).all() and (batch.advantages[~mask] == 0).all()
    long_rows = mask.sum(1) > 1  # a token-level baseline: advantages vary along a response
    assert any(batch.advantages[i][mask[i]].unique().numel() > 1 for i in long_rows.nonzero()[:, 0])
