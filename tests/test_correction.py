"""Rollout correction (TIS, IcePop, sequence masking) for the sampler/trainer mismatch, and the
vLLM engine's config."""

import math

import pytest
import torch

from pivotal.algos.correction import RolloutCorrection, logprob_mismatch, rollout_correction_weights
from pivotal.config import ConfigError, load_config


def _rc(level="token", mode="truncate", low=0.0, high=2.0):
    return RolloutCorrection(level=level, mode=mode, low=low, high=high)


def test_tis_weights_are_the_capped_ratio():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sampler = torch.tensor([[-1.0, -1.5, -2.0, -3.2]])
    w, m = rollout_correction_weights(old, sampler, torch.ones(1, 4), _rc())
    expected = [1.0, math.exp(-0.5), 2.0, math.exp(0.2)]  # exp(1.5) = 4.48 is capped at 2
    assert torch.allclose(w, torch.tensor([expected]))
    assert m["rc_token_frac"] == pytest.approx(0.25) and m["rc_seq_frac"] == 1.0
    assert m["rc_weight"] == pytest.approx(sum(expected) / 4)


def test_correction_weights_carry_no_gradient_and_are_one_on_padding():
    old = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    sampler = torch.tensor([[0.0, -5.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    for mode in ("truncate", "mask"):
        w, _ = rollout_correction_weights(old, sampler, mask, _rc(mode=mode, low=0.5, high=5.0))
        assert not w.requires_grad and w[0, 2] == 1.0


def test_token_mask_is_icepop_and_keeps_the_band_edges():
    """M(k) = k inside [low, high] (edges in), 0 outside; a ratio computed as exactly an edge
    (old - sampler = log edge) stays in."""
    edge_hi, edge_lo = torch.tensor(math.log(5.0)), torch.tensor(math.log(0.5))
    old = torch.stack([edge_hi, edge_lo, torch.tensor(math.log(6.0)), torch.tensor(math.log(0.4)),
                       torch.tensor(0.3)])[None]
    sampler = torch.zeros(1, 5)
    w, m = rollout_correction_weights(old, sampler, torch.ones(1, 5),
                                      _rc(mode="mask", low=0.5, high=5.0))
    assert torch.allclose(w, torch.tensor([[5.0, 0.5, 0.0, 0.0, math.exp(0.3)]]))
    assert m["rc_token_frac"] == pytest.approx(0.4) and m["rc_seq_frac"] == 1.0


def test_sequence_level_uses_the_product_of_the_token_ratios():
    old = torch.tensor([[0.2, 0.3, 0.0], [0.5, 0.6, 0.9]])
    sampler = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])   # row 0's last token is padding
    w, m = rollout_correction_weights(old, sampler, mask, _rc("sequence", "mask", 0.5, 2.0))
    # row 0: rho = e^0.5 = 1.65 is inside; row 1: e^2.0 = 7.4 is outside, every token masked
    assert torch.allclose(w, torch.tensor([[math.exp(0.5)] * 2 + [1.0], [0.0] * 3]))
    assert m["rc_seq_frac"] == 0.5 and m["rc_token_frac"] == pytest.approx(3 / 5)
    w, _ = rollout_correction_weights(old, sampler, mask, _rc("sequence", "truncate", 0.0, 2.0))
    assert torch.allclose(w, torch.tensor([[math.exp(0.5)] * 2 + [1.0], [2.0] * 3]))


def test_all_tokens_masked_zeroes_the_policy_loss_but_not_the_token_count():
    from pivotal.algos.objective import ObjectiveConfig, Totals, policy_objective
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    sampler = lp.detach() - 3.0            # every ratio e^3 = 20 is outside [0.5, 5]
    cfg = ObjectiveConfig(loss="vanilla_pg", correction=_rc(mode="mask", low=0.5, high=5.0))
    loss, metrics = policy_objective(cfg, Totals(tokens=2.0, seqs=1, max_len=2), logprobs=lp,
                                     old_logprobs=lp.detach(), advantages=torch.ones(1, 2),
                                     response_mask=torch.ones(1, 2), sampler_logprobs=sampler)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros(1, 2))
    assert metrics["rc_token_frac"] == 1.0 and metrics["rc_weight"] == 0.0


def test_tis_cap_is_the_token_truncate_shorthand():
    from pivotal.algos.objective import ObjectiveConfig
    cfg = load_config(None, ["algo.tis_cap=3"])
    assert ObjectiveConfig.from_config(cfg).correction == _rc("token", "truncate", 0.0, 3.0)
    cfg = load_config(None, ["algo.rollout_correction.level=sequence",
                             "algo.rollout_correction.mode=mask", "algo.rollout_correction.high=3"])
    assert ObjectiveConfig.from_config(cfg).correction == _rc("sequence", "mask", 0.0, 3.0)


@pytest.mark.parametrize("overrides, match", [
    (["algo.rollout_correction.mode=clip"], "rollout_correction.mode 'clip'"),
    (["algo.rollout_correction.level=step"], "rollout_correction.level 'step'"),
    (["algo.rollout_correction.mode=mask", "algo.rollout_correction.high=0.9"], "low <= 1 <= high"),
    (["algo.rollout_correction.mode=mask", "algo.tis_cap=2"], "keep one"),
    (["algo.rollout_correction.hgih=3"], "Did you mean 'high'"),
])
def test_rollout_correction_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


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
    assert row["rc_weight"] == pytest.approx(1.0, abs=1e-3)
    assert row["rc_token_frac"] == 0.0


def test_auto_engine_resolves_to_what_is_installed(monkeypatch):
    import pivotal.rollout.vllm_engine as rv
    monkeypatch.setattr(rv, "vllm_available", lambda: False)
    assert load_config(None, ["rollout.engine=auto"]).rollout.engine == "transformers"
    monkeypatch.setattr(rv, "vllm_available", lambda: True)
    assert load_config(None, ["rollout.engine=auto"]).rollout.engine == "vllm"
