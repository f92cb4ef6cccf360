"""Token-level credit (FIPO, Δlog p, OWPO) and NSR losses against hand-computed values.

Expected numbers are written out literally with the arithmetic beside them; they are never
produced by calling the formula under test. Pure tensor tests, no model.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

import pivotal.algos.clip_rescue  # noqa: F401  (registers ppo_clip_rescue, gspo_rescue)
import pivotal.algos.token_credit  # noqa: F401  (registers fipo, dlogp, owpo)
from pivotal.algos.clip_rescue import reset_generators
from pivotal.algos.credit import CREDITS, active_row_rule, credit_requirements, resolve_credit_options
from pivotal.algos.losses import LOSSES
from pivotal.algos.token_credit import reverse_discounted_cumsum
from pivotal.batch import RolloutBatch
from pivotal.config import ConfigError, load_config

D = torch.float64


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"\n{actual}\n!=\n{expected}"


def make_batch(old_logprobs, mask, advantages=None, ref_logprobs=None):
    B, T = old_logprobs.shape
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.long),
        response_ids=torch.zeros(B, T, dtype=torch.long),
        response_mask=torch.as_tensor(mask, dtype=old_logprobs.dtype),
        old_logprobs=old_logprobs, group_ids=torch.zeros(B, dtype=torch.long),
        truncated=torch.zeros(B, dtype=torch.bool), advantages=advantages,
        ref_logprobs=ref_logprobs)


def per_row(values, T):
    return torch.tensor(values, dtype=D)[:, None].expand(-1, T).clone()


def test_requirements():
    assert credit_requirements(CREDITS.get("fipo"), {}) == frozenset({"logprobs"})
    assert credit_requirements(CREDITS.get("dlogp"), {"c": 0.2}) == frozenset()
    assert credit_requirements(CREDITS.get("owpo"), {}) == frozenset({"logprobs", "ref_logprobs"})


# ----------------------------------------------------------------------------------------------
# FIPO
# ----------------------------------------------------------------------------------------------
# tau = 1 -> gamma = 2^-1 = 0.5. Log-ratios d = lp - olp = 0.4, -0.2, 3.0, 0.2, 0.1.
# dual_clip_c = 10: log 10 = 2.3026 < 3.0, so token 2 is left out of the sum:
#   x = 0.4, -0.2, 0, 0.2, 0.1
#   F4 = 0.1
#   F3 = 0.2 + 0.5*0.1     = 0.25
#   F2 = 0   + 0.5*0.25    = 0.125
#   F1 = -0.2 + 0.5*0.125  = -0.1375
#   F0 = 0.4 + 0.5*-0.1375 = 0.33125
# exp(F) = 1.3927079, 0.8715343, 1.1331485, 1.2840254, 1.1051709
FIPO_D = torch.tensor([0.4, -0.2, 3.0, 0.2, 0.1], dtype=D)


def fipo_inputs():
    """Rows: A=+1; A=-1; A=+1 with the last two tokens padding (garbage log-probs there)."""
    old = torch.full((3, 5), math.log(0.5), dtype=D)
    lp = old + FIPO_D
    lp[2, 3:] = 50.0
    mask = [[1] * 5, [1] * 5, [1, 1, 1, 0, 0]]
    adv = per_row([1.0, -1.0, 1.0], 5)
    return make_batch(old, mask, adv), lp


def test_fipo_hand_example_7b_range():
    batch, lp = fipo_inputs()
    f = CREDITS.get("fipo")(batch, lp, tau=1.0, f_low=0.2, f_high=0.2)
    # row 0 (A>0): clamp(exp(F), 0.8, 1.2)           = 1.2, 0.8715343, 1.1331485, 1.2, 1.1051709
    # row 1 (A<0): token 2 has r = e^3 = 20.09 > safety 10 -> clamp(1.1331485, 0.8, 1.0) = 1.0
    # row 2: padding enters nothing: x = 0.4, -0.2, 0 -> F2 = 0, F1 = -0.2, F0 = 0.4 - 0.1 = 0.3
    #        exp = 1.3498588 -> 1.2, 0.8187308, 1.0; padding -> 1
    close(f, [[1.2, 0.8715343, 1.1331485, 1.2, 1.1051709],
              [1.2, 0.8715343, 1.0, 1.2, 1.1051709],
              [1.2, 0.8187308, 1.0, 1.0, 1.0]])
    assert not f.requires_grad


def test_fipo_default_range_is_one_to_one_point_two():
    batch, lp = fipo_inputs()
    f = CREDITS.get("fipo")(batch, lp, tau=1.0)  # 32B recipe: f in [1.0, 1.2]
    # row 0: 0.8715343 -> 1.0; row 2: 0.8187308 -> 1.0
    close(f, [[1.2, 1.0, 1.1331485, 1.2, 1.1051709],
              [1.2, 1.0, 1.0, 1.2, 1.1051709],
              [1.2, 1.0, 1.0, 1.0, 1.0]])


def test_fipo_is_filter_off_includes_large_ratio():
    batch, lp = fipo_inputs()
    f = CREDITS.get("fipo")(batch, lp, tau=1.0, f_low=0.2, dual_clip_c=None, safety=None)
    # token 2 now counts: F2 = 3 + 0.5*0.25 = 3.125, F1 = -0.2 + 1.5625 = 1.3625,
    # F0 = 0.4 + 0.68125 = 1.08125: all exp > 1.2. F3, F4 as before (1.2840254 -> 1.2, 1.1051709)
    close(f[0], [1.2, 1.2, 1.2, 1.2, 1.1051709])
    close(f[1], [1.2, 1.2, 1.2, 1.2, 1.1051709])  # no safety clamp either


def test_fipo_safety_threshold():
    batch, lp = fipo_inputs()
    # 7B recipe safety 3: r = e^0.4 = 1.49, e^-0.2, e^3 = 20.1, e^0.2, e^0.1: only token 2 > 3
    f = CREDITS.get("fipo")(batch, lp, tau=1.0, f_low=0.2, safety=3.0)
    close(f[1], [1.2, 0.8715343, 1.0, 1.2, 1.1051709])
    # safety 1.3: tokens 0 (r 1.49) and 2 of the A<0 row -> clamp into [0.8, 1.0];
    # token 3 (r = e^0.2 = 1.221) and 4 (1.105) are under 1.3
    f = CREDITS.get("fipo")(batch, lp, tau=1.0, f_low=0.2, safety=1.3)
    close(f[1], [1.0, 0.8715343, 1.0, 1.2, 1.1051709])
    close(f[0], [1.2, 0.8715343, 1.1331485, 1.2, 1.1051709])  # A>0 untouched


def test_fipo_clamp_and_overflow():
    # 100 tokens of d = 19, no IS filter, tau = 1000: gamma = 2^-0.001 = 0.9993071,
    # F0 = 19 * (1 - gamma^100)/(1 - gamma) = 19 * (1 - 0.9330330)/0.0006929 = 19 * 96.65 = 1836:
    # exp overflows to inf in float32, clamp -> 1.2, no nan
    old = torch.zeros(2, 100)
    lp = torch.stack([torch.full((100,), 19.0), torch.full((100,), -19.0)])
    batch = make_batch(old, torch.ones(2, 100), torch.ones(2, 100))
    f = CREDITS.get("fipo")(batch, lp, tau=1000.0, f_low=0.3, dual_clip_c=None)
    assert torch.isfinite(f).all()
    assert torch.equal(f[0], torch.full((100,), 1.2))
    assert torch.equal(f[1], torch.full((100,), 0.7))  # exp(-1900) = 0 -> 1 - 0.3


def test_fipo_drop_multi_dual_clipped():
    # tau = 1, c = 10 (log 10 = 2.3026): d = 3.0 and 2.5 are dual-clipped (e^2.5 = 12.2 > 10)
    old = torch.zeros(4, 4, dtype=D)
    d = torch.tensor([[3.0, 0.0, 2.5, 7.0],    # A<0, two dual-clipped valid tokens -> dropped
                      [3.0, 0.0, 0.0, 0.0],    # A<0, only one -> kept
                      [3.0, 0.0, 2.5, 0.0],    # A>0, two, but positive -> kept
                      [3.0, 2.5, 0.0, 0.0]],   # A<0, the second is on padding -> kept
                     dtype=D)
    mask = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    adv = torch.tensor([-1.0, -1.0, 1.0, -1.0], dtype=D)[:, None] * torch.tensor(mask, dtype=D)
    batch = make_batch(old, mask, adv)
    fipo = CREDITS.get("fipo")
    rule = active_row_rule(fipo, {})   # on by default, as in the released loss
    assert torch.equal(rule(batch, old + d), torch.tensor([True, False, False, False]))
    assert not rule(batch, old.clone()).any()            # on the old policy: nothing dropped
    assert active_row_rule(fipo, {"drop_multi_dual_clipped": False}) is None
    assert active_row_rule(fipo, {"dual_clip_c": None}) is None
    # the multiplier itself no longer zeroes the row: every x is 0 (filtered or d = 0) -> f = 1
    assert torch.equal(fipo(batch, old + d, tau=1.0), torch.ones(4, 4, dtype=D))


def test_fipo_takes_the_dual_clip_from_the_loss():
    fipo, loss = CREDITS.get("fipo"), LOSSES.get("ppo_clip")
    assert resolve_credit_options(fipo, {}, loss, {"dual_clip": 10.0})["dual_clip_c"] == 10.0
    assert resolve_credit_options(fipo, {}, loss, {})["dual_clip_c"] == 3.0   # ppo_clip's default
    assert resolve_credit_options(fipo, {"dual_clip_c": 4.0}, loss, {"dual_clip": 4.0}) == {
        "dual_clip_c": 4.0}
    assert resolve_credit_options(fipo, {}, loss, {"dual_clip": None})["dual_clip_c"] is None
    with pytest.raises(ValueError, match="dual_clip_c=5.0 differs from the loss's dual_clip=10.0"):
        resolve_credit_options(fipo, {"dual_clip_c": 5.0}, loss, {"dual_clip": 10.0})
    with pytest.raises(ConfigError, match="algo.credit_options: dual_clip_c=5"):
        load_config(None, ["algo.credit=fipo", "algo.credit_options={dual_clip_c: 5}",
                           "algo.loss_options={dual_clip: 10}"])


def test_fipo_exactly_one_on_policy():
    # first mini-batch after a rollout: logprobs == old_logprobs -> d = 0 -> F = 0 -> f = 1 exactly
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 50, generator=g) * 5
    mask = (torch.rand(4, 50, generator=g) > 0.2).float()
    adv = torch.randn(4, 1, generator=g).expand(4, 50) * mask
    batch = make_batch(old, mask, adv)
    for opts in ({}, {"f_low": 0.2, "safety": 3.0}, {"drop_multi_dual_clipped": False}):
        assert torch.equal(CREDITS.get("fipo")(batch, old.clone(), **opts), torch.ones(4, 50))


def test_reverse_discounted_cumsum_across_blocks():
    # the blocked scan agrees with the definition F_t = x_t + gamma * F_{t+1} at block edges
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, generator=g, dtype=D)
    expected = torch.zeros_like(x)
    running = torch.zeros(3, dtype=D)
    for t in reversed(range(30)):
        running = x[:, t] + 0.9 * running
        expected[:, t] = running
    for chunk in (1, 7, 10, 30, 128):
        close(reverse_discounted_cumsum(x, 0.9, chunk=chunk), expected, tol=1e-12)


def test_fipo_long_sequences_linear_memory():
    # constant d = 0.01, tau = 32 -> gamma = 2^(-1/32) = 0.9785721, 1 - gamma = 0.0214279
    # F_t = 0.01 * (1 - gamma^(T-t)) / (1 - gamma); T - t = 4096 = 128 half-lives -> gamma^4096 ~ 0
    # F_0 = 0.01 / 0.0214279 = 0.4666805; F_{T-1} = 0.01; F_{T-32} = 0.01 * (1 - 0.5)/0.0214279
    #     = 0.2333402 (gamma^32 = 0.5). With f_high = 10 nothing is clamped: f = exp(F)
    #     = exp(0.4666805) = 1.5946918, exp(0.01) = 1.0100502, exp(0.2333402) = 1.2628111
    old = torch.full((2, 4096), -1.0, dtype=D)
    batch = make_batch(old, torch.ones(2, 4096), torch.ones(2, 4096, dtype=D))
    start = time.perf_counter()
    f = CREDITS.get("fipo")(batch, old + 0.01, f_high=10.0)
    assert time.perf_counter() - start < 2.0
    close(f[:, 0], [1.5946918] * 2)
    close(f[:, -1], [1.0100502] * 2)
    close(f[:, -32], [1.2628111] * 2)
    # T = 2^18: a (B, T, T) float64 tensor would need 2^36 * 8 B = 512 GiB
    T = 2 ** 18
    old = torch.zeros(1, T)
    batch = make_batch(old, torch.ones(1, T), torch.ones(1, T))
    f = CREDITS.get("fipo")(batch, old + 0.01)
    assert f.shape == (1, T) and torch.isfinite(f).all()


def test_fipo_errors():
    batch, lp = fipo_inputs()
    with pytest.raises(ValueError, match="logprobs"):
        CREDITS.get("fipo")(batch, None)
    no_adv = make_batch(batch.old_logprobs, batch.response_mask)
    with pytest.raises(ValueError, match="advantages"):
        CREDITS.get("fipo")(no_adv, lp)
    with pytest.raises(ValueError, match="tau"):
        CREDITS.get("fipo")(batch, lp, tau=0.0)
    with pytest.raises(ValueError, match="dual_clip_c"):
        CREDITS.get("fipo")(batch, lp, dual_clip_c=0.0)


# ----------------------------------------------------------------------------------------------
# Δlog p
# ----------------------------------------------------------------------------------------------

def test_dlogp_values():
    # p_old = 0.25, 1.0, 0.01 and a padding token with a garbage log-prob
    old = torch.tensor([[math.log(0.25), 0.0, math.log(0.01), 80.0]], dtype=D)
    batch = make_batch(old, [[1, 1, 1, 0]], torch.ones(1, 4, dtype=D))
    # c = 0.1: 1 + 0.1*0.75 = 1.075; 1 + 0.1*0 = 1; 1 + 0.1*0.99 = 1.099; padding 1
    close(CREDITS.get("dlogp")(batch, None), [[1.075, 1.0, 1.099, 1.0]])
    # c = 0.2: 1.15, 1.0, 1.198
    close(CREDITS.get("dlogp")(batch, None, c=0.2), [[1.15, 1.0, 1.198, 1.0]])


# ----------------------------------------------------------------------------------------------
# OWPO
# ----------------------------------------------------------------------------------------------

def owpo_inputs():
    lp = torch.full((4, 4), -2.0, dtype=D)
    ref = torch.tensor([[-1.5, -2.5, 0.0, -2.0]] * 3 + [[-1.5, -2.5, 40.0, -40.0]], dtype=D)
    mask = [[1] * 4, [1] * 4, [1] * 4, [1, 1, 0, 0]]
    adv = per_row([1.0, -1.0, 0.0, 1.0], 4) * torch.tensor(mask, dtype=D)
    return make_batch(lp.clone(), mask, adv, ref), lp


def test_owpo_values():
    batch, lp = owpo_inputs()
    w = CREDITS.get("owpo")(batch, lp)
    # delta = rlp - lp = 0.5, -0.5, 2.0, 0
    # row 0 (A>0): g = delta       -> 1 + 0.5 = 1.5, 1, 1 + min(2, cap 1) = 2.0, 1 (g = 0)
    # row 1 (A<0): g = -delta      -> 1, 1 + 0.5 = 1.5, 1, 1
    # row 2 (A=0): sign 0          -> all 1
    # row 3 (A>0), padding after two tokens -> 1.5, 1, then 1, 1
    close(w, [[1.5, 1.0, 2.0, 1.0], [1.0, 1.5, 1.0, 1.0], [1.0] * 4, [1.5, 1.0, 1.0, 1.0]])
    # lam 0.5, no cap: row 0 -> 1 + 0.5*0.5 = 1.25, 1, 1 + 0.5*2 = 2.0, 1
    w = CREDITS.get("owpo")(batch, lp, lam=0.5, cap=None)
    close(w[0], [1.25, 1.0, 2.0, 1.0])
    close(w[1], [1.0, 1.25, 1.0, 1.0])
    # cap 0.3: row 0 -> 1 + min(0.5, 0.3) = 1.3, 1, 1.3, 1
    close(CREDITS.get("owpo")(batch, lp, cap=0.3)[0], [1.3, 1.0, 1.3, 1.0])


def test_owpo_errors():
    batch, lp = owpo_inputs()
    no_ref = make_batch(batch.old_logprobs, batch.response_mask, batch.advantages)
    with pytest.raises(ValueError, match="ref_logprobs.*model.reference"):
        CREDITS.get("owpo")(no_ref, lp)
    with pytest.raises(ValueError, match="logprobs"):
        CREDITS.get("owpo")(batch, None)


# ----------------------------------------------------------------------------------------------
# NSR
# ----------------------------------------------------------------------------------------------

def wide(ratio, adv, n=20000, dtype=D):
    """(1, n) identical tokens with the given ratio and advantage."""
    old = torch.full((1, n), math.log(0.3), dtype=dtype)
    lp = (old + math.log(ratio)).requires_grad_()
    return lp, old, torch.full((1, n), adv, dtype=dtype), torch.ones(1, n, dtype=dtype)


def test_ppo_clip_rescue_inside_trust_region_is_ppo_clip():
    # every token is either inside [0.8, 1.28] or on a branch ppo_clip leaves unclipped
    # (A>0 with r < 0.8, A<0 with r > 1.28) or dual-clipped (A<0, r = 5 > 3): nothing to rescue
    ratios = torch.tensor([1.1, 0.85, 1.25, 0.5, 1.6, 5.0, 1.0], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0, -1.0, -1.0, 0.5], [1.0] * 7], dtype=D)
    old = torch.full((2, 7), math.log(0.3), dtype=D)
    mask = torch.tensor([[1.0] * 7, [0.0] * 7], dtype=D)
    lp_base = torch.cat([old[:1] + ratios.log(), torch.full((1, 7), 30.0, dtype=D)])
    lp_a, lp_b = lp_base.clone().requires_grad_(), lp_base.clone().requires_grad_()
    base = LOSSES.get("ppo_clip")(lp_a, old, adv, mask)
    rescue = LOSSES.get("ppo_clip_rescue")(lp_b, old, adv, mask, seed=0)
    assert torch.equal(rescue.per_token_loss, base.per_token_loss)
    base.per_token_loss.sum().backward()
    rescue.per_token_loss.sum().backward()
    assert torch.equal(lp_b.grad, lp_a.grad)
    for k, v in base.metrics.items():
        assert torch.equal(rescue.metrics[k], v), k
    assert rescue.metrics["rescued_frac"] == 0


def test_ppo_clip_rescue_positive_monte_carlo():
    """A = +1, r = 2 > 1 + eps_h = 1.28, u ~ U(0, 1], r' = u r.

    Rescued iff u r <= 1.28, i.e. u <= 1.28/2 = 0.64 (probability 0.64); then the loss is -A u r
    and its gradient w.r.t. log r (= w.r.t. lp) is -A u r, else 0 (clipped). So
        E[grad] = -A r E[u; u <= (1+eps_h)/r] = -A r ((1+eps_h)/r)^2 / 2 = -A (1+eps_h)^2 / (2 r)
                = -1.6384 / 4 = -0.4096,
    which is (1+eps_h)^2 / (2 r^2) = 1.6384/8 = 0.2048 times the unclipped gradient -A r = -2
    (FIPO's decay factor). Std of one draw ~0.43, so 20000 draws give ~0.7 % error.
    """
    lp, old, adv, mask = wide(2.0, 1.0)
    out = LOSSES.get("ppo_clip_rescue")(lp, old, adv, mask, seed=0)
    out.per_token_loss.sum().backward()
    grad, loss = lp.grad[0], out.per_token_loss[0].detach()
    assert grad.mean().item() == pytest.approx(-0.4096, rel=0.03)
    assert (grad.mean() / -2.0).item() == pytest.approx(0.2048, rel=0.03)
    assert out.metrics["rescued_frac"].item() == pytest.approx(0.64, abs=0.015)
    rescued = grad != 0
    # rescued: loss = -u r in [-1.28, 0) and grad == loss; the rest stays clipped at -1.28
    assert torch.equal(grad[rescued], loss[rescued])
    assert (loss[rescued] >= -1.28).all() and (loss[rescued] < 0).all()
    assert (loss[~rescued] == -1.28).all()


def test_ppo_clip_rescue_negative_mirror_monte_carlo():
    """A = -1, r = 0.5 < 1 - eps_l = 0.8, r' = r/u, dual_clip c = 3.

    Rescued iff 0.8 <= 0.5/u <= 3, i.e. u in [0.5/3, 0.5/0.8] = [0.1667, 0.625] (probability
    0.4583); loss -A r/u, gradient w.r.t. log r also r/u (between 0.8 and 3). So
        E[grad] = r * integral_{r/c}^{r/0.8} du/u = r ln(c/0.8) = 0.5 ln(3.75) = 0.6608779.
    (Without the cap c the integral runs down to u = 0 and diverges.)
    """
    lp, old, adv, mask = wide(0.5, -1.0)
    out = LOSSES.get("ppo_clip_rescue")(lp, old, adv, mask, seed=1)
    out.per_token_loss.sum().backward()
    grad, loss = lp.grad[0], out.per_token_loss[0].detach()
    assert grad.mean().item() == pytest.approx(0.6608779, rel=0.03)
    assert out.metrics["rescued_frac"].item() == pytest.approx(0.4583333, abs=0.015)
    rescued = grad != 0
    close(grad[rescued], loss[rescued], tol=1e-12)  # d(r/u)/d log r = r/u (up to rounding)
    assert (loss[rescued] >= 0.8 - 1e-12).all() and (loss[rescued] <= 3.0 + 1e-12).all()
    assert (loss[~rescued] == 0.8).all()  # clipped: -A * clamp(0.5, 0.8, 1.28) = 0.8
    # the mirror off: exactly ppo_clip; with no dual-clip it must be off
    lp2, old2, adv2, mask2 = wide(0.5, -1.0, n=10)
    off = LOSSES.get("ppo_clip_rescue")(lp2, old2, adv2, mask2, rescue_negative=False,
                                     dual_clip=None)
    assert torch.equal(off.per_token_loss, torch.full((1, 10), 0.8, dtype=D))
    with pytest.raises(ValueError, match="dual_clip"):
        LOSSES.get("ppo_clip_rescue")(lp2, old2, adv2, mask2, dual_clip=None)


def test_clip_rescue_seed_reproducible():
    lp, old, adv, mask = wide(2.0, 1.0, n=200)
    loss = LOSSES.get("ppo_clip_rescue")
    state = torch.get_rng_state()
    reset_generators()
    first = loss(lp, old, adv, mask, seed=123).per_token_loss
    second = loss(lp, old, adv, mask, seed=123).per_token_loss   # the stream advances
    reset_generators()
    again = loss(lp, old, adv, mask, seed=123).per_token_loss
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert not torch.equal(first, loss(lp, old, adv, mask, seed=7).per_token_loss)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the global RNG alone
    # seed None draws from the global RNG
    torch.manual_seed(5)
    a = loss(lp, old, adv, mask).per_token_loss
    torch.manual_seed(5)
    assert torch.equal(a, loss(lp, old, adv, mask).per_token_loss)


def gspo_wide(seq_ratio, adv, n=20000):
    """n sequences of 3 tokens whose token log-ratios average to log(seq_ratio)."""
    old = torch.full((n, 3), -1.0, dtype=D)
    log_r = math.log(seq_ratio) + torch.tensor([0.1, -0.2, 0.1], dtype=D)
    lp = (old + log_r).requires_grad_()
    return lp, old, torch.full((n, 3), adv, dtype=D), torch.ones(n, 3, dtype=D)


def test_gspo_rescue_inside_trust_region_is_gspo():
    # s = e^0.0001 (inside [1-3e-4, 1+4e-4]), s = 1.5 with A<0, s = 0.5 with A>0: no rescue
    old = torch.full((3, 2), -1.0, dtype=D)
    log_s = torch.tensor([1e-4, math.log(1.5), math.log(0.5)], dtype=D)[:, None]
    lp_base = old + log_s + torch.tensor([0.05, -0.05], dtype=D)
    adv = per_row([1.0, -1.0, 1.0], 2)
    mask = torch.ones(3, 2, dtype=D)
    lp_a, lp_b = lp_base.clone().requires_grad_(), lp_base.clone().requires_grad_()
    base = LOSSES.get("gspo")(lp_a, old, adv, mask)
    rescue = LOSSES.get("gspo_rescue")(lp_b, old, adv, mask, seed=0)
    assert torch.equal(rescue.per_token_loss, base.per_token_loss)
    base.per_token_loss.sum().backward()
    rescue.per_token_loss.sum().backward()
    assert torch.equal(lp_b.grad, lp_a.grad)
    assert rescue.metrics["rescued_frac"] == 0


def test_gspo_rescue_monte_carlo_both_signs():
    """Same rule on the sequence ratio s, one u per sequence; d s_it / d lp_t = s.

    A = +1, s = 1.5, eps_h = 4e-4: P(rescue) = 1.0004/1.5 = 0.6669333,
        E[grad per token] = -A (1+eps_h)^2 / (2 s) = -1.00080016/3 = -0.3336001.
    A = -1, s = 0.5, eps_l = 3e-4, rescue_cap 3:
        E[grad] = s ln(3/0.9997) = 0.5 * 1.0989124 = 0.5494562.
    """
    lp, old, adv, mask = gspo_wide(1.5, 1.0)
    out = LOSSES.get("gspo_rescue")(lp, old, adv, mask, seed=0)
    out.per_token_loss.sum().backward()
    assert lp.grad[:, 0].mean().item() == pytest.approx(-0.3336001, rel=0.03)
    assert out.metrics["rescued_frac"].item() == pytest.approx(0.6669333, abs=0.015)
    # a sequence is rescued as a whole: all its tokens share u, so their gradients are equal
    assert torch.equal(lp.grad[:, 0], lp.grad[:, 1]) and torch.equal(lp.grad[:, 0], lp.grad[:, 2])

    lp, old, adv, mask = gspo_wide(0.5, -1.0)
    out = LOSSES.get("gspo_rescue")(lp, old, adv, mask, seed=0)
    out.per_token_loss.sum().backward()
    assert lp.grad[:, 0].mean().item() == pytest.approx(0.5494562, rel=0.03)
    assert (lp.grad <= 3.0 + 1e-9).all()
    with pytest.raises(ValueError, match="rescue_cap"):
        LOSSES.get("gspo_rescue")(lp, old, adv, mask, rescue_cap=None)
