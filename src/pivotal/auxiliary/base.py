"""The auxiliary-loss interface and its registry.

A registry entry is a builder `build(cfg, model) -> AuxiliaryLoss | None`: it reads its own config
keys and returns None when it is switched off. The trainer calls every builder once at start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from pivotal.algos.objective import AuxiliaryTerm
from pivotal.batch import RolloutBatch
from pivotal.errors import ModelLoadError
from pivotal.registry import Registry

AUXILIARY_LOSSES: Registry = Registry("auxiliary loss")
register_auxiliary = AUXILIARY_LOSSES.register


class AuxiliaryLoss(nn.Module):
    """One auxiliary loss and the modules it trains.

    Per mini-batch the trainer calls `minibatch_statistics` once (before the micro-batches), then
    per micro-batch `term`, whose result goes to the objective. A loss that reads the trunk's
    hidden states sets `needs_hidden_states`; the trainer then computes the main log-probs from
    those same states, once. `checkpoint_key` names its state dict in the trainer state.
    """

    checkpoint_key: str = ""
    needs_hidden_states: bool = False

    def minibatch_statistics(self, run, micro_batches: list[RolloutBatch], n_real: int,
                             on_policy: bool) -> dict[str, Tensor]:
        """Statistics over the mini-batch's first `n_real` micro-batches (names end in _sum /
        _max, as credit statistics). `run(fn)` calls `fn(policy)` inside the trained wrapper's
        forward, where DDP and FSDP2 expect every use of a trained parameter (FSDP2 all-gathers
        there); a loss that runs the policy does so once per entry of `micro_batches` (every rank
        has the same number; a rank's extra entries repeat its last), so that the ranks'
        collectives pair up."""
        return {}

    def checkpoint_state(self) -> dict[str, Tensor]:
        """The tensors to keep in the trainer state (on the CPU)."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, Tensor] | None, checkpoint) -> None:
        """Restore `checkpoint_state()`; a checkpoint written without this loss raises."""
        if state is None:
            raise ModelLoadError(f"checkpoint {checkpoint} has no '{self.checkpoint_key}' state, "
                                 f"but this run trains the auxiliary loss that owns it")
        self.load_state_dict(state)

    def term(self, model, states: Tensor | None, micro: RolloutBatch, logprobs: Tensor,
             old_logprobs: Tensor, stats: dict[str, Tensor]) -> AuxiliaryTerm:
        raise NotImplementedError


def build_auxiliary_losses(cfg, model) -> list[AuxiliaryLoss]:
    """Every registered auxiliary loss the config switches on, on the policy's device and dtype."""
    param = next(model.parameters())
    out = []
    for name in AUXILIARY_LOSSES.names():
        build: Callable = AUXILIARY_LOSSES.get(name)
        loss = build(cfg, model)
        if loss is not None:
            out.append(loss.to(device=param.device, dtype=param.dtype))
    return out
