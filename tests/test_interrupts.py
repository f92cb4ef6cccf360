"""Interrupts and failures never lose work: real signals to a real `pivotal train` subprocess,
refused non-finite steps, and a checkpoint write that fails half-way (tiny model)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pivotal.algos.losses as losses
from pivotal import checkpoint as ckpt
from pivotal.algos import register_loss
from pivotal.config import load_config
from pivotal.errors import CheckpointError, ConfigError, NonFiniteError
from pivotal.metrics import read_metrics
from pivotal.trainer import Trainer
from test_trainer import _deterministic, tiny_config

TESTS = Path(__file__).resolve().parent
OVERRIDES = ["model.name=tiny-random", "train.steps=4", "train.eval_before_after=false",
             "train.tensorboard=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
             "rollout.max_new_tokens=8", "optim.lr=1e-3", "optim.micro_batch_size=3",
             "optim.mini_batches=2", "reward.components=[{name: 'rewards_for_tests:ascii_fraction'}]",
             "task.options={levels: [{ops: ['+'], digits: 1}]}", "eval.size=4",
             "eval.max_new_tokens=8"]


def _run_cli(out: Path, env_extra: dict, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           **env_extra}
    cmd = [sys.executable, "-m", "pivotal", "train", "--quiet", *OVERRIDES,
           f"train.output_dir={out}", "train.plugins=[interrupt_helpers]", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = Trainer(tiny_config(out), progress=False)
    trainer.train()
    return _deterministic(read_metrics(out / "metrics.jsonl")), trainer.model.state_dict()


def _resume_and_compare(out: Path, uninterrupted) -> None:
    rows, weights = uninterrupted
    resumed = Trainer(load_config(out / "config.yaml"), progress=False)
    resumed.train(resume=True)
    assert _deterministic(read_metrics(out / "metrics.jsonl")) == rows
    for k, v in weights.items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("signal_name, where, status", [
    ("SIGTERM", {"PIVOTAL_TEST_SIGNAL_AFTER_STEP": "2"}, 143),   # after an optimizer step
    ("SIGINT", {"PIVOTAL_TEST_SIGNAL_AT_ROLLOUT": "3"}, 130),    # inside step 3's rollout
])
def test_signal_saves_the_last_step_and_resume_matches(tmp_path, uninterrupted, signal_name,
                                                       where, status):
    done = _run_cli(tmp_path, {"PIVOTAL_TEST_SIGNAL": signal_name, **where})
    assert done.returncode == status, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"{signal_name} received" in done.stderr
    assert "stopped after step 2/4" in done.stderr and "--resume" in done.stderr
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_000002"
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    _resume_and_compare(tmp_path, uninterrupted)


def test_second_signal_during_the_save_exits_at_once_and_keeps_the_previous(tmp_path,
                                                                             uninterrupted):
    done = _run_cli(tmp_path, {"PIVOTAL_TEST_SIGNAL_IN_SAVE": "2"}, "train.save_every=1")
    assert done.returncode == 130, done.stderr[-2000:]
    assert "second SIGINT: exiting now, without saving" in done.stderr
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root).name == "step_000001"  # step 2's write never finished
    assert not (root / "step_000002").exists()
    _resume_and_compare(tmp_path, uninterrupted)


# ---------------------------------------------------------------------------- non-finite steps
NAN = {"on": False}


@pytest.fixture
def nan_loss():
    """A test-only loss, ppo_clip times NaN while NAN['on']; registered for one test only."""
    @register_loss("ppo_clip_nan_for_tests")
    def _nan_loss(logprobs, old_logprobs, advantages, response_mask, **options):
        out = losses.ppo_clip_loss(logprobs, old_logprobs, advantages, response_mask, **options)
        if NAN["on"]:
            out.per_token_loss = out.per_token_loss * float("nan")
        return out

    yield "ppo_clip_nan_for_tests"
    losses.LOSSES._table.pop("ppo_clip_nan_for_tests")
    NAN["on"] = False


def test_a_non_finite_loss_is_refused_and_too_many_stop_the_run(tmp_path, nan_loss):
    trainer = Trainer(tiny_config(tmp_path, **{"algo.loss": nan_loss,
                                               "train.max_bad_steps": 2}), progress=False)
    trainer.train_step()
    trainer.step += 1
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in trainer.optimizer.state.values()]
    lr_steps = trainer.scheduler.last_epoch
    NAN["on"] = True
    try:
        m = trainer.train_step()
        assert m["skipped"] == 1 and m["nonfinite"] == "loss" and m["optimizer_steps"] == 0
        for k, v in trainer.model.state_dict().items():  # the weights did not move
            assert torch.equal(v, weights[k]), k
        assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, trainer.optimizer.state.values()))
        assert trainer.scheduler.last_epoch == lr_steps
        trainer.step += 1
        with pytest.raises(NonFiniteError, match="non-finite loss at step 3.*2 consecutive"):
            trainer.train()  # steps 3 and 4 are refused: max_bad_steps=2 stops the run
    finally:
        NAN["on"] = False
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") is None


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to checkpoint step 0"):
        trainer.save_checkpoint()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") is None


# ---------------------------------------------------------------------------- failed saves
def test_a_save_that_fails_half_way_loses_nothing(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, **{"train.save_every": 2})
    trainer = Trainer(cfg, progress=False)
    real_save, calls = torch.save, {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"step_000004.*No space left.*GB free"):
        trainer.train()
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root).name == "step_000002"
    assert not list(root.glob(".tmp-*"))
    resumed = Trainer(cfg, progress=False)
    resumed.train(resume=True)
    assert resumed.step == 4 and ckpt.latest_checkpoint(root).name == "step_000004"


def test_unknown_interrupt_signal_is_a_config_error():
    with pytest.raises(ConfigError, match="train.interrupt_signals: unknown signal 'SIGNOPE'"):
        load_config(None, ["train.interrupt_signals=[SIGNOPE]"])


def test_step_checks_warn_once_per_all_agree_streak_and_count_refusals():
    from pivotal.safety import StepChecks
    said = []
    checks = StepChecks(max_bad_steps=2, warn_zero_variance_steps=3, say=said.append)
    agree = {"zero_variance_groups": 1.0, "entropy": 0.01, "truncation_rate": 0.0, "reward": 0.0,
             "optimizer_steps": 1}
    for step in range(1, 6):
        checks.after_step(step, agree)
    assert len(said) == 1 and "in the last 3 steps" in said[0] and "entropy 0.010" in said[0]
    checks.after_step(6, {"nonfinite": "grad_norm", "optimizer_steps": 0})
    checks.after_step(7, {"optimizer_steps": 1})  # a good step ends the run of refusals
    checks.after_step(8, {"nonfinite": "reward", "optimizer_steps": 0})
    with pytest.raises(NonFiniteError, match="non-finite reward at step 8"):
        checks.after_step(9, {"nonfinite": "loss", "optimizer_steps": 0})


def test_checkpoint_clock_by_steps_and_by_wall_time(monkeypatch):
    import pivotal.safety as safety
    now = {"t": 1000.0}
    monkeypatch.setattr(safety.time, "monotonic", lambda: now["t"])
    clock = safety.CheckpointClock(every_steps=5, every_minutes=10)
    assert not clock.due(1) and clock.due(5)
    now["t"] += 601
    assert clock.due(2)
    clock.saved()
    assert not clock.due(3)
    assert not safety.CheckpointClock(0, 0).due(7)


def test_sigterm_during_eval_keeps_the_rows_already_written(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PIVOTAL_TEST_SIGNAL": "SIGTERM", "PIVOTAL_TEST_SIGNAL_AT_ROLLOUT": "3"}
    cmd = [sys.executable, "-m", "pivotal", "eval", "--model", "tiny-random", "--out", str(tmp_path),
           "train.plugins=[interrupt_helpers]", "eval.size=6", "eval.batch_size=1",
           "eval.max_new_tokens=4", "task.options={levels: [{ops: ['+'], digits: 1}]}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "eval interrupted (SIGTERM) after 2 responses" in done.stderr
    rows = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(rows) == 2  # the two prompts answered before the signal
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert summary["num_problems"] == 2 and summary["interrupted"] == "SIGTERM"


@pytest.mark.slow
def test_real_model_sigterm_saves_and_resumes(tmp_path):
    """The built-in SmolLM2: SIGTERM after step 1 of 2 saves step 1 (with its 1.1 GB optimizer
    state) and exits 143; the resumed run finishes step 2."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PIVOTAL_TEST_SIGNAL": "SIGTERM", "PIVOTAL_TEST_SIGNAL_AFTER_STEP": "1"}
    overrides = [f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
                 "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=16",
                 "task.options={levels: [{ops: ['+'], digits: 1}]}", "train.tensorboard=false"]
    done = subprocess.run([sys.executable, "-m", "pivotal", "train", "--quiet", *overrides,
                           "train.plugins=[interrupt_helpers]"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 143, done.stderr[-2000:]
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_000001"
    cost = re.search(r"checkpoint \S+step_000001: ([\d.]+) GB in ([\d.]+) s", done.stderr)
    assert cost and float(cost.group(1)) > 1.0, done.stderr[-2000:]  # the save's cost is reported
    resumed = Trainer(load_config(tmp_path / "config.yaml"), progress=False)
    resumed.train(resume=True)
    assert resumed.step == 2 and len(read_metrics(tmp_path / "metrics.jsonl")) == 2
