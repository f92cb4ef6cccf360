"""Rollout engines: sample G responses per prompt and record the sampling policy's log-probs.

The interface is deliberately narrow (`generate` + `sync_weights`), so the vLLM engine
(`pivotal.rollout_vllm`) stands beside the transformers one and both fill the same batch fields.
`TransformersEngine` runs its own decode loop instead of `model.generate` for three reasons:
  * each prompt is prefilled once and its KV cache copied G times, instead of prefilling G copies;
  * rows that hit EOS are dropped from the batch and the KV cache, so finished sequences stop
    costing compute (`generate` keeps computing them until the longest row ends);
  * the per-token log-probs of the sampled tokens come out of the same forward pass.
Log-probs are of the temperature-scaled full distribution, before top-k/top-p truncation, which is
what the trainer recomputes (the convention of verl and TRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .batch import RolloutBatch
from .models import eos_token_ids


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


class TransformersEngine:
    """Batched sampling with a KV cache on the trainer's own model object (no weight copy)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = torch.tensor(eos_token_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id

    def sync_weights(self, model) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None) -> tuple[RolloutBatch, list[str]]:
        device = self.device
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids = enc["input_ids"].to(device)
        prompt_mask = enc["attention_mask"].to(device)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed() % (2**63))
        was_training = self.model.training
        self.model.eval()
        try:
            tokens, logps = self._decode(prompt_ids, prompt_mask, num_samples, params, generator)
        finally:
            self.model.train(was_training)

        batch, texts = assemble_batch(self.tokenizer, prompt_ids, prompt_mask, tokens, logps,
                                      num_samples, self.eos_ids.tolist())
        return batch, texts

    def _decode(self, prompt_ids, prompt_mask, num_samples, params, generator):
        """The decode loop. Returns per-row lists of sampled token ids and their log-probs."""
        model, device = self.model, prompt_ids.device
        eos_ids = self.eos_ids.to(device)
        positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        # one prefill per prompt, then G copies of its cache and next-token logits
        cache.batch_repeat_interleave(num_samples)
        logits = out.logits[:, -1, :].repeat_interleave(num_samples, dim=0)
        attn = prompt_mask.repeat_interleave(num_samples, dim=0)
        next_pos = positions[:, -1:].repeat_interleave(num_samples, dim=0) + 1

        B = attn.shape[0]
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        alive = torch.arange(B, device=device)  # original row index of each live row
        for step in range(params.max_new_tokens):
            scaled = logits.float()
            if params.temperature > 0:
                scaled = scaled / params.temperature
            log_probs = torch.log_softmax(scaled, dim=-1)
            if params.temperature > 0:
                sample_logits = filter_logits(scaled, params.top_k, params.top_p)
                probs = torch.softmax(sample_logits, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                chosen = scaled.argmax(dim=-1)
            chosen_lp = log_probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            for row, tok, lp in zip(alive.tolist(), chosen.tolist(), chosen_lp.tolist()):
                tokens[row].append(tok)
                logps[row].append(lp)
            finished = torch.isin(chosen, eos_ids)
            if step == params.max_new_tokens - 1:
                break
            if finished.any():
                keep = (~finished).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                alive, chosen = alive[keep], chosen[keep]
                attn, next_pos = attn[keep], next_pos[keep]
                cache.batch_select_indices(keep)
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            out = model(input_ids=chosen.unsqueeze(-1), attention_mask=attn, position_ids=next_pos,
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return tokens, logps


def build_engine(model, tokenizer, rollout_cfg, seed: int = 0) -> RolloutEngine:
    """The engine `rollout_cfg.engine` names ("transformers" or "vllm"; config loading has already
    turned "auto" into one of them), over the given policy."""
    if rollout_cfg.engine == "vllm":
        from .rollout_vllm import VLLMEngine
        return VLLMEngine(model, tokenizer, max_model_len=rollout_cfg.vllm_max_model_len,
                          kv_cache_gb=rollout_cfg.vllm_kv_cache_gb, seed=seed)
    return TransformersEngine(model, tokenizer)
