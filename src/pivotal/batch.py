"""The rollout batch: one object carries a training step's tensors from stage to stage.

Shapes: B = number of responses (prompts x group size), P = padded prompt length, T = padded
response length. Prompts are left-padded and responses right-padded, so `input_ids` is
`[pad.. prompt | response ..pad]` and the response always starts at column P.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

# batch.extras key of an optional (B,) weight on each row's advantages, set by a stage before the
# advantages (the active-label stage: 0 on prompts without a true label) and applied right after
# them (`pivotal.step_inputs`); weighted rows keep their place in the loss's denominators.
ADVANTAGE_WEIGHT_KEY = "advantage_weight"


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor          # (B, P) long, left-padded
    prompt_mask: torch.Tensor         # (B, P) long, 1 on real prompt tokens
    response_ids: torch.Tensor        # (B, T) long, right-padded
    response_mask: torch.Tensor       # (B, T) float, 1 on generated tokens (EOS included)
    old_logprobs: torch.Tensor        # (B, T) float, log pi_old of each sampled token (0 on padding)
    group_ids: torch.Tensor           # (B,) long, responses to the same prompt share an id
    truncated: torch.Tensor           # (B,) bool, hit max_new_tokens without EOS
    rewards: torch.Tensor | None = None        # (B,) float, total reward per response
    correct: torch.Tensor | None = None        # (B,) bool, verifier says correct
    advantages: torch.Tensor | None = None     # (B, T) float
    token_weights: torch.Tensor | None = None  # (B, T) float, per-token loss weights (default 1)
    ref_logprobs: torch.Tensor | None = None   # (B, T) float, the frozen reference's log-probs
    sampler_logprobs: torch.Tensor | None = None  # (B, T) float, the rollout engine's own log-probs
    divergence: torch.Tensor | None = None     # (B, T) float, per-token divergence vs the reference
    extras: dict[str, Any] = field(default_factory=dict)  # per-row tensors or lists added by stages

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P+T) prompt and response side by side."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P+T) 1 on real tokens."""
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of generated tokens."""
        return self.response_mask.sum(dim=1)

    def select(self, index: torch.Tensor | list[int]) -> RolloutBatch:
        """A new batch holding the rows in `index` (a row subset for a mini-batch or a filter)."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extras":
                out[f.name] = {k: _select_rows(v, index) for k, v in value.items()}
            else:
                out[f.name] = None if value is None else value[index.to(value.device)]
        return RolloutBatch(**out)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device)
        moved["extras"] = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                           for k, v in self.extras.items()}
        return replace(self, **moved)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
        """Stack batches row-wise, re-padding prompts (left) and responses (right) to a common width."""
        if len(batches) == 1:
            return batches[0]
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.response_ids.shape[1] for b in batches)
        out: dict[str, Any] = {}
        for f in fields(RolloutBatch):
            values = [getattr(b, f.name) for b in batches]
            if f.name == "extras":
                keys = set().union(*(v.keys() for v in values))
                out["extras"] = {k: _concat_rows([v[k] for v in values]) for k in keys}
            elif values[0] is None:
                out[f.name] = None
            elif f.name in ("prompt_ids", "prompt_mask"):
                fill = pad_token_id if f.name == "prompt_ids" else 0
                out[f.name] = torch.cat([_pad_left(v, P, fill) for v in values])
            elif values[0].dim() == 2:
                fill = pad_token_id if f.name == "response_ids" else 0
                out[f.name] = torch.cat([_pad_right(v, T, fill) for v in values])
            else:
                out[f.name] = torch.cat(values)
        return RolloutBatch(**out)


def _pad_left(x: torch.Tensor, width: int, fill) -> torch.Tensor:
    pad = width - x.shape[1]
    return x if pad == 0 else torch.cat([x.new_full((x.shape[0], pad), fill), x], dim=1)


def _pad_right(x: torch.Tensor, width: int, fill) -> torch.Tensor:
    pad = width - x.shape[1]
    return x if pad == 0 else torch.cat([x, x.new_full((x.shape[0], pad), fill)], dim=1)


def _select_rows(value, index: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    return [value[i] for i in index.tolist()]


def _concat_rows(values: list):
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return [x for v in values for x in v]
