"""The one objective and the fixes that came with it: micro-batch invariance of every credit method
and auxiliary loss, the entropy's float32 accuracy, GSPO's bound for negative advantages, the KL
reward penalty after a recompute, and a trainer that names no method."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from pivotal.algos import LOSSES, ObjectiveConfig, Totals, policy_objective
from pivotal.algos.correction import RolloutCorrection
from pivotal.logprobs import logprobs_and_entropy
from pivotal.trainer import Trainer
from pivotal.update import PolicyUpdate
from test_trainer import tiny_config

D = torch.float64


# ---------------------------------------------------------------------------- the formula
def test_objective_matches_the_formula_term_by_term():
    """L = agg_m'( w_rc * w_tok * l(A * c) + beta * KL - alpha * H ), built by hand."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=D)
    old = -torch.rand(B, T, generator=g, dtype=D) * mask
    lp = (old + 0.1 * torch.randn(B, T, generator=g, dtype=D)) * mask
    lp.requires_grad_()
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=D)[:, None] * mask
    credit = 1 + torch.rand(B, T, generator=g, dtype=D)
    w_tok = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=D)
    sampler = old - 0.3 * torch.rand(B, T, generator=g, dtype=D) * mask
    ref = old - 0.2 * mask
    entropy = torch.rand(B, T, generator=g, dtype=D) * mask
    cfg = ObjectiveConfig(loss="ppo_clip", aggregation="token-mean", kl_estimator="k1",
                          kl_coef=0.1, entropy_coef=0.01,
                          correction=RolloutCorrection(mode="truncate", high=1.2))
    totals = Totals(tokens=7.0, seqs=3, max_len=4)
    loss, metrics = policy_objective(cfg, totals, logprobs=lp, old_logprobs=old, advantages=adv,
                                     response_mask=mask, credit=credit, token_weights=w_tok,
                                     sampler_logprobs=sampler, ref_logprobs=ref, entropy=entropy)
    policy = LOSSES.get("ppo_clip")(lp, old, adv * credit, mask).per_token_loss
    tis = torch.exp((old - sampler).clamp(max=torch.log(torch.tensor(1.2, dtype=D))))
    per_token = policy * w_tok * tis + 0.1 * (lp - ref) * mask - 0.01 * entropy * mask
    m_prime = mask * (w_tok != 0)
    torch.testing.assert_close(loss, (per_token * m_prime).sum() / 7.0)
    kl_mean = float(((lp.detach() - ref) * mask).sum() / mask.sum())
    assert metrics["kl_ref"] == pytest.approx(kl_mean)
    assert metrics["rc_token_frac"] > 0 and metrics["credit_mean"] > 1


# ---------------------------------------------------------------------------- micro-batch invariance
def _prepared(tmp_path, **extra):
    cfg = tiny_config(tmp_path, **{"optim.mini_batches": 2, "optim.micro_batch_size": 16,
                                   "optim.max_grad_norm": 0, **extra})
    trainer = Trainer(cfg, progress=False)
    batch, _ = trainer.rollout()
    trainer.prepare(batch)
    return trainer, batch


def _updated_weights(trainer, batch, micro_batch_size: int) -> dict[str, torch.Tensor]:
    """The parameters after the step's SGD updates (lr 1: the change is minus the gradient)."""
    cfg = copy.deepcopy(trainer.cfg)
    cfg.optim.micro_batch_size = micro_batch_size
    model = copy.deepcopy(trainer.model)
    auxiliary = [copy.deepcopy(a) for a in trainer.auxiliary]
    params = list(model.parameters()) + [p for a in auxiliary for p in a.parameters()]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    metrics = PolicyUpdate(cfg, model, optimizer, scheduler, auxiliary)(copy.deepcopy(batch), 0)
    weights = {f"policy.{k}": v for k, v in model.state_dict().items()}
    for i, aux in enumerate(auxiliary):
        weights.update({f"aux{i}.{k}": v for k, v in aux.state_dict().items()})
    return weights, metrics


@pytest.mark.parametrize("extra", [
    {"algo.credit": "identity", "algo.aggregation": "seq-mean-token-mean"},
    {"algo.credit": "fipo", "algo.loss_options": "{dual_clip: 10.0}"},
    {"algo.credit": "dlogp", "algo.aggregation": "seq-mean-token-sum-norm"},
    {"algo.credit": "dlogp", "algo.credit_options": "{method: ppl-norm, c: 0.5}"},
    {"algo.credit": "owpo", "algo.kl_beta": 0.05},
    {"algo.credit": "divergence", "algo.credit_options": "{normaliser: mean}"},
    {"algo.credit": "divergence", "algo.credit_options": "{normaliser: max, kind: kl_base_policy}"},
    {"algo.mtp_heads": 2},
], ids=["identity", "fipo", "dlogp", "dlogp-ppl-norm", "owpo", "divergence-mean", "divergence-max", "occ"])
def test_update_does_not_depend_on_the_micro_batch_size(tmp_path, extra):
    trainer, batch = _prepared(tmp_path, **extra)
    whole, m_whole = _updated_weights(trainer, batch, 16)
    rows, m_rows = _updated_weights(trainer, batch, 1)
    moved = False
    for key, value in whole.items():
        torch.testing.assert_close(rows[key], value, rtol=1e-5, atol=1e-6, msg=key)
        moved |= not torch.equal(value, dict(trainer.model.state_dict()).get(key[7:], value))
    assert moved
    assert m_rows["grad_norm"] == pytest.approx(m_whole["grad_norm"], rel=1e-4)
    if "algo.mtp_heads" in extra:  # the second mini-batch has moved the coefficients
        assert m_whole["occ_coef_1"] != 0
        # the weights' tolerance (atol 1e-6): the coefficient is small (~5e-3 on some batches)
        assert m_rows["occ_coef_1"] == pytest.approx(m_whole["occ_coef_1"], rel=1e-4, abs=1e-6)


def test_dropped_rows_leave_the_loss_and_its_denominator(tmp_path):
    """A credit's `drops_rows` rule (FIPO's multi-dual-clip drop) removes whole responses from the
    loss and the token-mean denominator: the update equals the update of the batch without them."""
    trainer, batch = _prepared(tmp_path, **{"optim.mini_batches": 1, "algo.credit": "fipo"})
    first = batch.group_ids[0]

    def rule(micro, logprobs, **_):  # stands in for FIPO's ratio test, which needs a moved policy
        assert logprobs.shape == micro.response_mask.shape
        return micro.group_ids == first

    rule.on_policy_drops_none = False

    def update(b, drop_rule):
        cfg = copy.deepcopy(trainer.cfg)
        model = copy.deepcopy(trainer.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        step = PolicyUpdate(cfg, model, optimizer, scheduler, [])
        step.credit_drops = drop_rule
        return model.state_dict(), step(copy.deepcopy(b), 0)

    dropped, m_dropped = update(batch, rule)
    without, m_without = update(batch.select((batch.group_ids != first).nonzero().squeeze(-1)), None)
    for key, value in without.items():
        torch.testing.assert_close(dropped[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert m_dropped["grad_norm"] == pytest.approx(m_without["grad_norm"], rel=1e-5)
    n_first = int((batch.group_ids == first).sum())
    assert m_dropped["dropped_rows_frac"] == pytest.approx(n_first / batch.size)


def test_fipo_drops_rows_whose_ratios_pass_the_dual_clip(tmp_path):
    """The real rule: rows with A < 0 whose old log-probs sit 5 nats below the policy's have every
    ratio at e^5 > c = 10; FIPO drops them on the off-policy mini-batch (the first mini-batch takes
    pi_old from its own forward, where every ratio is 1)."""
    trainer, batch = _prepared(tmp_path, **{"algo.credit": "fipo",
                                            "algo.loss_options": "{dual_clip: 10.0}"})
    mask = batch.response_mask.bool()
    candidates = (batch.advantages[:, 0] < 0) & (mask.sum(1) > 1)
    batch.old_logprobs = torch.where(candidates[:, None] & mask, batch.old_logprobs - 5.0,
                                     batch.old_logprobs)
    _, metrics = _updated_weights(trainer, batch, 16)
    assert 0 < metrics["dropped_rows_frac"] <= float(candidates.float().mean())


def test_fused_adamw_steps_like_the_per_parameter_loop(tmp_path):
    """optim.fused_adamw: the same training step's weights as the per-parameter loop, to float32
    rounding (and the fused kernel is really the one in use)."""
    results = []
    for fused in (True, False):
        trainer = Trainer(tiny_config(tmp_path / str(fused), **{"optim.fused_adamw": fused}),
                          progress=False)
        assert trainer.optimizer.defaults["fused"] is (True if fused else None)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()
        results.append(trainer.model.state_dict())
    moved = False
    for key, value in results[1].items():
        torch.testing.assert_close(results[0][key], value, rtol=1e-5, atol=1e-7, msg=key)
        moved |= not torch.equal(value, before[key])
    assert moved


# ---------------------------------------------------------------------------- entropy accuracy
@pytest.mark.parametrize("offset, temperature", [(0.0, 1.0), (100.0, 1.0), (100.0, 0.3), (-50.0, 0.5)])
def test_entropy_is_float64_accurate_in_float32(offset, temperature):
    g = torch.Generator().manual_seed(1)
    logits = ((torch.randn(64, 49152, generator=g, dtype=D) * 3 + offset) / temperature).float()
    exact = logits.double()  # the float32 logits themselves, in float64: only the computation errs
    reference = -(torch.softmax(exact, -1) * torch.log_softmax(exact, -1)).sum(-1)
    tokens = torch.randint(0, 49152, (64,), generator=g)
    logp, entropy = logprobs_and_entropy(logits, tokens)
    assert (entropy.double() - reference).abs().max() <= 1e-5
    torch.testing.assert_close(logp.double(), torch.log_softmax(exact, -1).gather(
        -1, tokens[:, None]).squeeze(-1), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- GSPO's bound
def test_gspo_negative_advantage_is_bounded_by_the_dual_clip():
    """A < 0 and a sequence ratio far above 1 + eps: the loss is -A*c with no gradient; below c
    it is the unclipped -A*s with its gradient, as before."""
    mask = torch.ones(2, 3, dtype=D)
    old = torch.zeros(2, 3, dtype=D)
    adv = torch.full((2, 3), -1.0, dtype=D)
    lp = torch.tensor([[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]], dtype=D, requires_grad=True)  # s = e^2, e^0.5
    out = LOSSES.get("gspo")(lp, old, adv, mask, dual_clip=3.0)
    out.per_token_loss.sum().backward()
    torch.testing.assert_close(out.per_token_loss[0], torch.full((3,), 3.0, dtype=D))  # -A*c
    assert torch.all(lp.grad[0] == 0)
    s = torch.exp(torch.tensor(0.5, dtype=D))
    torch.testing.assert_close(out.per_token_loss[1], torch.full((3,), float(s), dtype=D))
    torch.testing.assert_close(lp.grad[1], torch.full((3,), float(s), dtype=D))
    assert float(out.metrics["dual_clip_frac"]) == pytest.approx(0.5)
    unbounded = LOSSES.get("gspo")(lp.detach(), old, adv, mask, dual_clip=None).per_token_loss
    assert unbounded[0, 0] == pytest.approx(float(torch.exp(torch.tensor(2.0))))
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        LOSSES.get("gspo")(lp.detach(), old, adv, mask, dual_clip=1.0)


# ---------------------------------------------------------------------------- KL in the reward
def test_kl_reward_penalty_uses_the_recomputed_old_logprobs(tmp_path):
    """With algo.old_logprobs=recompute the penalty reads the trainer's pi_old, not the sampler's
    (here offset by -0.5 per token so the two are far apart)."""
    cfg = tiny_config(tmp_path, **{"algo.kl_beta": 0.1, "algo.kl_in_reward": True,
                                   "algo.old_logprobs": "recompute"})
    trainer = Trainer(cfg, progress=False)
    generate = trainer.engine.generate

    def skewed(*args, **kwargs):
        batch, texts = generate(*args, **kwargs)
        batch.old_logprobs = batch.old_logprobs - 0.5 * batch.response_mask
        return batch, texts

    trainer.engine.generate = skewed
    batch, _ = trainer.rollout()
    raw = batch.rewards.clone()
    trainer.prepare(batch)
    recomputed = (batch.old_logprobs - batch.ref_logprobs) * batch.response_mask
    torch.testing.assert_close(batch.rewards, raw - 0.1 * recomputed.sum(1), rtol=0, atol=1e-5)
    sampler = (batch.sampler_logprobs - batch.ref_logprobs) * batch.response_mask
    assert (batch.rewards - (raw - 0.1 * sampler.sum(1))).abs().max() > 0.1  # the old behaviour


# ---------------------------------------------------------------------------- no method names
# Registry names that are also ordinary words or batch fields may appear as identifiers
# (self.task, format_step, batch.divergence); quoted, they may not.
COMMON_WORDS = {"task", "format", "identity", "math", "none", "all", "divergence"}


def _registered_names() -> set[str]:
    from pivotal.algos import ADVANTAGES, AGGREGATIONS, CREDITS, KL_ESTIMATORS
    from pivotal.algos.labels import LABEL_SELECTORS
    from pivotal.auxiliary import AUXILIARY_LOSSES
    from pivotal.rewards import REWARDS
    names = set()
    for registry in (ADVANTAGES, AGGREGATIONS, CREDITS, KL_ESTIMATORS, LOSSES, LABEL_SELECTORS,
                     AUXILIARY_LOSSES, REWARDS):
        names.update(registry.names())
    return names | {"task"}


@pytest.mark.parametrize("module", ["trainer.py", "update.py"])
def test_the_training_loop_names_no_method(module):
    source = (Path(__file__).resolve().parents[1] / "src" / "pivotal" / module).read_text()
    names = _registered_names()
    assert {"fipo", "cag_oracle", "occ", "math_strict", "grpo"} <= names  # the grep has teeth
    found = set()
    for name in names:
        if re.search(rf"""["']{re.escape(name)}["']""", source):
            found.add(name)
        elif name not in COMMON_WORDS and re.search(rf"\b{re.escape(name)}\b", source):
            found.add(name)
    assert not found, f"{module} names method(s) {sorted(found)}"
