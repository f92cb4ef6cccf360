"""The algorithm core: pure tensor functions, each chosen by name from a registry, and the one
objective (`pivotal.algos.objective`) that assembles them into the loss.

Importing this package fills every registry.
"""

# Token-level methods register themselves on import (credit functions, advantages, losses).
from pivotal.algos import (  # noqa: E402,F401  (import order: after the registries)
    clip_rescue,
    dlogp,
    entropy_credit,
    otb,
    polarity,
    self_distill,
    token_credit,
)
from pivotal.algos.advantages import (
    ADVANTAGES,
    advantage_inputs,
    group_stats,
    register_advantage,
    trained_rows,
    trains_on,
)
from pivotal.algos.aggregation import AGGREGATIONS, aggregate_loss, register_aggregation
from pivotal.algos.credit import CREDITS, credit_requirements, register_credit, requires
from pivotal.algos.kl import KL_ESTIMATORS, kl_per_token, kl_reward_penalty, register_kl
from pivotal.algos.losses import LOSSES, LossOutput, masked_mean, register_loss
from pivotal.algos.objective import ObjectiveConfig, Totals, policy_objective
from pivotal.algos.shaping import dynamic_sampling_mask, overlong_penalty, truncation_mask

__all__ = [
    "ADVANTAGES", "register_advantage", "advantage_inputs", "group_stats", "trained_rows", "trains_on",
    "AGGREGATIONS", "register_aggregation", "aggregate_loss",
    "CREDITS", "register_credit", "requires", "credit_requirements",
    "KL_ESTIMATORS", "register_kl", "kl_per_token", "kl_reward_penalty",
    "LOSSES", "register_loss", "LossOutput", "masked_mean",
    "ObjectiveConfig", "Totals", "policy_objective",
    "overlong_penalty", "dynamic_sampling_mask", "truncation_mask",
]
