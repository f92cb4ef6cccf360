"""PSR / NSR / W-REINFORCE (arXiv 2506.01347) and the rename of the near-boundary clip rescue."""

import pytest
import torch

from pivotal.algos import ADVANTAGES, LOSSES, advantage_inputs
from pivotal.algos.advantages import trained_rows
from pivotal.config import ConfigError, load_config
from pivotal.registry import UnknownNameError

SCORES = torch.tensor([1.0, 0.0, 1.1, 0.2])          # a shaped reward on rows 2 and 3
CORRECT = torch.tensor([True, False, True, False])
GROUPS = torch.tensor([0, 0, 1, 1])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


def _advantage(name, **options):
    return ADVANTAGES.get(name)(SCORES, GROUPS, MASK, correct=CORRECT, **options)


def test_the_three_estimators_by_hand():
    per_row = {
        "psr": [1.0, 0.0, 1.1, 0.0],                  # A = R on correct rows
        "nsr": [0.0, -1.0, 0.0, -0.8],                # A = R - 1 on incorrect rows
        "w_reinforce": [0.1, -1.0, 0.11, -0.8],       # lam R on correct, R - 1 on incorrect
    }
    for name, rows in per_row.items():
        expected = torch.tensor(rows)[:, None] * MASK
        assert torch.allclose(_advantage(name), expected), name
    half = torch.tensor([0.5, -1.0, 0.55, -0.8])[:, None] * MASK
    assert torch.allclose(_advantage("w_reinforce", lam=0.5), half)


def test_psr_and_nsr_train_on_their_half_only():
    fn = {name: ADVANTAGES.get(name) for name in ("psr", "nsr", "w_reinforce")}
    inputs = {"correct": CORRECT}
    assert torch.equal(trained_rows(fn["psr"], inputs, {}), CORRECT)
    assert torch.equal(trained_rows(fn["nsr"], inputs, {}), ~CORRECT)
    assert trained_rows(fn["w_reinforce"], inputs, {"lam": 0.1}) is None   # every row trains
    assert trained_rows(ADVANTAGES.get("grpo"), {}, {}) is None
    for name in fn:
        assert advantage_inputs(fn[name], {}) == {"correct"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="w_reinforce: lam"):
        _advantage("w_reinforce", lam=-1.0)
    with pytest.raises(ValueError, match="'nsr' needs the verifier"):
        ADVANTAGES.get("nsr")(SCORES, GROUPS, MASK)
    with pytest.raises(ConfigError, match="algo.advantage_options: w_reinforce: lam"):
        load_config(None, ["algo.advantage=w_reinforce", "algo.advantage_options={lam: -2}"])


def test_the_old_rescue_names_say_what_they_are_now():
    with pytest.raises(UnknownNameError, match="'ppo_clip_nsr' was renamed 'ppo_clip_rescue'"):
        LOSSES.get("ppo_clip_nsr")
    with pytest.raises(ConfigError, match="'gspo_nsr' was renamed 'gspo_rescue'.*advantage=nsr"):
        load_config(None, ["algo.loss=gspo_nsr"])
    assert "ppo_clip_nsr" not in LOSSES.names()


def _tiny_trainer(tmp_path, advantage, steps=1):
    from pivotal.trainer import Trainer

    cfg = load_config(None, [
        "model.name=tiny-random", f"train.output_dir={tmp_path}", f"train.steps={steps}",
        "train.eval_before_after=false", "train.tensorboard=false", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.lr=1e-3",
        f"algo.advantage={advantage}"])
    return Trainer(cfg, progress=False)


def test_the_step_drops_the_rows_the_estimator_does_not_train_on(tmp_path):
    trainer = _tiny_trainer(tmp_path, "psr")
    batch, _ = trainer.rollout()
    batch.correct = torch.tensor([True, False, False, True, False, False, False, True])
    batch.rewards = batch.correct.float()
    trainer.prepare(batch)
    kept, share = trainer.step_inputs.trained_rows(batch)
    assert share == {"trained_rows_frac": 3 / 8}
    assert kept.size == 3 and kept.correct.all()
    assert torch.equal(kept.advantages, kept.response_mask.to(kept.advantages.dtype))
    assert torch.equal(kept.response_ids, batch.response_ids[[0, 3, 7]])
    again, share = trainer.step_inputs.trained_rows(kept)   # the rule is one batch's, once
    assert again is kept and share == {}


def test_nsr_trains_and_psr_skips_without_a_correct_answer(tmp_path):
    # the tiny random model answers no arithmetic problem: NSR trains on every row at A = -1,
    # PSR has nothing to train on and leaves the weights alone
    nsr = _tiny_trainer(tmp_path / "nsr", "nsr", steps=2)
    summary = nsr.train()
    assert summary["steps"] == 2
    batch = nsr.last_batch
    assert not batch.correct.any() and batch.size == 8
    assert torch.equal(batch.advantages, -batch.response_mask.to(batch.advantages.dtype))

    psr = _tiny_trainer(tmp_path / "psr", "psr")
    before = {k: v.clone() for k, v in psr.model.state_dict().items()}
    metrics = psr.train_step()
    assert metrics["skipped"] == 1 and metrics["trained_rows_frac"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in psr.model.state_dict().items())
