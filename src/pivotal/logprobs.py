"""Per-token log-probabilities and entropies of a causal LM on (prompt, response) pairs.

The policy's logits are computed only at response positions (the `logits_to_keep` slice), so the
prompt never costs a (P, V) logits tensor, and padding columns shared by every row are trimmed
before the forward pass.
"""

from __future__ import annotations

import torch

from .batch import RolloutBatch


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax.

    logits: (B, T, V) float; token_ids: (B, T) long -> (B, T) float32.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, token_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per position: (B, T, V) -> (B, T)."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - log_z)
    return (log_z.squeeze(-1) - (probs * logits).sum(-1))


def trim_padding(batch: RolloutBatch) -> RolloutBatch:
    """Drop prompt columns that are padding in every row and response columns past the longest response."""
    prompt_cols = batch.prompt_mask.any(dim=0).nonzero()
    first = int(prompt_cols[0]) if len(prompt_cols) else batch.prompt_mask.shape[1]
    resp_len = int(batch.response_mask.sum(dim=1).max().item()) if batch.size else 0
    resp_len = max(resp_len, 1)
    if first == 0 and resp_len == batch.response_ids.shape[1]:
        return batch
    view = batch.select(torch.arange(batch.size))
    view.prompt_ids = view.prompt_ids[:, first:]
    view.prompt_mask = view.prompt_mask[:, first:]
    for name in ("response_ids", "response_mask", "old_logprobs", "advantages", "token_weights",
                 "ref_logprobs"):
        value = getattr(view, name)
        if value is not None:
            setattr(view, name, value[:, :resp_len])
    return view


def response_logits(model, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predict each response token: (B, T, V), divided by the sampling temperature."""
    input_ids = batch.input_ids
    attention_mask = batch.attention_mask
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    T = batch.response_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1, :]  # position P-1+t predicts response token t
    if temperature and temperature != 1.0:
        logits = logits / temperature
    return logits


def policy_logprobs(model, batch: RolloutBatch, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T), entropy (B, T) or None) of the batch's responses under `model`.

    The batch should already be trimmed (see `trim_padding`); padding positions hold garbage that
    the caller masks with `batch.response_mask`.
    """
    logits = response_logits(model, batch, temperature)
    logp = token_logprobs(logits, batch.response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logp, entropy
