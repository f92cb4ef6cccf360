"""Truncated importance sampling for the sampler/trainer mismatch, and the vLLM engine's config."""

import math

import pytest
import torch

from pivotal.algos.correction import logprob_mismatch, truncated_is_weights
from pivotal.config import ConfigError, load_config


def test_tis_weights_are_the_capped_ratio():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.0, -1.5, -2.0, -3.2]])
    w = truncated_is_weights(old, sampler, cap=2.0)
    expected = [1.0, math.exp(-0.5), 2.0, math.exp(0.2)]  # exp(1.5) = 4.48 is capped at 2
    assert torch.allclose(w, torch.tensor([expected]))
    assert not w.requires_grad


def test_tis_weights_carry_no_gradient_and_reject_a_cap_below_one():
    old = torch.zeros(1, 3, requires_grad=True)
    assert not truncated_is_weights(old, torch.zeros(1, 3), cap=2.0).requires_grad
    with pytest.raises(ValueError, match="at least 1"):
        truncated_is_weights(old, torch.zeros(1, 3), cap=0.5)


def test_mismatch_ignores_padding():
    old = torch.tensor([[-1.0, -2.0, 0.0]])
    sampler = torch.tensor([[-1.1, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    m = logprob_mismatch(old, sampler, mask)
    assert m["sampler_logprob_diff"] == pytest.approx(0.05)
    assert m["sampler_logprob_diff_max"] == pytest.approx(0.1)


def test_tis_cap_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="algo.tis_cap"):
        load_config(None, ["algo.tis_cap=0.5"])


def test_unknown_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="rollout.engine 'sglang'"):
        load_config(None, ["rollout.engine=sglang"])


def test_vllm_engine_without_vllm_says_how_to_install(monkeypatch):
    import pivotal.rollout.vllm_engine as rv
    monkeypatch.setattr(rv, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pivotal\[vllm\]"):
        load_config(None, ["rollout.engine=vllm"])


def test_trainer_logs_the_sampler_gap_on_the_transformers_engine(tmp_path):
    """The transformers engine samples with the trainer's own model: the gap is ~0, TIS weights ~1."""
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer
    cfg = load_config(None, [
        "model.name=tiny-random", f"train.output_dir={tmp_path}", "train.steps=1",
        "train.eval_before_after=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "algo.tis_cap=2", "train.tensorboard=false"])
    Trainer(cfg, progress=False).train()
    row = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert row["sampler_logprob_diff_max"] < 1e-3
    assert row["tis_weight"] == pytest.approx(1.0, abs=1e-3)
    assert row["tis_capped_frac"] == 0.0


def test_auto_engine_resolves_to_what_is_installed(monkeypatch):
    import pivotal.rollout.vllm_engine as rv
    monkeypatch.setattr(rv, "vllm_available", lambda: False)
    assert load_config(None, ["rollout.engine=auto"]).rollout.engine == "transformers"
    monkeypatch.setattr(rv, "vllm_available", lambda: True)
    assert load_config(None, ["rollout.engine=auto"]).rollout.engine == "vllm"
