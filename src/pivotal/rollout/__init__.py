"""Rollout engines: sample G responses per prompt and record the sampling policy's log-probs.

The interface is deliberately narrow (`generate` + `sync_weights`, `pivotal.rollout.base`), so the
vLLM engines, in process (`pivotal.rollout.vllm_engine`) and on servers
(`pivotal.rollout.vllm_server`), stand beside the transformers one
(`pivotal.rollout.transformers_engine`) and all fill the same batch fields. The transformers
engine and the two-model decoders of `pivotal.analysis.decoding` share one KV-cache decode loop
(`pivotal.rollout.kv_decode`).
"""

from pivotal.rollout.base import RolloutEngine, SamplingParams, assemble_batch, encode_prompts, filter_logits
from pivotal.rollout.kv_decode import StepChoice, kv_decode, sample_step
from pivotal.rollout.transformers_engine import TransformersEngine


def build_engine(model, tokenizer, rollout_cfg, seed: int = 0, output_dir: str = ".",
                 runtime=None) -> RolloutEngine:
    """The engine `rollout_cfg.engine` names ("transformers", "vllm" or "vllm_server"; config
    loading has already turned "auto" into one of them), over the given policy. `output_dir`: where
    a local server's log and the pushed weights go; `runtime`: this rank's place (data parallel)."""
    if rollout_cfg.engine == "vllm_server":
        from pivotal.distributed import SINGLE
        from pivotal.rollout.vllm_server import VLLMServerEngine
        return VLLMServerEngine(model, tokenizer, rollout_cfg, output_dir, seed=seed,
                                runtime=runtime or SINGLE)
    if rollout_cfg.engine == "vllm":
        from pivotal.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model, tokenizer, max_model_len=rollout_cfg.vllm_max_model_len,
                          kv_cache_gb=rollout_cfg.vllm_kv_cache_gb, seed=seed,
                          enforce_eager=not rollout_cfg.vllm_compile)
    return TransformersEngine(model, tokenizer)


__all__ = ["RolloutEngine", "SamplingParams", "StepChoice", "TransformersEngine", "assemble_batch",
           "build_engine", "encode_prompts", "filter_logits", "kv_decode", "sample_step"]
