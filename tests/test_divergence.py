"""Per-token distribution divergences (pivotal.divergence) and the "divergence" credit.

Hand values are written out literally with the arithmetic beside them. Model tests use the tiny
random model (2 layers, real SmolLM2 tokenizer).
"""

from __future__ import annotations

import math

import pytest
import torch

import pivotal.algos.token_credit  # noqa: F401  (registers "divergence")
import pivotal.divergence as divergence_module
from pivotal.algos.credit import CREDITS, credit_requirements, merge_statistics
from pivotal.batch import RolloutBatch
from pivotal.divergence import (
    DIVERGENCE_KINDS,
    distribution_divergences,
    mean_over_valid,
    response_divergences,
)
from pivotal.logprobs import policy_logprobs
from pivotal.rollout import SamplingParams, TransformersEngine

LN2 = 0.6931471805599453
PROMPTS = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words in it."]


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"\n{actual}\n!=\n{expected}"


def logits_of(*probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# distribution_divergences: hand values
# ----------------------------------------------------------------------------------------------
# p = [0.5, 0.5], q = [0.9, 0.1], m = (p + q) / 2 = [0.7, 0.3]
#   KL(p||q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)   = 0.5 * -0.5877867 + 0.5 * 1.6094379 = 0.5108256
#   KL(q||p) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5)   = 0.9 * 0.5877867 + 0.1 * -1.6094379 = 0.3680642
#   KL(p||m) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3)   = 0.0871767
#   KL(q||m) = 0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3)   = 0.1163218
#   JS       = 0.5 * 0.0871767 + 0.5 * 0.1163218    = 0.1017492
#   H(p) = ln 2 = 0.6931472;  H(q) = -0.9 ln 0.9 - 0.1 ln 0.1 = 0.0948245 + 0.2302585 = 0.3250830
def test_hand_values():
    out = distribution_divergences(logits_of([0.5, 0.5]), logits_of([0.9, 0.1]))
    assert set(out) == {"js", "kl_policy_base", "kl_base_policy", "entropy_policy", "entropy_base"}
    assert all(v.dtype == torch.float32 and v.shape == (1,) for v in out.values())
    close(out["kl_policy_base"], [0.5108256])
    close(out["kl_base_policy"], [0.3680642])
    close(out["js"], [0.1017492])
    close(out["entropy_policy"], [0.6931472])
    close(out["entropy_base"], [0.3250830])


def test_logit_shift_invariance_and_symmetry():
    p = logits_of([0.5, 0.5]) + 3.0      # softmax ignores a constant shift
    q = logits_of([0.9, 0.1]) - 7.0
    a, b = distribution_divergences(p, q), distribution_divergences(q, p)
    close(a["js"], [0.1017492])
    close(a["js"], b["js"])
    close(a["kl_policy_base"], b["kl_base_policy"])
    close(a["entropy_policy"], b["entropy_base"])


def test_identical_distributions_give_zero():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 4
    out = distribution_divergences(logits, logits.clone())
    for k in ("js", "kl_policy_base", "kl_base_policy"):
        close(out[k], torch.zeros(6))
    close(out["entropy_policy"], out["entropy_base"])


def test_disjoint_support_is_finite():
    # p = [1, 0], q = [0, 1] up to exp(-1e4) = 0 in float32. m = [0.5, 0.5]:
    #   KL(p||m) = 1 * ln(1/0.5) = ln 2, likewise KL(q||m): JS = ln 2.
    #   KL(p||q) = 1 * (0 - (-1e4)) + 0 = 1e4 (the 0 * log 0 term counts 0): finite, large.
    p = torch.tensor([[0.0, -1e4]])
    q = torch.tensor([[-1e4, 0.0]])
    out = distribution_divergences(p, q)
    assert all(torch.isfinite(v).all() for v in out.values())
    close(out["js"], [LN2])
    close(out["kl_policy_base"], [1e4], tol=1e-2)
    close(out["kl_base_policy"], [1e4], tol=1e-2)
    close(out["entropy_policy"], [0.0])
    close(out["entropy_base"], [0.0])


def test_exact_zeros_give_infinite_kl_but_no_nan():
    p = torch.tensor([[0.0, float("-inf")]])
    q = torch.tensor([[float("-inf"), 0.0]])
    out = distribution_divergences(p, q)
    assert not any(torch.isnan(v).any() for v in out.values())
    close(out["js"], [LN2])
    assert torch.isinf(out["kl_policy_base"]).all() and torch.isinf(out["kl_base_policy"]).all()
    close(out["entropy_policy"], [0.0])


def test_random_rows_match_direct_computation():
    torch.manual_seed(1)
    lp, lq = torch.randn(5, 30, dtype=torch.float64) * 3, torch.randn(5, 30, dtype=torch.float64)
    out = distribution_divergences(lp, lq)
    p, q = lp.softmax(-1), lq.softmax(-1)
    m = (p + q) / 2
    kl = lambda a, b: (a * (a / b).log()).sum(-1)
    close(out["kl_policy_base"], kl(p, q).float(), 1e-5)
    close(out["kl_base_policy"], kl(q, p).float(), 1e-5)
    close(out["js"], (0.5 * kl(p, m) + 0.5 * kl(q, m)).float(), 1e-5)
    close(out["entropy_policy"], (-(p * p.log()).sum(-1)).float(), 1e-5)
    close(out["entropy_base"], (-(q * q.log()).sum(-1)).float(), 1e-5)
    assert torch.all(out["js"] >= 0) and torch.all(out["js"] <= LN2)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        distribution_divergences(torch.zeros(2, 3), torch.zeros(2, 4))


def test_mean_over_valid():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mean_over_valid(values, mask) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert mean_over_valid(values, torch.zeros_like(mask)) == 0.0


# ----------------------------------------------------------------------------------------------
# response_divergences on tiny random models
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_model():
    from pivotal.models import load_model
    return load_model("tiny-random", seed=1)[0]


@pytest.fixture(scope="module")
def batch(tiny):
    """6 sampled rows; rows 0 and 3 cut short and two all-padding columns appended."""
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    b, _ = engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=7, temperature=1.0), seed=3)
    pad = tok.pad_token_id
    b.response_ids = torch.cat([b.response_ids, torch.full((b.size, 2), pad)], dim=1)
    b.response_mask = torch.cat([b.response_mask, torch.zeros(b.size, 2)], dim=1)
    b.old_logprobs = torch.cat([b.old_logprobs, torch.zeros(b.size, 2)], dim=1)
    for row, n in ((0, 3), (3, 5)):
        b.response_mask[row, n:] = 0
        b.response_ids[row, n:] = pad
        b.old_logprobs[row, n:] = 0
    assert (b.response_mask.sum(1) > 0).all()
    return b


def test_shapes_padding_and_range(tiny, other_model, batch):
    out = response_divergences(tiny[0], other_model, batch)
    assert set(out) == {"js", "kl_policy_base", "kl_base_policy", "entropy_policy",
                        "entropy_base", "dlogp"}
    pad = batch.response_mask == 0
    for k, v in out.items():
        assert v.shape == batch.response_mask.shape and v.dtype == torch.float32, k
        assert torch.all(v[pad] == 0), k
        assert torch.isfinite(v).all(), k
    valid = ~pad
    assert torch.all(out["js"][valid] >= 0) and torch.all(out["js"][valid] <= LN2)
    assert torch.all(out["js"][valid] > 0)           # different random models differ
    assert torch.all(out["kl_policy_base"][valid] >= 0)
    assert torch.all(out["kl_base_policy"][valid] >= 0)
    assert torch.all(out["entropy_policy"][valid] > 0)


def test_dlogp_matches_policy_logprobs(tiny, other_model, batch):
    policy, base = tiny[0], other_model
    for temperature in (1.0, 0.7):
        out = response_divergences(policy, base, batch, temperature=temperature)
        with torch.no_grad():
            lp_policy, h_policy = policy_logprobs(policy, batch, temperature, with_entropy=True)
            lp_base, h_base = policy_logprobs(base, batch, temperature, with_entropy=True)
        close(out["dlogp"], lp_policy - lp_base, 1e-5)
        close(out["entropy_policy"], h_policy, 1e-5)
        close(out["entropy_base"], h_base, 1e-5)


def test_same_model_gives_zero(tiny, batch):
    out = response_divergences(tiny[0], tiny[0], batch)
    for k in ("js", "kl_policy_base", "kl_base_policy", "dlogp"):
        close(out[k], torch.zeros_like(out[k]), 1e-5)
    close(out["entropy_policy"], out["entropy_base"], 1e-5)


def test_chunking_does_not_change_values(tiny, other_model, batch):
    """Equal results for any chunk size; the LM head never sees more than chunk_tokens rows."""
    seen = []
    hooks = [m.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[0])) for m in (tiny[0], other_model)]
    try:
        results = {}
        for chunk in (1, 3, 10_000):
            seen.clear()
            results[chunk] = response_divergences(tiny[0], other_model, batch, chunk_tokens=chunk)
            assert seen and max(seen) <= chunk
    finally:
        for h in hooks:
            h.remove()
    n = int(batch.response_mask.sum())
    assert max(seen) == n  # chunk 10_000: one call per model on exactly the valid tokens
    # Equal up to float32 rounding, not bitwise: the LM head on 1 row and on many rows runs
    # different BLAS kernels (logits differ by ~2e-7), which moves KL by ~1e-6 and entropies
    # (~10.8 here) by ~10 ulp.
    for chunk in (3, 10_000):
        close(results[chunk]["js"], results[1]["js"], 1e-6)
        for k in results[1]:
            a, b = results[chunk][k], results[1][k]
            assert torch.allclose(a, b, rtol=1e-5, atol=2e-6), (chunk, k, (a - b).abs().max())


def test_share_prompt_gives_same_values(tiny, other_model, batch):
    a = response_divergences(tiny[0], other_model, batch, share_prompt=True)
    b = response_divergences(tiny[0], other_model, batch, share_prompt=False)
    for k in a:
        close(a[k], b[k], 1e-5)


def test_non_plain_head_fallback_matches(tiny, other_model, batch, monkeypatch):
    a = response_divergences(tiny[0], other_model, batch, chunk_tokens=4)
    monkeypatch.setattr(divergence_module, "has_plain_head", lambda model: False)
    b = response_divergences(tiny[0], other_model, batch, chunk_tokens=4)
    for k in a:
        close(a[k], b[k], 1e-5)


def test_vocab_mismatch_raises(tiny, batch):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    small = LlamaForCausalLM(config).eval()
    big = tiny[0].get_output_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match=rf"{big}.*100"):
        response_divergences(tiny[0], small, batch)
    with pytest.raises(ValueError, match=rf"100.*{big}"):
        response_divergences(small, tiny[0], batch)


def test_bad_chunk_raises(tiny, batch):
    with pytest.raises(ValueError, match="chunk_tokens"):
        response_divergences(tiny[0], tiny[0], batch, chunk_tokens=0)


# ----------------------------------------------------------------------------------------------
# credit "divergence"
# ----------------------------------------------------------------------------------------------
# Valid D = 0.1, 0.3, 0.2 (row 0) and 0.4 (row 1); mean = 1.0 / 4 = 0.25, max = 0.4. alpha = 2:
#   mean: 1 + 2*0.1/0.25 = 1.8, 1 + 2*0.3/0.25 = 3.4, 1 + 2*0.2/0.25 = 2.6, 1 + 2*0.4/0.25 = 4.2
#   max:  1 + 2*0.1/0.4  = 1.5, 2.5, 2.0, 3.0
#   none: 1 + 2*0.1 = 1.2, 1.6, 1.4, 1.8
# Padding (and the extra columns 3-4 of the wider extras tensor) hold garbage 9.0 / 100.0.
def credit_batch(extras_divergence=None, advantages=None):
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    b = RolloutBatch(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        response_ids=torch.zeros(2, 3, dtype=torch.long), response_mask=mask,
        old_logprobs=torch.zeros(2, 3), group_ids=torch.zeros(2, dtype=torch.long),
        truncated=torch.zeros(2, dtype=torch.bool), advantages=advantages)
    if extras_divergence is not None:
        b.divergence = extras_divergence
    return b


D_WIDE = torch.tensor([[0.1, 0.3, 0.2, 100.0, 100.0],
                       [0.4, 9.0, 9.0, 100.0, 100.0]], dtype=torch.float64)
FN = CREDITS.get("divergence")


def test_credit_requirements_and_kinds():
    assert credit_requirements(FN, {}) == frozenset({"divergence:js"})
    assert credit_requirements(FN, {"kind": "kl_base_policy"}) == frozenset({"divergence:kl_base_policy"})
    assert DIVERGENCE_KINDS == ("js", "kl_policy_base", "kl_base_policy")


@pytest.mark.parametrize("normaliser, expected", [
    ("mean", [[1.8, 3.4, 2.6], [4.2, 1.0, 1.0]]),
    ("max", [[1.5, 2.5, 2.0], [3.0, 1.0, 1.0]]),
    ("none", [[1.2, 1.6, 1.4], [1.8, 1.0, 1.0]]),
])
def test_credit_hand_values(normaliser, expected):
    w = FN(credit_batch(D_WIDE), None, alpha=2.0, normaliser=normaliser)
    assert w.shape == (2, 3)
    close(w, expected, 1e-6)
    w0 = FN(credit_batch(D_WIDE), None, alpha=2.0, normaliser=normaliser, eps=0.0)
    close(w0, expected, 1e-12)


def test_credit_default_is_mean_alpha_one():
    # alpha 1, mean 0.25: 1 + 0.4 = 1.4, 1 + 1.2 = 2.2, 1.8, 2.6; advantages 2 and -1 per row
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    batch = credit_batch(D_WIDE[:, :3].clone(), adv)
    close(FN(batch, None), [[1.4, 2.2, 1.8], [2.6, 1.0, 1.0]], 1e-6)
    out = batch.advantages * FN(batch, None, alpha=1.0, kind="kl_policy_base")
    close(out, [[2.8, 4.4, 3.6], [-2.6, -1.0, -1.0]], 1e-6)


def test_credit_normaliser_is_the_mini_batch_s_not_the_micro_batch_s():
    """D = [[1], [3]], alpha 1, mean: one batch gives [1.5, 2.5]; split into two rows with the
    mini-batch statistics, the same (without them each row alone would give [2.0, 2.0])."""
    mask = torch.ones(2, 1)
    b = RolloutBatch(prompt_ids=torch.zeros(2, 1, dtype=torch.long),
                     prompt_mask=torch.ones(2, 1, dtype=torch.long),
                     response_ids=torch.zeros(2, 1, dtype=torch.long), response_mask=mask,
                     old_logprobs=torch.zeros(2, 1), group_ids=torch.zeros(2, dtype=torch.long),
                     truncated=torch.zeros(2, dtype=torch.bool), divergence=torch.tensor([[1.0], [3.0]]))
    for normaliser, expected in (("mean", [1.5, 2.5]), ("max", [4 / 3, 2.0])):
        whole = FN(b, None, normaliser=normaliser, eps=0.0)
        close(whole.squeeze(-1), expected, 1e-6)
        stats = FN.minibatch_statistics(b)
        parts = torch.cat([FN(b.select([i]), None, normaliser=normaliser, eps=0.0, stats=stats)
                           for i in range(2)])
        close(parts.squeeze(-1), expected, 1e-6)
        alone = torch.cat([FN(b.select([i]), None, normaliser=normaliser, eps=0.0) for i in range(2)])
        close(alone.squeeze(-1), [2.0, 2.0], 1e-6)  # what the per-micro-batch normaliser gave
    parts = [FN.minibatch_statistics(b.select([i])) for i in range(2)]
    merged = merge_statistics(parts)
    for key, value in FN.minibatch_statistics(b).items():
        close(merged[key], value, 0.0)


def test_credit_max_weight_caps_only_the_large_weights():
    # mean normaliser, alpha 2: [[1.8, 3.4, 2.6], [4.2, pad, pad]]; a cap of 3 touches 3.4 and 4.2
    w = FN(credit_batch(D_WIDE), None, alpha=2.0, max_weight=3.0)
    close(w, [[1.8, 3.0, 2.6], [3.0, 1.0, 1.0]], 1e-6)


def test_credit_all_zero_divergence_gives_ones():
    w = FN(credit_batch(torch.zeros(2, 3)), None, eps=0.0)
    close(w, torch.ones(2, 3), 0.0)


def test_credit_missing_divergence_raises():
    with pytest.raises(ValueError, match="needs per-token divergences against the reference"):
        FN(credit_batch(), None)


@pytest.mark.parametrize("options, match", [
    ({"kind": "tv"}, "kind must be one of"),
    ({"normaliser": "median"}, "normaliser must be one of"),
    ({"eps": -1.0}, "eps"),
    ({"max_weight": 0.5}, "max_weight must be >= 1"),
])
def test_credit_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        FN(credit_batch(D_WIDE), None, **options)


def test_credit_bad_shape_or_nonfinite_raises():
    with pytest.raises(ValueError, match=r"T' >= 3"):
        FN(credit_batch(D_WIDE[:, :2].clone()), None)
    bad = D_WIDE.clone()
    bad[0, 1] = math.inf
    with pytest.raises(ValueError, match="non-finite"):
        FN(credit_batch(bad), None)
    bad = D_WIDE.clone()
    bad[1, 2] = math.inf   # padding: ignored
    close(FN(credit_batch(bad), None, alpha=2.0, normaliser="max"),
          [[1.5, 2.5, 2.0], [3.0, 1.0, 1.0]])


def test_credit_on_real_divergences(tiny, other_model, batch):
    out = response_divergences(tiny[0], other_model, batch)
    batch = batch.select(torch.arange(batch.size))
    batch.divergence = out["js"]
    w = FN(batch, None, alpha=0.5)
    valid = batch.response_mask.bool()
    assert torch.all(w[~valid] == 1) and torch.all(w[valid] > 1)
    # the mean-normalised weights average 1 + alpha over valid tokens
    assert mean_over_valid(w, batch.response_mask) == pytest.approx(1.5, abs=1e-5)


def test_shift_metrics_hand_values():
    from pivotal.shift_monitor import monitored_rows, shift_metrics
    dlogp = torch.tensor([[0.05, -0.6, 2.0], [-0.2, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # the 9.0s are padding
    m = shift_metrics(dlogp, mask, [0.1, 0.5, 1.0])
    assert m["shift_frac_0.1"] == pytest.approx(3 / 4)
    assert m["shift_frac_0.5"] == pytest.approx(2 / 4)
    assert m["shift_frac_1"] == pytest.approx(1 / 4)
    assert m["shift_mean_abs_dlogp"] == pytest.approx((0.05 + 0.6 + 2.0 + 0.2) / 4)
    assert monitored_rows(32, 4).tolist() == [0, 10, 21, 31]
    assert monitored_rows(5, 0).tolist() == [0, 1, 2, 3, 4]
