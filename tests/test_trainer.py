"""The training loop on the tiny random model: metrics, checkpoints, resume, crash safety."""

import json

import pytest
import torch

from pivotal import checkpoint as ckpt
from pivotal.config import ConfigError, load_config
from pivotal.metrics import read_metrics
from pivotal.trainer import Trainer

# Keys that depend only on the seed, not on wall-clock time.
DETERMINISTIC = ("reward", "accuracy", "response_length", "loss", "grad_norm", "entropy",
                 "clip_frac_low", "clip_frac_high", "zero_variance_groups")


def tiny_config(out, **extra):
    overrides = [
        "model.name=tiny-random", f"train.output_dir={out}", "train.steps=4",
        "train.eval_before_after=false", "train.tensorboard=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "optim.lr=1e-3", "optim.micro_batch_size=3", "optim.mini_batches=2",
        "reward.components=[{name: 'rewards_for_tests:ascii_fraction'}]",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "eval.size=4",
        "eval.max_new_tokens=8",
    ]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_changes_weights_and_logs_metrics(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    before = weights(trainer.model)
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward", "accuracy", "response_length", "response_length_max",
                "truncation_rate", "entropy", "clip_frac_low", "clip_frac_high", "grad_norm",
                "zero_variance_groups", "tokens_per_s", "time_generate", "time_score",
                "time_train", "loss"):
        assert key in rows[0], key
    assert all(r["optimizer_steps"] == 2 for r in rows)  # mini_batches=2, one epoch


def test_checkpoint_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM
    trainer = Trainer(tiny_config(tmp_path, **{"train.steps": 2}), progress=False)
    trainer.train()
    path = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert path.name == "step_000002"
    loaded = AutoModelForCausalLM.from_pretrained(path)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, trainer.model.state_dict()[k])


def _deterministic(rows):
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in rows]


def test_resume_matches_uninterrupted_run(tmp_path):
    full = Trainer(tiny_config(tmp_path / "full", **{"train.save_every": 2}), progress=False)
    full.train()

    part = tmp_path / "part"
    Trainer(tiny_config(part, **{"train.save_every": 2, "train.steps": 2}),
            progress=False).train()
    resumed = Trainer(tiny_config(part, **{"train.save_every": 2}), progress=False)
    resumed.train(resume=True)

    a = _deterministic(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _deterministic(read_metrics(part / "metrics.jsonl"))
    assert len(a) == len(b) == 4
    assert a == b
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_kill_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, **{"train.save_every": 2})
    trainer = Trainer(cfg, progress=False)
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # second checkpoint: the model is written, the state is half-written
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise KeyboardInterrupt("killed mid-checkpoint")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root).name == "step_000002"
    assert not (root / "step_000004").exists()
    assert (root / "latest").read_text().strip() == "step_000002"

    resumed = Trainer(cfg, progress=False)
    resumed.train(resume=True)
    assert resumed.step == 4
    assert ckpt.latest_checkpoint(root).name == "step_000004"
    assert not list(root.glob(".tmp-*"))  # the crashed save's leftovers are cleaned
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_summary_reports_before_and_after(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.steps": 1, "train.eval_before_after": True})
    Trainer(cfg, progress=False).train()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for tag in ("before", "after"):
        assert set(summary[tag]) >= {"greedy_strict", "greedy_lenient", "boxed_rate"}
    assert (tmp_path / "eval_before.jsonl").exists()


@pytest.mark.parametrize("extra", [
    {"algo.loss": "gspo", "algo.aggregation": "seq-mean-token-mean"},
    {"algo.advantage": "rloo", "algo.aggregation": "seq-mean-token-sum-norm"},
    {"algo.advantage": "dr_grpo", "algo.kl_beta": 0.1, "algo.kl_estimator": "k3"},
    {"algo.kl_beta": 0.05, "algo.kl_in_reward": True, "algo.entropy_coef": 0.01},
    {"algo.dynamic_sampling": True, "reward.overlong_buffer": 4, "reward.mask_truncated": True},
    {"algo.old_logprobs": "recompute", "optim.epochs_per_rollout": 2},
    {"algo.credit": "fipo", "optim.mini_batches": 2, "algo.loss_options": "{dual_clip: 10.0}"},
    {"algo.credit": "owpo"},  # needs reference log-probs: loaded although kl_beta is 0
    {"algo.credit": "dlogp", "algo.loss": "ppo_clip_rescue"},
    {"algo.credit": "divergence", "algo.credit_options": "{alpha: 0.5, kind: kl_base_policy}",
     "optim.mini_batches": 1, "optim.epochs_per_rollout": 2},
    {"reward.labels": "agreement", "reward.label_budget": 0.5},
])
def test_algorithm_variants_train(tmp_path, extra):
    cfg = tiny_config(tmp_path, **{"train.steps": 2, **extra})
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        if not r.get("skipped"):
            assert torch.isfinite(torch.tensor(r["loss"]))
    if cfg.algo.kl_beta > 0 and not cfg.algo.kl_in_reward:
        assert "kl_ref" in rows[0]
    if cfg.algo.kl_beta == 0 and cfg.algo.credit not in ("owpo", "divergence"):
        assert trainer.ref_model is None  # beta 0: no reference model is loaded at all
    if cfg.algo.credit == "divergence":
        divergence = trainer.last_batch.divergence
        assert divergence.shape == trainer.last_batch.response_mask.shape
        # the rollout (old) policy of step 2 against the frozen base: step 1 moved it
        mask = trainer.last_batch.response_mask
        assert torch.all(divergence[mask == 0] == 0) and divergence[mask == 1].max() > 0
    if cfg.reward.labels != "all":
        assert rows[-1]["labels_queried_total"] == 2  # one of two prompts per step, two steps
    if cfg.algo.credit == "owpo":
        assert trainer.ref_model is not None and "kl_ref" in rows[0]  # logged, not in the loss
    if cfg.algo.credit == "fipo":  # first mini-batch is on-policy (f == 1), the second is not
        assert all(r["credit_mean"] >= 1.0 for r in rows if not r.get("skipped"))


def test_reference_ratchet_copies_in_place_and_survives_resume(tmp_path):
    extra = {"algo.credit": "owpo", "algo.reference_ratchet_every": 1, "train.save_every": 1}
    full = Trainer(tiny_config(tmp_path / "full", **{**extra, "train.steps": 3}), progress=False)
    ref_storage = [p.data_ptr() for p in full.ref_model.parameters()]
    full.train()
    # the reference is the policy after the last step, and no new tensors were allocated for it
    for ref, param in zip(full.ref_model.parameters(), full.model.parameters()):
        assert torch.equal(ref, param)
    assert [p.data_ptr() for p in full.ref_model.parameters()] == ref_storage
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert all(r["reference_ratchet"] == 1 for r in rows)

    part = tmp_path / "part"
    Trainer(tiny_config(part, **{**extra, "train.steps": 2}), progress=False).train()
    resumed = Trainer(tiny_config(part, **{**extra, "train.steps": 3}), progress=False)
    resumed.train(resume=True)
    for k, v in full.ref_model.state_dict().items():
        torch.testing.assert_close(resumed.ref_model.state_dict()[k], v, rtol=0, atol=0)
    assert _deterministic(read_metrics(part / "metrics.jsonl")) == _deterministic(rows)


def test_active_labels_use_truth_only_for_the_chosen_groups(tmp_path):
    from pivotal.tasks import Problem
    problems = [Problem("a", "What is 2 + 3?", "5"), Problem("b", "What is 4 + 4?", "8")]
    texts = ["2 + 3 = 5", "2 + 3 = 5", "2 + 3 = 5", "2 + 3 = 6",    # majority right (5)
             "4 + 4 = 9", "4 + 4 = 9", "4 + 4 = 9", "4 + 4 = 8"]    # majority wrong (9)
    expanded = [p for p in problems for _ in range(4)]

    def run(labels, budget, unlabeled="auto"):
        cfg = tiny_config(tmp_path, **{"reward.labels": labels, "reward.label_budget": budget,
                                       "reward.components": "[{name: task}]",
                                       "reward.unlabeled_weight": unlabeled})
        trainer = Trainer(cfg, progress=False)
        group_ids = torch.tensor([0] * 4 + [1] * 4)
        true = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1])  # against the truth
        rewards, metrics, weights = trainer.active_labels(texts, expanded, true, group_ids)
        return rewards.tolist(), metrics, weights.tolist()

    pseudo, m, w = run("pseudo", 0.2)
    assert pseudo == [1, 1, 1, 0, 1, 1, 1, 0]  # group b trains toward its wrong majority, 9
    assert m["labels_queried"] == 0 and m["pseudo_label_accuracy"] == 0.5
    assert w == [1.0] * 8                      # test-time RL: the pseudo-labels are all there is
    oracle, m, w = run("cag_oracle", 0.5)  # one of two groups: b, where the pseudo-label is wrong
    assert oracle == [1, 1, 1, 0, 0, 0, 0, 1] and m["labels_queried"] == 1
    assert w == [0.0] * 4 + [1.0] * 4          # released: the unqueried group a does not train
    agree, m, w = run("agreement", 0.5)  # both groups agree 3/4: the tie goes to the lower id, a
    assert agree == [1, 1, 1, 0, 1, 1, 1, 0] and m["labels_queried"] == 1
    assert w == [1.0] * 4 + [0.0] * 4
    _, _, w = run("cag_oracle", 0.5, "pseudo")  # the earlier behaviour: pseudo-labels at weight 1
    assert w == [1.0] * 8


def test_unqueried_prompts_get_zero_advantages_in_the_step(tmp_path):
    cfg = tiny_config(tmp_path, **{"reward.labels": "cag_oracle", "reward.label_budget": 0.5,
                                   "reward.components": "[{name: task}]"})
    trainer = Trainer(cfg, progress=False)
    batch, metrics = trainer.rollout()
    weight = batch.extras["advantage_weight"]
    assert sorted(weight.unique().tolist()) == [0.0, 1.0]   # one of the two prompts is queried
    assert metrics["labels_queried"] == int(weight.sum()) // trainer.cfg.rollout.group_size
    trainer.prepare(batch)
    assert (batch.advantages[weight == 0] == 0).all()
    with pytest.raises(ConfigError, match="reward.unlabeled_weight"):
        load_config(None, ["reward.labels=cag_oracle", "reward.unlabeled_weight=soft"])


def test_reference_can_be_another_model_with_the_same_tokenizer(tmp_path):
    """model.reference names a separate model: it is loaded frozen, and differs from the policy."""
    cfg = tiny_config(tmp_path, **{"model.reference": "tiny-random", "algo.kl_beta": 0.1,
                                   "train.seed": 3})
    trainer = Trainer(cfg, progress=False)
    ref_params = list(trainer.ref_model.parameters())
    assert not any(p.requires_grad for p in ref_params)
    # tiny-random loads with seed 0 as the reference, the policy with train.seed = 3
    assert any(not torch.equal(a, b) for a, b in zip(ref_params, trainer.model.parameters()))
    metrics = trainer.train_step()
    assert metrics["kl_ref"] > 0  # two different models: the KL estimate is positive


def test_shift_monitor_logs_sparsity_against_the_initial_policy(tmp_path):
    """The monitor's fractions are those of |old_logprobs - initial log-probs| on its rows."""
    from pivotal.shift_monitor import monitored_rows, shift_metrics
    trainer = Trainer(tiny_config(tmp_path, **{"train.shift_monitor": True,
                                               "train.shift_monitor_rows": 3,
                                               "train.steps": 2}), progress=False)
    first = trainer.train_step()
    # step 1 samples from the initial policy itself: nothing has changed yet
    assert first["shift_mean_abs_dlogp"] < 1e-4 and first["shift_frac_0.1"] == 0.0
    trainer.step += 1
    second = trainer.train_step()
    batch = trainer.last_batch
    rows = monitored_rows(batch.size, 3)
    assert rows.tolist() == [0, 4, 7]  # 8 responses, 3 spread evenly
    sub = batch.select(rows)
    initial = trainer.step_inputs.logprobs(trainer.shift_monitor.initial_model, sub)
    expected = shift_metrics(sub.old_logprobs - initial, sub.response_mask, [0.1, 0.5, 1.0])
    for key, value in expected.items():
        assert second[key] == pytest.approx(value, abs=1e-5), key
    assert second["shift_mean_abs_dlogp"] > 0  # lr 1e-3 on a tiny model moves it
    # the initial model really is the initial policy: frozen, distinct from the trained one
    assert not any(p.requires_grad for p in trainer.shift_monitor.initial_model.parameters())


def test_shift_monitor_reuses_the_initial_reference_for_free(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, **{"train.shift_monitor": True,
                                               "algo.kl_beta": 0.01}), progress=False)
    assert trainer.shift_monitor.initial_model is trainer.ref_model
    m = trainer.train_step()
    assert "shift_frac_0.5" in m
