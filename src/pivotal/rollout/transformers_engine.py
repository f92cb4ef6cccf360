"""The transformers rollout engine: batched sampling on the trainer's own model object."""

from __future__ import annotations

import torch

from pivotal.batch import RolloutBatch
from pivotal.models import eos_token_ids
from pivotal.rollout.base import SamplingParams, assemble_batch, encode_prompts, seeded_generator
from pivotal.rollout.kv_decode import kv_decode, sample_step


class TransformersEngine:
    """Samples with the KV-cache loop of `pivotal.rollout.kv_decode` on the trainer's own model
    object (no weight copy: `sync_weights` only points at the model)."""

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
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, self.device)
        generator = seeded_generator(self.device, seed)
        was_training = self.model.training
        self.model.eval()
        try:
            tokens, logps, _, _ = kv_decode([self.model], prompt_ids, prompt_mask, num_samples,
                                            params, self.eos_ids, sample_step, generator)
        finally:
            self.model.train(was_training)
        return assemble_batch(self.tokenizer, prompt_ids, prompt_mask, tokens, logps, num_samples,
                              self.eos_ids.tolist())
