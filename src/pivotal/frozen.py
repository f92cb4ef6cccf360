"""Frozen models under FSDP2: the reference and the shift monitor's initial copy, sharded per layer.

Under `dist.strategy=fsdp` the frozen reference (KL, OWPO, divergence, Δlog p) and the shift
monitor's own copy of the initial policy are sharded as the policy is (`fully_shard` per decoder
layer and once around the whole), so a rank holds 1/N of each instead of a whole copy. A forward
all-gathers one layer at a time and frees it after (`reshard_after_forward=True`, also for the
root: it has no backward to keep its weights for). Under DDP and in one process they stay whole
and plain. Both are loaded whole first and then sharded, as the policy is.

Two rules follow from the all-gathers, and the callers keep them:
- every use runs inside the wrapper's forward, `frozen(lambda model: ...)` (`run_frozen`), where
  FSDP2 gathers the root's weights (embeddings, final norm, LM head): the log-prob code calls the
  trunk and the LM head separately, which would bypass the hooks of `model.forward`;
- every rank runs the same number of forwards, so the collectives pair up: a rank with fewer
  micro-batches repeats one (`pivotal.logprobs.per_token_no_grad`'s `forwards`).
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import decoder_layers, fsdp_options


class ShardedFrozen(nn.Module):
    """A frozen causal LM sharded with FSDP2; `frozen(fn)` runs `fn(model)` with its weights
    gathered as needed. `frozen.model` is the causal LM itself (its parameters are DTensors)."""

    def __init__(self, model: nn.Module, cpu_offload: bool = False, mixed_precision: str = "none"):
        super().__init__()
        from torch.distributed.fsdp import fully_shard

        self.model = model
        options = {**fsdp_options(cpu_offload, mixed_precision), "reshard_after_forward": True}
        for layer in decoder_layers(model):
            fully_shard(layer, **options)
        fully_shard(self, **options)

    def forward(self, fn):
        return fn(self.model)


def run_frozen(frozen, fn):
    """fn(model) for a frozen model, sharded (`ShardedFrozen`) or plain."""
    return frozen(fn) if isinstance(frozen, ShardedFrozen) else fn(frozen)


def frozen_module(frozen) -> nn.Module:
    """The causal LM inside a frozen model, sharded or plain."""
    return frozen.model if isinstance(frozen, ShardedFrozen) else frozen


def frozen_state_dict(frozen) -> dict[str, torch.Tensor]:
    """Its weights as one whole CPU state dict (keys as the plain model's). Sharded: every rank
    must call this (an all-gather per tensor); rank 0 gets the values, the others an empty dict."""
    if not isinstance(frozen, ShardedFrozen):
        return {k: v.detach().cpu() for k, v in frozen.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(frozen.model, options=StateDictOptions(full_state_dict=True,
                                                                       cpu_offload=True))


def load_frozen_state_dict(frozen, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (`frozen_state_dict`'s) in place; sharded, each rank keeps its shard."""
    if not isinstance(frozen, ShardedFrozen):
        frozen.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(frozen.model, state, options=StateDictOptions(full_state_dict=True))
