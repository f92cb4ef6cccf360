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


def response_logits_shared_prompt(model, batch: RolloutBatch,
                                  temperature: float = 1.0) -> torch.Tensor:
    """Same result as `response_logits`, computing each distinct prompt only once.

    The G responses of a group share their prompt, so the prompt's forward pass (and its backward:
    the gradient reaching its keys and values is summed over the rows that attend to it, which is
    exactly what autograd does through the row-index below) is run once per distinct prompt, not
    once per row. With short responses the prompt dominates the tokens, so this is most of the
    training compute. Rows with equal `group_ids` must have equal prompts.
    (B, P+T) -> (B, T, V).
    """
    groups, inverse = torch.unique(batch.group_ids, return_inverse=True)
    first_row = torch.full((len(groups),), batch.size, dtype=torch.long, device=inverse.device)
    first_row = first_row.scatter_reduce(0, inverse, torch.arange(batch.size, device=inverse.device),
                                         reduce="amin")
    prompt_ids, prompt_mask = batch.prompt_ids[first_row], batch.prompt_mask[first_row]
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_select_indices(inverse)  # each row reads its prompt's keys/values
    first_logits = out.logits[:, -1, :][inverse]  # predicts response token 0
    T = batch.response_ids.shape[1]
    if T > 1:
        offsets = torch.arange(1, T + 1, device=positions.device)
        response_positions = positions[:, -1:][inverse] + offsets
        attention = torch.cat([prompt_mask[inverse],
                               batch.response_mask.to(prompt_mask.dtype)], dim=1)
        rest = model(input_ids=batch.response_ids, attention_mask=attention,
                     position_ids=response_positions, past_key_values=cache,
                     use_cache=True).logits[:, :-1, :]
        logits = torch.cat([first_logits[:, None, :], rest], dim=1)
    else:
        logits = first_logits[:, None, :]
    if temperature and temperature != 1.0:
        logits = logits / temperature
    return logits
