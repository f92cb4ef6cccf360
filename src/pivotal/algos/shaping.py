"""Reward shaping and row filtering from DAPO (https://arxiv.org/abs/2503.14476)."""

from __future__ import annotations

import torch
from torch import Tensor

from pivotal.algos.advantages import group_agrees


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, added to the reward: (B,) -> (B,) float in [-factor, 0].

        penalty = min(-(len - (max_len - buffer)) / buffer * factor, 0)

    0 up to max_len - buffer, then falling linearly to -factor at max_len. Lengths past max_len
    (which generation should not produce) are clamped at -factor rather than growing further.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"buffer must be in (0, max_len={max_len}], got {buffer}")
    lengths = lengths.to(torch.float32) if not lengths.is_floating_point() else lengths
    exceed = lengths - (max_len - buffer)
    penalty = (-exceed / buffer * factor).clamp(max=0.0)
    return penalty.clamp(min=-abs(factor))


def dynamic_sampling_mask(scores: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling: (B,) bool, True for rows whose group's scores do not all agree.

    A group where every response got the same score has zero advantage under GRPO and only dilutes
    the batch, so it is dropped (and the trainer samples more prompts). Size-1 groups are dropped
    too. "Agree" is exact equality (max == min), not a float std test.
    """
    return ~group_agrees(scores, group_ids)


def truncation_mask(truncated: Tensor, response_mask: Tensor) -> Tensor:
    """Overlong filtering: response_mask (B, T) with the tokens of truncated responses (B,) zeroed.

    A response cut at max_new_tokens has no final answer, so its (negative) reward says nothing
    about its reasoning; masking it removes it from the loss instead of punishing it.
    """
    keep = (~truncated.bool()).to(response_mask.dtype)
    return response_mask * keep[:, None]
