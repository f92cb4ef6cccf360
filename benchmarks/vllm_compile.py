"""The in-process vLLM engine eager (pivotal's default) against compiled (`rollout.vllm_compile`):
start-up seconds, then rollouts of the TRL-comparison batch (4 prompts x 8 samples, 64 new
tokens, SmolLM2-135M), the same seeds for both, and the ratio of the median rollouts. Each mode
runs in its own process (one vLLM engine per process, as in training), one after the other.

    cd benchmarks && ../.venv-vllm/bin/python vllm_compile.py [--repeats 4]

vLLM keeps its compiled graphs in ~/.cache/vllm: a second run starts faster than a first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import GROUP, NEW_TOKENS, header, setup


def one_mode(eager: bool, repeats: int) -> dict:
    from pivotal.allocator import retain_freed_memory
    from pivotal.rollout import SamplingParams
    from pivotal.rollout.vllm_engine import VLLMEngine
    retain_freed_memory()
    model, tokenizer, _, prompts = setup()
    t0 = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, max_model_len=512, kv_cache_gb=0.5, enforce_eager=eager)
    start = time.perf_counter() - t0
    times, tokens = [], []
    for seed in range(repeats):
        t0 = time.perf_counter()
        batch, _ = engine.generate(prompts, GROUP, SamplingParams(NEW_TOKENS, 1.0, 1.0, 0), seed=seed)
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch.response_mask.sum()))
    return {"start": start, "times": times, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--mode", choices=["eager", "compiled"], help=argparse.SUPPRESS)  # the child
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(one_mode(args.mode == "eager", args.repeats)))
        return
    header("vLLM engine: eager against compiled")
    results = {}
    for mode in ("eager", "compiled"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(next(line for line in out.stdout.splitlines()
                                        if line.startswith("RESULT "))[7:])
        r = results[mode]
        print(f"{mode:8s}: start {r['start']:.1f} s | rollouts {', '.join(f'{t:.2f}' for t in r['times'])} s "
              f"| tokens {r['tokens']}", flush=True)
    # the first rollout of each warms up; the median of the rest
    med = {m: statistics.median(r["times"][1:]) for m, r in results.items()}
    saved = med["eager"] - med["compiled"]
    extra = results["compiled"]["start"] - results["eager"]["start"]
    print(f"median rollout after the first: eager {med['eager']:.2f} s, compiled {med['compiled']:.2f} s "
          f"-> ratio {med['compiled'] / med['eager']:.2f}; compiling pays for itself after "
          f"{extra / saved:.0f} rollouts" if saved > 0 else "compiled is not faster")


if __name__ == "__main__":
    main()
