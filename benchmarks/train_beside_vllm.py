"""Does a vLLM engine in the training process slow the trainer's forward/backward?

vLLM's CPU worker replaces `torch.set_num_threads` with a no-op and sets up its own memory and
threads when it starts in-process (`rollout.engine=vllm`), so this times the same forward+backward
of the policy (8 rows x 160 tokens, full-vocabulary loss) before the engine exists, after it starts,
after it samples and after a weight sync, in one process. Prints the median of 4 each and the
ratio to "before" (1.0 = no effect). Needs vLLM (`make setup-vllm`).

    python benchmarks/train_beside_vllm.py
"""

from __future__ import annotations

import statistics
import time

import torch

from common import header
from pivotal.models import load_model
from pivotal.rollout import SamplingParams
from pivotal.rollout.vllm_engine import VLLMEngine


def main() -> None:
    header("forward+backward with vLLM in the process")
    model, tokenizer = load_model("smollm2-135m")
    model.train()
    ids = torch.randint(100, 20_000, (8, 160), generator=torch.Generator().manual_seed(0))

    def forward_backward(repeats: int = 4) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    before = forward_backward()
    print(f"before vLLM: {before:.2f}s", flush=True)
    engine = VLLMEngine(model, tokenizer, max_model_len=512, kv_cache_gb=0.25)
    results = {"after the engine starts": forward_backward()}
    engine.generate(["Hello, how are you?"] * 4, 4, SamplingParams(max_new_tokens=32), seed=0)
    results["after it samples"] = forward_backward()
    engine.sync_weights(model)
    results["after a weight sync"] = forward_backward()
    for name, seconds in results.items():
        print(f"{name}: {seconds:.2f}s | ratio to before {seconds / before:.2f}", flush=True)


if __name__ == "__main__":
    main()
