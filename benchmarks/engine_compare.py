"""Rollout engines side by side: vLLM vs pivotal's transformers engine, and vLLM's weight-sync cost.

Both engines sample the same 4 prompts x 8 responses, up to 64 new tokens, temperature 1, from
SmolLM2-135M in float32. Prints useful tokens/s for each (median of --repeats), the ratio
vLLM / transformers, the time of one in-place weight sync (the policy's state dict into vLLM, no
disk), and the sampler/trainer log-prob gap on vLLM's samples (it feeds the importance ratio).
Needs vLLM: run it in the `make setup-vllm` environment.

    .venv-vllm/bin/python benchmarks/engine_compare.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common import GROUP, NEW_TOKENS, header, setup, timed
from pivotal.logprobs import policy_logprobs
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.rollout.vllm_engine import VLLMEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("rollout engines: vLLM vs transformers")
    model, tokenizer, _, prompts = setup()
    model.eval()
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0)
    engines = {"transformers": TransformersEngine(model, tokenizer),
               "vllm": VLLMEngine(model, tokenizer, max_model_len=1024, kv_cache_gb=1.0)}
    seed = iter(range(10_000))
    rates, last = {}, {}
    for name, engine in engines.items():
        def run(engine=engine):
            batch, _ = engine.generate(prompts, GROUP, params, seed=next(seed))
            return batch
        run()  # warm-up
        runs = [timed(run, 1) for _ in range(args.repeats)]
        per_run = sorted(float(b.response_mask.sum()) / sec for sec, b in runs)
        rates[name] = statistics.median(per_run)
        last[name] = runs[-1][1]
        print(f"{name:13s} median {rates[name]:7.1f} useful tokens/s "
              f"(runs: {', '.join(f'{r:.1f}' for r in per_run)})", flush=True)
    print(f"ratio vllm / transformers = {rates['vllm'] / rates['transformers']:.2f}")

    vllm = engines["vllm"]
    sync, _ = timed(lambda: vllm.sync_weights(model), args.repeats)
    print(f"weight sync (state dict -> vLLM, in place): median {sync:.2f} s")
    batch = last["vllm"]
    with torch.no_grad():
        trainer_lp, _ = policy_logprobs(model, batch, temperature=1.0)
    gap = (trainer_lp - batch.old_logprobs)[batch.response_mask.bool()].abs()
    print(f"sampler/trainer log-prob gap on {gap.numel()} tokens: mean {gap.mean():.2e}, "
          f"max {gap.max():.2e}")


if __name__ == "__main__":
    main()
