"""OCC and the MTP heads: the coefficient against hand-computed values, the heads' log-probs against
the main head, and the trainer with heads attached (tiny model; the real model in test_real_model)."""

import pytest
import torch

from pivotal.auxiliary.occ import MTPHeads, mtp_logprobs, occ_coefficients
from pivotal.config import ConfigError, load_config
from pivotal.logprobs import response_hidden_states
from pivotal.metrics import read_metrics
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.trainer import Trainer
from test_trainer import _deterministic, tiny_config

D = torch.float64


def test_occ_coefficient_by_hand():
    # one response of 3 tokens; olp = -1 everywhere
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=D)
    lp = torch.tensor([[-0.9, -1.2, -1.0]], dtype=D)  # lp - olp = 0.1, -0.2, 0.0
    heads = torch.tensor([[[0.0, -0.5, -1.5]],  # head 1 scores t = 1, 2: gaps 0.5, -0.5
                          [[0.0, 0.0, -3.0]]], dtype=D)  # head 2 scores t = 2: gap -2
    mask = torch.tensor([[[0, 1, 1]], [[0, 0, 1]]], dtype=torch.bool)
    c = occ_coefficients(heads, lp, old, mask, scale=0.1)
    # head 1: mean(0.5 * -0.2 / 0.25, -0.5 * 0 / 0.25) = mean(-0.4, 0) = -0.2; times s/K = 0.05
    # head 2: -2 * 0 / 4 = 0
    expected = torch.tensor([0.05 * -0.2, 0.0], dtype=D)
    torch.testing.assert_close(c, expected, rtol=0, atol=1e-9)


def test_occ_coefficient_is_zero_on_policy_and_for_a_head_with_no_tokens():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(2, 5, generator=g, dtype=D)
    heads = -torch.rand(3, 2, 5, generator=g, dtype=D)
    mask = torch.ones(3, 2, 5, dtype=torch.bool)
    mask[2] = False
    assert occ_coefficients(heads, old.clone(), old, mask).abs().max() == 0  # lp == olp
    lp = old + 0.1
    c = occ_coefficients(heads, lp, old, mask)
    assert c[2] == 0 and c[0] != 0


def test_occ_coefficient_carries_no_gradient():
    old = torch.zeros(1, 3, dtype=D)
    lp = torch.full((1, 3), 0.2, dtype=D, requires_grad=True)
    heads = torch.full((1, 1, 3), 0.4, dtype=D, requires_grad=True)
    c = occ_coefficients(heads, lp, old, torch.ones(1, 1, 3, dtype=torch.bool))
    assert not c.requires_grad
    torch.testing.assert_close(c, torch.tensor([0.1 * 0.5], dtype=D))  # 0.4 * 0.2 / 0.16 = 0.5


def test_fresh_heads_give_the_main_heads_distribution_shifted(tiny):
    """A zero-initialised head k scores token t with the main head's distribution at t - k."""
    model, tokenizer = tiny
    prompts = ["1 + 2 =", "Say something long:"]
    batch, _ = TransformersEngine(model, tokenizer).generate(
        prompts, 3, SamplingParams(max_new_tokens=6, temperature=1.0), seed=0)
    batch.response_mask[0, 3:] = 0  # one short row: heads must skip its padding
    heads = MTPHeads(model.config.hidden_size, 2)
    with torch.no_grad():
        states = response_hidden_states(model, batch, share_prompt=False)
        main = torch.log_softmax(model.get_output_embeddings()(states).float(), dim=-1)  # (B, T, V)
        head_lp, head_mask = mtp_logprobs(heads, model.get_output_embeddings(), states,
                                          batch.response_ids, batch.response_mask)
    T = batch.response_ids.shape[1]
    for k in (1, 2):
        expected = main[:, : T - k].gather(-1, batch.response_ids[:, k:, None]).squeeze(-1)
        m = head_mask[k - 1, :, k:]
        assert m.any() and not head_mask[k - 1, :, :k].any()
        torch.testing.assert_close(head_lp[k - 1, :, k:][m], expected[m], rtol=1e-5, atol=1e-5)
        assert (head_lp[k - 1][~head_mask[k - 1]] == 0).all()


def test_trainer_trains_the_heads_and_resumes_them(tmp_path):
    extra = {"algo.mtp_heads": 2, "train.save_every": 2}
    full = Trainer(tiny_config(tmp_path / "full", **extra), progress=False)
    (heads,) = full.auxiliary
    assert all(p.abs().sum() == 0 for p in heads.parameters())
    full.train()
    assert any(p.abs().sum() > 0 for p in heads.parameters())  # the heads learned
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert {"occ_coef_1", "occ_coef_2", "mtp_logprob_gap_1"} <= set(rows[0])
    assert any(r["occ_coef_1"] != 0 for r in rows)  # 2 mini-batches: the second one moves c_k

    part = tmp_path / "part"
    Trainer(tiny_config(part, **{**extra, "train.steps": 2}), progress=False).train()
    resumed = Trainer(tiny_config(part, **extra), progress=False)
    resumed.train(resume=True)
    assert _deterministic(read_metrics(part / "metrics.jsonl")) == _deterministic(rows)
    for k, v in heads.state_dict().items():
        torch.testing.assert_close(resumed.auxiliary[0].state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("override, culprit", [
    ("algo.mtp_heads=-1", "algo.mtp_heads"),
    ("algo.mtp_heads=9", "algo.mtp_heads"),
])
def test_mtp_knobs_out_of_range_fail_at_config_time(override, culprit):
    with pytest.raises(ConfigError, match=culprit):
        load_config(None, [override])


def test_occ_scale_must_be_positive_with_heads():
    with pytest.raises(ConfigError, match="algo.occ_scale"):
        load_config(None, ["algo.mtp_heads=1", "algo.occ_scale=0"])


def test_padded_normaliser_is_the_released_unmasked_mean(tmp_path):
    # the released coefficient is a plain .mean() over the (B, T) response tensor padded to the
    # rollout's length: c_padded = c_valid * N_valid / (B * T), here on a real padded tiny batch
    from pivotal.auxiliary.occ import occ_coefficients_from_sums
    from pivotal.logprobs import trim_padding

    trainer = Trainer(tiny_config(tmp_path, **{"algo.mtp_heads": 1}), progress=False)
    (heads,) = trainer.auxiliary
    assert heads.normaliser == "padded" and heads.padded_length == trainer.cfg.rollout.max_new_tokens
    batch, _ = trainer.rollout()
    batch.old_logprobs = batch.old_logprobs - 0.1 * batch.response_mask  # the policy "moved"
    micros = [trim_padding(batch.select(idx)) for idx in torch.arange(batch.size).split(3)]
    padded = heads.minibatch_statistics(trainer.trained, micros, len(micros), on_policy=False)
    heads.normaliser = "valid"
    valid = heads.minibatch_statistics(trainer.trained, micros, len(micros), on_policy=False)
    torch.testing.assert_close(padded["occ_numerator_sum"], valid["occ_numerator_sum"])
    slots = batch.size * trainer.cfg.rollout.max_new_tokens
    assert float(padded["occ_tokens_sum"][0]) == slots
    n_valid = float(valid["occ_tokens_sum"][0])
    assert 0 < n_valid < slots     # the batch is padded, and head 1 skips each first token
    c_padded = occ_coefficients_from_sums(padded["occ_numerator_sum"], padded["occ_tokens_sum"])
    c_valid = occ_coefficients_from_sums(valid["occ_numerator_sum"], valid["occ_tokens_sum"])
    assert c_valid.abs().min() > 0
    torch.testing.assert_close(c_padded, c_valid * n_valid / slots)
    with pytest.raises(ConfigError, match="algo.occ_normaliser"):
        load_config(None, ["algo.mtp_heads=1", "algo.occ_normaliser=masked"])
