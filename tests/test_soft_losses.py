"""CISPO, SAPO and GMPO against hand-computed values.

Expected numbers are written out with the arithmetic beside them; they are never produced by
calling the loss under test.
"""

from __future__ import annotations

import pytest
import torch

from pivotal.algos import LOSSES, aggregate_loss

D = torch.float64


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"\n{actual}\n!=\n{expected}"


def _inputs(log_r, adv, mask, old=-1.0):
    log_r, mask = torch.tensor(log_r, dtype=D), torch.tensor(mask, dtype=D)
    olp = torch.full_like(log_r, old)
    lp = (olp + log_r).requires_grad_()
    return lp, olp, torch.tensor(adv, dtype=D), mask


# ---------------------------------------------------------------------------------------------
# CISPO
# ---------------------------------------------------------------------------------------------
def test_cispo_clips_the_weight_not_the_gradient():
    # log-ratios 0.5, -0.2, 0.1 (+ a padding token); lp = -1 + log-ratio = -0.5, -1.2, -0.9
    # weights clamp(r, 0, 1.28): e^0.5 = 1.6487 -> 1.28, e^-0.2 = 0.8187308, e^0.1 = 1.1051709
    lp, olp, adv, mask = _inputs([[0.5, -0.2, 0.1, 3.0]], [[1.0, -1.0, 2.0, 9.0]],
                                 [[1, 1, 1, 0]])
    out = LOSSES.get("cispo")(lp, olp, adv, mask)
    # -w A lp: -1.28*1*-0.5 = 0.64; -0.8187308*-1*-1.2 = -0.9824769; -1.1051709*2*-0.9 = 1.9893077
    close(out.per_token_loss, [[0.64, -0.9824769, 1.9893077, 0.0]])
    close(out.metrics["is_clip_frac"], 1 / 3)
    close(out.metrics["ratio_mean"], (1.6487213 + 0.8187308 + 1.1051709) / 3)
    out.per_token_loss.sum().backward()
    # the clipped token still gets a gradient (PPO would give it 0): -w A
    close(lp.grad, [[-1.28, 0.8187308, -2.2103418, 0.0]])


def test_cispo_lower_bound_and_on_policy_reinforce():
    # clip_low = 0.2: e^-0.5 = 0.6065307 is raised to 0.8; grad -w A = -0.8 * 1
    lp, olp, adv, mask = _inputs([[-0.5]], [[1.0]], [[1]])
    LOSSES.get("cispo")(lp, olp, adv, mask, clip_low=0.2).per_token_loss.sum().backward()
    close(lp.grad, [[-0.8]])
    # on-policy (r = 1) the gradient is REINFORCE's, -A
    lp, olp, adv, mask = _inputs([[0.0, 0.0]], [[0.7, -1.3]], [[1, 1]])
    LOSSES.get("cispo")(lp, olp, adv, mask).per_token_loss.sum().backward()
    close(lp.grad, [[-0.7, 1.3]])


# ---------------------------------------------------------------------------------------------
# SAPO
# ---------------------------------------------------------------------------------------------
def test_sapo_soft_gate_by_hand():
    # token 0: A = +1, tau = 1,    r = e^0.5  = 1.6487213, s = sigmoid(0.6487213) = 0.6567222
    # token 1: A = -1, tau = 1.05, r = e^-0.2 = 0.8187308, s = sigmoid(1.05 * -0.1812692)
    #                                                       = sigmoid(-0.1903327) = 0.4525600
    lp, olp, adv, mask = _inputs([[0.5, -0.2, 0.0]], [[1.0, -1.0, 4.0]], [[1, 1, 0]])
    out = LOSSES.get("sapo")(lp, olp, adv, mask)
    # -A (4 / tau) s: -4 * 0.6567222 = -2.6268890; (4 / 1.05) * 0.4525600 = 1.7240379
    close(out.per_token_loss, [[-2.6268890, 1.7240379, 0.0]])
    # gate df/dr = 4 s (1 - s): 0.9017526 and 0.9909978 -> mean 0.9463752
    close(out.metrics["gate_weight"], 0.9463752)
    out.per_token_loss.sum().backward()
    # d/dlp = -A * 4 s (1 - s) * r: -0.9017526 * 1.6487213 = -1.4867386; 0.9909978 * 0.8187308
    close(lp.grad, [[-1.4867386, 0.8113603, 0.0]])


def test_sapo_on_policy_is_reinforce_and_gate_decays():
    lp, olp, adv, mask = _inputs([[0.0, 0.0]], [[0.7, -1.3]], [[1, 1]])
    out = LOSSES.get("sapo")(lp, olp, adv, mask)
    close(out.metrics["gate_weight"], 1.0)
    out.per_token_loss.sum().backward()
    close(lp.grad, [[-0.7, 1.3]])
    # a larger tau damps a far-off-policy token harder: gate weight falls with tau
    gates = [LOSSES.get("sapo")(*_inputs([[1.0]], [[1.0]], [[1]]), tau_pos=tau)
             .metrics["gate_weight"] for tau in (0.5, 1.0, 2.0)]
    assert gates[0] > gates[1] > gates[2]


# ---------------------------------------------------------------------------------------------
# GMPO
# ---------------------------------------------------------------------------------------------
def test_gmpo_geometric_mean_with_pessimistic_token_clip():
    # row 0, A = +2: log-ratios 0.5, 0.1, -0.3 -> upper clip 0.4 on the first only
    #        log s = (0.4 + 0.1 - 0.3) / 3 = 0.0666667, s = 1.0689391
    # row 1, A = -1: log-ratios -0.6, 0.5 (+ padding) -> lower clip -0.4 on the first only
    #        (0.5 is not clipped: for A < 0 the pessimistic side is the larger ratio)
    #        log s = (-0.4 + 0.5) / 2 = 0.05, s = 1.0512711
    lp, olp, adv, mask = _inputs([[0.5, 0.1, -0.3], [-0.6, 0.5, 8.0]],
                                 [[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]],
                                 [[1, 1, 1], [1, 1, 0]])
    out = LOSSES.get("gmpo")(lp, olp, adv, mask)
    # every token carries -A s_i
    close(out.per_token_loss, [[-2.1378782] * 3, [1.0512711, 1.0512711, 0.0]])
    close(out.metrics["clip_frac"], 2 / 5)
    close(out.metrics["ratio_mean"], (3 * 1.0689391 + 2 * 1.0512711) / 5)
    # seq-mean-token-mean gives the paper's per-sequence objective mean_i(-A_i s_i)
    loss = aggregate_loss(out.per_token_loss, mask, "seq-mean-token-mean")
    close(loss, (-2.1378782 + 1.0512711) / 2)
    loss.backward()
    # d/dlp_t = -A s / |y| / 2 sequences on unclipped tokens, 0 on clipped ones:
    # row 0: -2 * 1.0689391 / 3 / 2 = -0.3563130; row 1: 1.0512711 / 2 / 2 = 0.2628178
    close(lp.grad, [[0.0, -0.3563130, -0.3563130], [0.0, 0.2628178, 0.0]])


def test_gmpo_wider_clip_and_zero_advantage():
    lp, olp, adv, mask = _inputs([[0.5, -0.5]], [[0.0, 0.0]], [[1, 1]])
    out = LOSSES.get("gmpo")(lp, olp, adv, mask, clip_low=1.0, clip_high=1.0)
    close(out.per_token_loss, [[0.0, 0.0]])          # A = 0: no loss, no gradient
    close(out.metrics["ratio_mean"], 1.0)            # log s = (0.5 - 0.5) / 2 = 0
    close(out.metrics["clip_frac"], 0.0)


@pytest.mark.parametrize("name,options", [
    ("cispo", {"clip_high": -0.1}), ("sapo", {"tau_neg": 0.0}), ("gmpo", {"clip_low": 0.0}),
])
def test_bad_options_name_the_option(name, options):
    lp, olp, adv, mask = _inputs([[0.0]], [[1.0]], [[1]])
    with pytest.raises(ValueError, match=next(iter(options)).split("_")[0]):
        LOSSES.get(name)(lp, olp, adv, mask, **options)


@pytest.mark.parametrize("name,metric", [("cispo", "is_clip_frac"), ("sapo", "gate_weight"),
                                         ("gmpo", "clip_frac")])
def test_trainer_runs_each_loss_by_name(tmp_path, name, metric):
    """Selected by name in the config, trained for two steps with two updates per batch (so the
    second update is off-policy), and composed with the IcePop sequence mask."""
    import math

    from pivotal.config import load_config
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer
    cfg = load_config(None, [
        "model.name=tiny-random", f"train.output_dir={tmp_path}", "train.steps=2",
        "train.eval_before_after=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "train.tensorboard=false", f"algo.loss={name}",
        "optim.mini_batches=2", "algo.rollout_correction.mode=mask",
        "algo.rollout_correction.level=sequence", "algo.rollout_correction.low=0.5",
        "algo.rollout_correction.high=5"])
    Trainer(cfg, progress=False).train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert metric in row and row["rc_seq_frac"] == 0.0  # same model samples: nothing masked
