"""Δlog p reweighting: every released weight shape and the advantage-sign mask, by hand."""

import math

import pytest
import torch

from pivotal.algos import CREDITS
from pivotal.algos.dlogp import SEQUENCE_WEIGHT_KEY, ppl_norm_weights
from pivotal.config import ConfigError, load_config
from test_token_credit import D, close, make_batch

# p_old = 0.25, 1.0, 0.01 and a padding token with a garbage log-prob
OLD = torch.tensor([[math.log(0.25), 0.0, math.log(0.01), 80.0]], dtype=D)
LOG_PPL = (math.log(4.0) + math.log(100.0)) / 3     # -mean log p over the three tokens


@pytest.mark.parametrize("method, expected", [
    ("reshape_reversed", [1.15, 1.0, 1.198]),                  # 1 + c - c p
    ("reshape", [0.85, 1.0, 0.802]),                           # c p + 1 - c
    ("normalize", [1 / 0.95, 5.0, 1 / 1.19]),                  # 1 / (1 + c - p)
    ("middle", [0.3875, 0.2, 0.2099]),                         # c + (1 - p) p
    ("ppl", [1 - 0.2 * LOG_PPL] * 3),                          # 1 - c log PPL, per response
])
def test_each_weight_shape_by_hand(method, expected):
    batch = make_batch(OLD, [[1, 1, 1, 0]], torch.ones(1, 4, dtype=D))
    w = CREDITS.get("dlogp")(batch, None, c=0.2, method=method)
    close(w, [expected + [1.0]])                                # padding stays 1


def _groups():
    # one-token responses with log PPL 1, 2, 3 in group 0 and 7 alone in group 1
    old = torch.tensor([[-1.0, 9.0], [-2.0, 9.0], [-3.0, 9.0], [-7.0, 9.0]], dtype=D)
    adv = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=D)
    batch = make_batch(old, [[1, 0]] * 4, adv)
    batch.group_ids = torch.tensor([0, 0, 0, 1])
    return batch


def test_ppl_norm_standardises_within_the_group():
    # group 0: mean 2, population std sqrt(2/3); z = -1.2247, 0, 1.2247; w = 1 - 0.2 z.
    # group 1 has one response: std 0, z = 0, w = 1
    batch = _groups()
    z = 1 / (math.sqrt(2 / 3) + 1e-6)
    w = CREDITS.get("dlogp")(batch, None, c=0.2, method="ppl-norm")
    close(w[:, 0], [1 + 0.2 * z, 1.0, 1 - 0.2 * z, 1.0], tol=1e-7)
    clamped = CREDITS.get("dlogp")(batch, None, c=0.2, method="ppl-norm-clamp")
    close(clamped[:, 0], [1.2, 1.0, 0.8, 1.0])
    assert ppl_norm_weights(batch, c=0.2, method="ppl") == {}


def test_ppl_norm_on_part_of_a_group_reads_the_rollout_statistics():
    # the update calls the credit per micro-batch: one row alone has no group, so the weights come
    # from the rollout batch (`rollout_statistics`, stored in batch.extras) and follow the rows
    batch = _groups()
    whole = CREDITS.get("dlogp")(batch, None, c=0.2, method="ppl-norm")
    batch.extras.update(ppl_norm_weights(batch, c=0.2, method="ppl-norm"))
    assert SEQUENCE_WEIGHT_KEY in batch.extras
    for row in range(batch.size):
        alone = CREDITS.get("dlogp")(batch.select([row]), None, c=0.2, method="ppl-norm")
        torch.testing.assert_close(alone, whole[row:row + 1])


def test_the_advantage_sign_mask_leaves_the_other_sign_at_one():
    batch = _groups()
    full = CREDITS.get("dlogp")(batch, None, c=0.2)[:, 0]
    pos = CREDITS.get("dlogp")(batch, None, c=0.2, adv_mask="positive")[:, 0]
    neg = CREDITS.get("dlogp")(batch, None, c=0.2, adv_mask="negative")[:, 0]
    close(pos, [full[0], 1.0, full[2], 1.0])
    close(neg, [1.0, full[1], 1.0, full[3]])


def test_bad_options_are_named_at_config_time():
    with pytest.raises(ConfigError, match="algo.credit_options: dlogp: method"):
        load_config(None, ["algo.credit=dlogp", "algo.credit_options={method: shape}"])
    with pytest.raises(ConfigError, match="algo.credit_options: dlogp: adv_mask"):
        load_config(None, ["algo.credit=dlogp", "algo.credit_options={adv_mask: both}"])
