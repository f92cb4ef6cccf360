"""Per-token log-probabilities and entropies of a causal LM on (prompt, response) pairs.

Where the work goes, and what we skip: logits exist only for real response tokens (never for the
prompt or padding), each distinct prompt is run once per micro-batch (`share_prompt`), or a
group's responses are packed after one copy of its prompt (`pack`, `pivotal.packing`), and padding
columns that every row shares are trimmed before the forward pass (`trim_padding`).
"""

from __future__ import annotations

import warnings

import torch

from .batch import RolloutBatch
from .chunked_logsoftmax import chunked_logprobs
from .kv_cache import returned_cache, with_cache
from .packing import gather_states, pack_responses, packing_saves_work, usable_for


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax.

    logits: (..., V) float; token_ids: (...) long -> (...) float32.
    """
    return logprobs_and_entropy(logits, token_ids, with_entropy=False)[0]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) per position: (..., V) -> (...)."""
    return _entropy(logits.float())


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = log Z - sum_v p_v * l_v on the logits l shifted by their row max.

    Entropy does not change with a shift of the logits, but in float32 the two terms of
    log Z - E_p[logit] are each of the size of the logits and cancel: on logits offset by 100 the
    unshifted form loses up to ~5e-3 nats. Shifted by the row max (and with Z summed from the
    shifted exponentials, not taken from the unshifted log Z) both terms are O(log V) and the error
    stays below 1e-5 (tests/test_objective.py). The max carries no gradient (the entropy's gradient
    through a shift is exactly 0).
    """
    shifted = logits - logits.detach().amax(dim=-1, keepdim=True)
    exp = torch.exp(shifted)
    z = exp.sum(dim=-1)
    return torch.log(z) - torch.linalg.vecdot(exp, shifted) / z


def logprobs_and_entropy(logits: torch.Tensor, token_ids: torch.Tensor, with_entropy: bool = True,
                         entropy_grad: bool = False, scale: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chosen-token log-probs and (optionally) entropies of softmax(scale * logits).

    logits: (..., V); token_ids: (...). The entropy carries a gradient only with `entropy_grad`
    (an entropy bonus); as a metric it is computed without building a graph over (..., V). Without
    that gradient both come from one chunked pass (`pivotal.chunked_logsoftmax`, equal to the
    whole-tensor form to float32 rounding, and far less memory traffic).
    """
    if not entropy_grad:
        logp, entropy = chunked_logprobs(logits.reshape(-1, logits.shape[-1]),
                                         token_ids.reshape(-1), scale, with_entropy)
        return (logp.view(token_ids.shape),
                entropy.view(token_ids.shape) if entropy is not None else None)
    logits = logits.float() * scale if scale != 1.0 else logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    picked = torch.gather(logits, -1, token_ids.unsqueeze(-1)).squeeze(-1)
    entropy = _entropy(logits) if with_entropy else None
    return picked - log_z, entropy


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
    width = batch.response_ids.shape[1]
    for name in ("response_ids", "response_mask", "old_logprobs", "advantages", "token_weights",
                 "ref_logprobs", "sampler_logprobs", "divergence"):
        value = getattr(view, name)
        if value is not None:
            setattr(view, name, value[:, :resp_len])
    for key, value in view.extras.items():  # per-token extras (B, T) follow the responses
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == width:
            view.extras[key] = value[:, :resp_len]
    return view


# Model families whose logits are exactly lm_head(final hidden state): for these the LM head runs
# only on real response tokens. Others (logit soft-capping, logit scaling) take the full path.
_PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2"}


def has_plain_head(model) -> bool:
    return getattr(model.config, "model_type", None) in _PLAIN_HEAD_MODELS


def _causal_lm_call(model, want_hidden: bool, cache=None, **inputs):
    """(hidden states or logits of the last positions, cache) from one forward pass."""
    target = getattr(model, model.base_model_prefix) if want_hidden else model
    out = target(**inputs, **(with_cache(target, cache) if cache is not None else {}))
    return (out.last_hidden_state if want_hidden else out.logits), returned_cache(out)


def response_states(model, batch: RolloutBatch, share_prompt: bool,
                     want_hidden: bool, pack: bool = False) -> torch.Tensor:
    """(B, T, H) hidden states (or (B, T, V) logits) at the positions predicting each response token.

    pack: the packed layout (`pivotal.packing`: a group's responses in one row after one copy of
    their prompt, no padding), where the model reads it exactly and it costs fewer FLOPs than
    the padded rows; else the layouts below.

    share_prompt: run each distinct prompt (rows with equal `group_ids`) once and let its rows read
    its keys/values. The gradient reaching the prompt is summed over those rows by autograd
    through the row index, so values and gradients equal the plain path's; with short responses
    the prompt dominates the tokens, so this removes most of the training compute.
    """
    T = batch.response_ids.shape[1]
    if pack:
        layout = pack_responses(batch)
        readable = usable_for(model, layout)
        if readable and packing_saves_work(model, batch, layout):
            dtype = next(model.parameters()).dtype
            states, _ = _causal_lm_call(model, want_hidden, input_ids=layout.input_ids,
                                        attention_mask=layout.attention_mask(model, dtype),
                                        position_ids=layout.position_ids, use_cache=False)
            return gather_states(states, layout)
    if pack and not readable:
        attention = getattr(model.config, "_attn_implementation", None)
        warnings.warn(f"optim.pack_responses: {model.config.model_type} with attention "
                      f"'{attention}' cannot read packed rows (needs sdpa or eager, and no "
                      "sliding window shorter than the sequences); using padded rows",
                      stacklevel=2)
    if not share_prompt:
        attention = batch.attention_mask
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        states, _ = _causal_lm_call(model, want_hidden, input_ids=batch.input_ids,
                                    attention_mask=attention, position_ids=positions,
                                    use_cache=False, **({} if want_hidden else
                                                        {"logits_to_keep": T + 1}))
        return states[:, -(T + 1):-1, :]  # position P-1+t predicts response token t

    groups, inverse = torch.unique(batch.group_ids, return_inverse=True)
    rows = torch.arange(batch.size, device=inverse.device)
    first_row = torch.full((len(groups),), batch.size, dtype=torch.long, device=inverse.device)
    first_row = first_row.scatter_reduce(0, inverse, rows, reduce="amin")
    prompt_ids, prompt_mask = batch.prompt_ids[first_row], batch.prompt_mask[first_row]
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    prompt_states, cache = _causal_lm_call(
        model, want_hidden, input_ids=prompt_ids, attention_mask=prompt_mask,
        position_ids=positions, use_cache=True, **({} if want_hidden else {"logits_to_keep": 1}))
    first = prompt_states[:, -1:, :][inverse]  # predicts response token 0
    if T == 1:
        return first
    cache.batch_select_indices(inverse)  # each row reads its prompt's keys/values
    attention = torch.cat([prompt_mask[inverse], batch.response_mask.to(prompt_mask.dtype)], dim=1)
    response_positions = positions[:, -1:][inverse] + torch.arange(1, T, device=positions.device)
    rest, _ = _causal_lm_call(model, want_hidden, input_ids=batch.response_ids[:, :-1],
                              attention_mask=attention[:, :-1], position_ids=response_positions,
                              cache=cache, use_cache=True)
    return torch.cat([first, rest], dim=1)


def response_logits(model, batch: RolloutBatch, temperature: float = 1.0,
                    share_prompt: bool = False, pack: bool = False) -> torch.Tensor:
    """Logits that predict each response token, divided by the temperature: (B, T, V)."""
    if has_plain_head(model):
        logits = model.get_output_embeddings()(response_states(model, batch, share_prompt, True,
                                                               pack))
    else:
        logits = response_states(model, batch, share_prompt, False, pack)
    return logits / temperature if temperature and temperature != 1.0 else logits


def policy_logprobs(model, batch: RolloutBatch, temperature: float = 1.0,
                    with_entropy: bool = False, entropy_grad: bool = False,
                    share_prompt: bool = True, pack: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, T), entropy (B, T) or None) of the batch's responses under `model`.

    Only positions with `response_mask` = 1 are computed (0 elsewhere); for plain-head models the
    (N, V) logits exist only for those N tokens, so right-padding costs no LM-head work and no
    log-softmax memory. The entropy carries a gradient only with `entropy_grad` (an entropy bonus).
    """
    if has_plain_head(model):
        states = response_states(model, batch, share_prompt, True, pack)
        return logprobs_from_states(model, states, batch, temperature, with_entropy, entropy_grad)
    logits = response_states(model, batch, share_prompt, False, pack)[batch.response_mask.bool()]
    return _scatter_logprobs(logits, batch, temperature, with_entropy, entropy_grad)


def policy_token_stats(model, batch: RolloutBatch, temperature: float = 1.0,
                       share_prompt: bool = True, pack: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (B, T), sum_v pi(v)^2 (B, T)) of the batch's responses under `model`, from one
    pass: the log-probs exactly as `policy_logprobs` computes them, and per position the sum of
    the squared probabilities of the temperature-scaled distribution, exp(logsumexp(2 z) -
    2 logsumexp(z)) (the optimal token baseline's energy, `pivotal.algos.otb`). 0 on padding."""
    mask = batch.response_mask.bool()
    if has_plain_head(model):
        logits = model.get_output_embeddings()(response_states(model, batch, share_prompt, True, pack)[mask])
    else:
        logits = response_states(model, batch, share_prompt, False, pack)[mask]
    logp, _ = _scatter_logprobs(logits, batch, temperature, False, False)
    z = (logits / temperature if temperature and temperature != 1.0 else logits).float()
    flat = torch.exp(torch.logsumexp(2.0 * z, dim=-1) - 2.0 * torch.logsumexp(z, dim=-1))
    return logp, flat.new_zeros(mask.shape).masked_scatter(mask, flat)


def response_hidden_states(model, batch: RolloutBatch, share_prompt: bool = True,
                           pack: bool = False) -> torch.Tensor:
    """(B, T, H) trunk states at the positions predicting each response token (plain-head models:
    the LM head is a linear map of them), for callers that add their own heads (`pivotal.auxiliary.occ`)."""
    if not has_plain_head(model):
        raise ValueError(f"model type '{model.config.model_type}' has no plain LM head over its "
                         f"hidden states; known: {', '.join(sorted(_PLAIN_HEAD_MODELS))}")
    return response_states(model, batch, share_prompt, True, pack)


def logprobs_from_states(model, states: torch.Tensor, batch: RolloutBatch, temperature: float = 1.0,
                         with_entropy: bool = False, entropy_grad: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`policy_logprobs` from the states of `response_hidden_states`: the LM head on real tokens."""
    logits = model.get_output_embeddings()(states[batch.response_mask.bool()])  # (N, V)
    return _scatter_logprobs(logits, batch, temperature, with_entropy, entropy_grad)


def _scatter_logprobs(logits: torch.Tensor, batch: RolloutBatch, temperature: float,
                      with_entropy: bool, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, V) logits of the masked response tokens -> (B, T) log-probs and entropies."""
    mask = batch.response_mask.bool()
    flat_logp, flat_entropy = logprobs_and_entropy(
        logits, batch.response_ids[mask], with_entropy, entropy_grad and torch.is_grad_enabled(),
        scale=1.0 / temperature if temperature and temperature != 1.0 else 1.0)
    logp = flat_logp.new_zeros(mask.shape).masked_scatter(mask, flat_logp)
    entropy = None
    if flat_entropy is not None:
        entropy = flat_entropy.new_zeros(mask.shape).masked_scatter(mask, flat_entropy)
    return logp, entropy


def micro_batch_count(batch_size: int, micro_batch_size: int) -> int:
    return -(-batch_size // micro_batch_size)


@torch.no_grad()
def per_token_no_grad(batch: RolloutBatch, compute, micro_batch_size: int,
                      device: torch.device, forwards: int = 0) -> dict[str, torch.Tensor]:
    """Run `compute(view) -> {name: (b, t)}` over micro-batches of `batch` on `device`, without
    gradient; reassemble (B, T) tensors on the CPU (zero past each micro-batch's trimmed width).
    `forwards`: run `compute` at least this often, the extra calls on the first row with their
    output dropped (a sharded model's all-gathers must pair up across ranks: `pivotal.frozen`)."""
    out: dict[str, torch.Tensor] = {}
    for start in range(0, batch.size, micro_batch_size):
        idx = torch.arange(start, min(start + micro_batch_size, batch.size))
        view = trim_padding(batch.select(idx)).to(device)
        for key, value in compute(view).items():
            out.setdefault(key, torch.zeros_like(batch.old_logprobs))
            out[key][idx, : value.shape[1]] = value.cpu()
    for _ in range(forwards - micro_batch_count(batch.size, micro_batch_size)):
        compute(trim_padding(batch.select(torch.arange(1))).to(device))
    return out


def logprobs_no_grad(model, batch: RolloutBatch, temperature: float, share_prompt: bool,
                     micro_batch_size: int, pack: bool = False, forwards: int = 0) -> torch.Tensor:
    """(B, T) log-probs of the batch's responses under `model`, micro-batched, without gradient
    (`forwards` as in `per_token_no_grad`)."""
    device = next(model.parameters()).device
    return per_token_no_grad(batch, lambda view: {"logp": policy_logprobs(
        model, view, temperature, share_prompt=share_prompt, pack=pack)[0]},
        micro_batch_size, device, forwards)["logp"]


@torch.no_grad()
def last_token_states(model, batch: RolloutBatch, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, H), (B, H)) float32 CPU: the model's final-layer state (after its last norm) at each
    row's last prompt token and at its last response token, micro-batched, without gradient.

    Read from `output_hidden_states`, whose last entry is the normed output, so any wrapper
    (peft, a plain causal LM) works; `logits_to_keep=1` keeps the LM head to one position."""
    device = next(model.parameters()).device
    prompt_states, response_states_ = [], []
    for start in range(0, batch.size, micro_batch_size):
        view = trim_padding(batch.select(torch.arange(start, min(start + micro_batch_size,
                                                                 batch.size)))).to(device)
        attention = view.attention_mask
        out = model(input_ids=view.input_ids, attention_mask=attention,
                    position_ids=(attention.cumsum(dim=1) - 1).clamp(min=0),
                    output_hidden_states=True, logits_to_keep=1, use_cache=False)
        states = out.hidden_states[-1]
        P = view.prompt_ids.shape[1]
        last = (P + view.response_lengths.long() - 1).clamp(min=P - 1)
        prompt_states.append(states[:, P - 1].float().cpu())
        response_states_.append(states[torch.arange(view.size, device=device), last].float().cpu())
    return torch.cat(prompt_states), torch.cat(response_states_)
