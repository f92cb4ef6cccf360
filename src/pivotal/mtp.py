"""Multi-token-prediction (MTP) heads attached to a policy, for joint MTP + RL training (OCC).

Head k (k = 1..K) reads the trunk's final hidden state at the position where the main head predicts
response token s, and predicts token s + k. Each head is one residual linear block, zero at
initialisation, followed by the policy's own output embedding: a fresh head is exactly the main
head's distribution at its position (the best guess a model without MTP training has), and it adds
only H^2 parameters (0.33M for SmolLM2-135M).
The heads are a separate module that the trainer owns, optimises and checkpoints (trainer_state):
the policy's state dict, its checkpoints' model.safetensors and the rollout engines never see them.
How their loss is weighted: `pivotal.algos.occ`.
"""

from __future__ import annotations

import torch
from torch import nn

from .logprobs import logprobs_and_entropy


class MTPBlock(nn.Module):
    """h -> h + W h with W zero-initialised: the identity at the start."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.proj(hidden)


class MTPHeads(nn.Module):
    """K MTP blocks; `heads[k - 1]` serves the token k positions past the main head's target."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.heads = nn.ModuleList(MTPBlock(hidden_size) for _ in range(num_heads))

    def __len__(self) -> int:
        return len(self.heads)


def mtp_logprobs(heads: MTPHeads, output_embeddings: nn.Module, states: torch.Tensor,
                 response_ids: torch.Tensor, response_mask: torch.Tensor,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's log-prob of the response tokens it can reach.

    states (B, T, H): the trunk's hidden state at the position predicting each response token
    (`pivotal.logprobs.response_states`); response_ids, response_mask (B, T).
    Returns head_logprobs (K, B, T) and head_mask (K, B, T): head k scores token t >= k from the
    state at t - k; other entries are 0. The LM head runs only on scored tokens.
    """
    B, T = response_ids.shape
    rows, masks = [], torch.zeros(len(heads), B, T, dtype=torch.bool, device=states.device)
    for k, head in enumerate(heads.heads, start=1):
        row = states.new_zeros(B, T, dtype=torch.float32)
        target_mask = response_mask[:, k:].bool()  # (B, T-k); empty when k >= T
        if target_mask.any():
            source = states[:, : T - k][target_mask]  # (N, H): the states k tokens before the targets
            logits = output_embeddings(head(source))
            if temperature and temperature != 1.0:
                logits = logits / temperature
            flat, _ = logprobs_and_entropy(logits, response_ids[:, k:][target_mask], with_entropy=False)
            row = torch.cat([row[:, :k], row[:, k:].masked_scatter(target_mask, flat)], dim=1)
            masks[k - 1, :, k:] = target_mask
        rows.append(row)
    return torch.stack(rows), masks
