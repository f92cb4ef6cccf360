"""The engine interface, the sampling parameters, and what every engine shares: prompt encoding,
nucleus filtering, the categorical draw, and packing sampled tokens into a RolloutBatch.

Log-probs are of the temperature-scaled full distribution, before top-k/top-p truncation, which is
what the trainer recomputes (the convention of verl and TRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pivotal.batch import RolloutBatch


@dataclass
class SamplingParams:
    """How responses are sampled. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None) -> tuple[RolloutBatch, list[str]]:
        """Sample `num_samples` responses per prompt.

        Returns the batch (rows grouped by prompt: row i answers prompt i // num_samples, and
        group_ids says so) and the decoded response texts.
        """
        ...

    def sync_weights(self, model) -> None:
        """Take the trainer's current weights (a no-op for engines that share the model)."""
        ...


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k and the top-p nucleus with -inf. (N, V) -> (N, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from the categorical distributions `probs` (N, V), rows summing to ~1:
    (N,) long. Zero-probability tokens are never drawn.

    Inverse-CDF sampling: one uniform per row, located in the row's cumulative sum (float64, so
    the cumulative rounding stays below 1e-12). It draws from the same distribution as
    `torch.multinomial(probs, 1)`, whose CPU kernel draws an exponential for every one of the V
    entries (the race of Exp(1)/p): 27 ms per token step for 32 rows of a 49,152-token
    vocabulary against 1-2 ms here; it was a fifth of the transformers engine's rollout
    (docs/results.md, "Decoding").
    """
    cumulative = probs.double().cumsum(dim=-1)
    total = cumulative[:, -1:].contiguous()
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=probs.device)
    # first index whose cumulative mass exceeds u * total: a zero-probability token repeats its
    # predecessor's cumulative mass and so is never the first
    chosen = torch.searchsorted(cumulative, u * total, right=True)
    # u * total can round up to total: then take the last token with mass (first to reach it)
    return torch.minimum(chosen, torch.searchsorted(cumulative, total)).squeeze(-1)


def assemble_batch(tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   tokens: list[list[int]], logps: list[list[float]], num_samples: int,
                   eos_ids: list[int]) -> tuple[RolloutBatch, list[str]]:
    """Pack sampled responses into a RolloutBatch; shared by every engine.

    prompt_ids, prompt_mask: (P, Lp) left-padded prompts; tokens[i], logps[i]: the sampled token
    ids and their log-probs of row i, which answers prompt i // num_samples. A row is truncated
    when it does not end in an EOS token. Texts are decoded without the final EOS token.
    """
    B = prompt_ids.shape[0] * num_samples
    T = max(1, max((len(t) for t in tokens), default=1))
    response_ids = torch.full((B, T), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(B, T)
    old_logprobs = torch.zeros(B, T)
    truncated = torch.zeros(B, dtype=torch.bool)
    eos = set(eos_ids)
    for i, (tok, lp) in enumerate(zip(tokens, logps)):
        n = len(tok)
        response_ids[i, :n] = torch.tensor(tok, dtype=torch.long)
        response_mask[i, :n] = 1.0
        old_logprobs[i, :n] = torch.tensor(lp, dtype=torch.float32)
        truncated[i] = n == 0 or tok[-1] not in eos
    texts = tokenizer.batch_decode(
        [t[:-1] if (t and t[-1] in eos) else t for t in tokens], skip_special_tokens=True)
    batch = RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(num_samples, dim=0).cpu(),
        prompt_mask=prompt_mask.repeat_interleave(num_samples, dim=0).cpu(),
        response_ids=response_ids, response_mask=response_mask, old_logprobs=old_logprobs,
        group_ids=torch.arange(prompt_ids.shape[0]).repeat_interleave(num_samples),
        truncated=truncated)
    return batch, texts


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_ids, prompt_mask), (P, Lp) left-padded (the tokenizer pads left), on `device`."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def seeded_generator(device, seed: int | None) -> torch.Generator:
    """A generator on `device` seeded with `seed` (None: a fresh seed from torch's global RNG)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed() % (2**63))
    return generator
