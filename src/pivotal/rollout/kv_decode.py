"""The KV-cache decode loop every transformers-side decoder uses.

One loop serves the rollout engine (one model, sampling) and the analysis decoders (two models in
lockstep, a rule choosing each token, `pivotal.analysis.decoding`). Why a loop of our own instead
of `model.generate`:
  * each prompt is prefilled once and its KV cache copied G times, instead of prefilling G copies,
    into buffers with room for the response (`pivotal.kv_cache.PreallocatedLayer`): a token step
    writes one position instead of concatenating the whole cache;
  * rows that hit EOS are dropped from the batch and the KV cache, so finished sequences stop
    costing compute (`generate` keeps computing them until the longest row ends);
  * the per-token log-probs of the chosen tokens come out of the same forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pivotal.kv_cache import preallocate, returned_cache, with_cache
from pivotal.rollout.base import SamplingParams, draw_categorical, filter_logits


@dataclass
class StepChoice:
    """What a rule decided for the N live rows at one step."""

    tokens: Tensor                 # (N,) long, the emitted tokens
    logprobs: Tensor               # (N,) float, log-prob of each emitted token under what emitted it
    fired: Tensor | None = None    # (N,) bool, the rule replaced / extrapolated this position
    changed: Tensor | None = None  # (N,) bool, the emitted token differs from the decoder's proposal


# rule(next-token logits of each model [(N, V), ...], params, generator) -> StepChoice
StepRule = Callable[[list[Tensor], SamplingParams, torch.Generator], StepChoice]


def sample_step(logits: list[Tensor], params: SamplingParams, generator: torch.Generator) -> StepChoice:
    """One model's token: sampled at params.temperature with top-k / top-p (greedy at 0), with its
    log-prob under the temperature-scaled full distribution."""
    scaled = logits[0].float()
    if params.temperature > 0:
        scaled = scaled / params.temperature
    log_probs = torch.log_softmax(scaled, dim=-1)
    if params.temperature > 0:
        probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)
        chosen = draw_categorical(probs, generator)
    else:
        chosen = scaled.argmax(dim=-1)
    return StepChoice(tokens=chosen, logprobs=log_probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1))


def _prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, num_samples: int, new_tokens: int):
    """(next-token logits (B*G, V), KV cache for B*G rows): one prefill per prompt, copied G times
    into a cache with room for `new_tokens` more positions."""
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    preallocate(cache, num_samples, new_tokens)
    return out.logits[:, -1, :].repeat_interleave(num_samples, dim=0), cache


@torch.no_grad()
def kv_decode(models: list, prompt_ids: Tensor, prompt_mask: Tensor, num_samples: int,
              params: SamplingParams, eos_ids: Tensor, rule: StepRule, generator: torch.Generator):
    """Decode `models` together on the same growing prefix; `rule` picks each token.

    prompt_ids, prompt_mask: (B, P) left-padded. Returns per-row lists (B * num_samples rows,
    grouped by prompt) of tokens, log-probs, fired flags and changed flags (the last two empty
    lists when the rule does not report them). A row stops at an EOS token (kept) or after
    params.max_new_tokens; finished rows leave every KV cache.
    """
    device = prompt_ids.device
    eos_ids = eos_ids.to(device)
    prefilled = [_prefill(m, prompt_ids, prompt_mask, num_samples, params.max_new_tokens)
                 for m in models]
    logits, caches = [p[0] for p in prefilled], [p[1] for p in prefilled]
    if len({x.shape[-1] for x in logits}) > 1:
        raise ValueError(f"the models must share a vocabulary: their LM heads give "
                         f"{' and '.join(str(x.shape[-1]) for x in logits)} logits")
    attn = prompt_mask.repeat_interleave(num_samples, dim=0)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    next_pos = positions[:, -1:].repeat_interleave(num_samples, dim=0) + 1

    B = attn.shape[0]
    tokens: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    fired: list[list[bool]] = [[] for _ in range(B)]
    changed: list[list[bool]] = [[] for _ in range(B)]
    alive = torch.arange(B, device=device)  # original row index of each live row
    reports_flags = False
    for step in range(params.max_new_tokens):
        choice = rule(logits, params, generator)
        chosen = choice.tokens
        rows = alive.tolist()
        for row, tok, lp in zip(rows, chosen.tolist(), choice.logprobs.tolist()):
            tokens[row].append(tok)
            logps[row].append(lp)
        if choice.fired is not None:
            reports_flags = True
            for row, f, c in zip(rows, choice.fired.tolist(), choice.changed.tolist()):
                fired[row].append(bool(f))
                changed[row].append(bool(c))
        if step == params.max_new_tokens - 1:
            break
        finished = torch.isin(chosen, eos_ids)
        if finished.any():
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            alive, chosen = alive[keep], chosen[keep]
            attn, next_pos = attn[keep], next_pos[keep]
            for cache in caches:
                cache.batch_select_indices(keep)
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        outs = [m(input_ids=chosen.unsqueeze(-1), attention_mask=attn, position_ids=next_pos,
                  use_cache=True, **with_cache(m, cache)) for m, cache in zip(models, caches)]
        caches = [returned_cache(out) for out in outs]
        logits = [out.logits[:, -1, :] for out in outs]
        next_pos = next_pos + 1
    if not reports_flags:
        fired, changed = [], []
    return tokens, logps, fired, changed
