"""Rollout throughput: pivotal's TransformersEngine vs a plain `model.generate` on the same batch.

Both sample 4 prompts x 8 responses, up to 64 new tokens, temperature 1, from SmolLM2-135M in
float32. Useful tokens = generated tokens up to and including EOS (padding after EOS is not
useful). Prints tokens/s for each and the ratio ours / generate (the issue's aim: >= 0.9).

    python benchmarks/rollout_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from common import GROUP, NEW_TOKENS, header, setup, timed
from pivotal.models import eos_token_ids
from pivotal.rollout import SamplingParams, TransformersEngine


def useful_tokens(sequences: torch.Tensor, eos: list[int]) -> int:
    """Tokens up to and including the first EOS in each row."""
    total = 0
    for row in sequences.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in eos:
                n = i + 1
                break
        total += n
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("rollout throughput")
    model, tokenizer, _, prompts = setup()
    eos = eos_token_ids(model, tokenizer)
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    seed = iter(range(10_000))

    def ours():
        batch, _ = engine.generate(prompts, GROUP, params, seed=next(seed))
        return int(batch.response_mask.sum())

    @torch.no_grad()
    def plain():
        torch.manual_seed(next(seed))
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=NEW_TOKENS, num_return_sequences=GROUP,
                             pad_token_id=tokenizer.pad_token_id)
        return useful_tokens(out[:, enc["input_ids"].shape[1]:], eos)

    ours()  # warm-up
    plain()
    results = {}
    for name, fn in (("pivotal", ours), ("generate", plain)):
        runs = [timed(fn, 1) for _ in range(args.repeats)]
        rates = sorted(tok / sec for sec, tok in runs)
        results[name] = rates[len(rates) // 2]
        print(f"{name:10s} median {results[name]:7.1f} useful tokens/s "
              f"(runs: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)
    print(f"ratio pivotal / generate = {results['pivotal'] / results['generate']:.2f}")


if __name__ == "__main__":
    main()
