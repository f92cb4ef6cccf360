"""The transformers engine's decode loop: its fast paths against the plain ones, and what bounds it.

1. The TRL-comparison rollout (4 prompts x 8 samples, 64 new tokens, SmolLM2-135M) with
   transformers' dynamic KV cache and `torch.multinomial` (the loop before issue 15, item 3)
   against the preallocated cache and the inverse-CDF draw (the loop now), alternating, in one
   run: seconds, the part inside the model's forwards, the part in sampling, and the ratio.
2. The floor the matmul kernels set: every linear layer of one one-token forward timed alone at
   the live-row count (weights cycled so none stays in cache), against the forward itself and
   against the forward's roofline (benchmarks/roofline.py); and, for comparison only, the same
   matmuls with bf16 inside (oneDNN's AMX path; not exact, pivotal does not use it).

    cd benchmarks && ../.venv/bin/python decode_paths.py [--repeats 3] [--rows 25] [--task gsm8k]

`--task gsm8k` samples the first 4 GSM8K training questions ($PIVOTAL_DATA_DIR) instead of the
2-digit sums: prompts about three times longer, so the KV cache the dynamic path copies is too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from common import GROUP, NEW_TOKENS, header, setup
from pivotal.allocator import retain_freed_memory
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.tasks import build_task, format_prompt
from roofline import ModelShape, decode_probe, matmul_peak, memory_bandwidth, roofline_seconds

decode_module = sys.modules["pivotal.rollout.kv_decode"]


def _plain_paths():
    """The loop's dynamic-cache and torch.multinomial paths, as they were."""
    return {"preallocate": lambda cache, repeats, new_tokens: cache.batch_repeat_interleave(repeats),
            "draw_categorical": lambda probs, g: torch.multinomial(probs, 1, generator=g).squeeze(-1)}


def rollout_split(engine, prompts, params, seed, paths: dict) -> dict[str, float]:
    """One rollout with `paths` patched into the decode loop: seconds in all, in the model's
    forwards and in the categorical draw."""
    saved = {name: getattr(decode_module, name) for name in ("preallocate", "draw_categorical")}
    spent = {"forward": 0.0, "sampling": 0.0}
    model = engine.model

    def timed(kind, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[kind] += time.perf_counter() - t0
            return out
        return run

    model.forward = timed("forward", model.forward)
    for name, fn in paths.items():
        setattr(decode_module, name, fn)
    decode_module.draw_categorical = timed("sampling", decode_module.draw_categorical)
    try:
        t0 = time.perf_counter()
        batch, _ = engine.generate(prompts, GROUP, params, seed=seed)
        spent["all"] = time.perf_counter() - t0
    finally:
        del model.forward
        for name, fn in saved.items():
            setattr(decode_module, name, fn)
    spent["tokens"] = float(batch.response_mask.sum())
    return spent


def linear_floor(model, rows: int, repeats: int = 20) -> tuple[float, float]:
    """(seconds, FLOPs) of every nn.Linear of one forward run alone at `rows` rows: each weight
    shape timed over enough copies (~64 MB) that none stays in cache."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shapes[tuple(module.weight.shape)] = shapes.get(tuple(module.weight.shape), 0) + 1
    seconds = flops = 0.0
    for (out_features, in_features), count in shapes.items():
        copies = max(1, 64_000_000 // (out_features * in_features * 4))
        weights = [torch.randn(out_features, in_features) for _ in range(copies)]
        x = torch.randn(rows, in_features)
        for w in weights[:3]:
            torch.nn.functional.linear(x, w)
        t0 = time.perf_counter()
        for i in range(repeats):
            torch.nn.functional.linear(x, weights[i % copies])
        seconds += count * (time.perf_counter() - t0) / repeats
        flops += count * 2.0 * rows * out_features * in_features
    return seconds, flops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25, help="live rows for the kernel floor (the "
                    "TRL-comparison rollout's mean is 25-27)")
    ap.add_argument("--task", choices=["arithmetic", "gsm8k"], default="arithmetic")
    args = ap.parse_args()
    retain_freed_memory()  # as the trainer does: freed buffers are reused, not faulted in again
    header("decode loop: plain paths against the preallocated cache + inverse-CDF draw")
    model, tokenizer, _, prompts = setup()
    if args.task == "gsm8k":
        task = build_task("gsm8k")
        prompts = [format_prompt(task.train_problem(i), tokenizer) for i in range(len(prompts))]
    print(f"{args.task}: prompts of {[len(tokenizer(p).input_ids) for p in prompts]} tokens")
    model.eval()
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(NEW_TOKENS, 1.0, 1.0, 0)
    runs: dict[str, list[dict]] = {"plain": [], "fast": []}
    for r in range(args.repeats):
        for name, paths in (("plain", _plain_paths()), ("fast", {})):
            runs[name].append(rollout_split(engine, prompts, params, seed=r, paths=paths))
            last = runs[name][-1]
            print(f"  {name:5s} seed {r}: {last['all']:.2f} s (forwards {last['forward']:.2f} s, "
                  f"sampling {last['sampling']:.2f} s), {last['tokens']:.0f} tokens", flush=True)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    print(f"median rollout: plain {med['plain']['all']:.2f} s, fast {med['fast']['all']:.2f} s "
          f"-> ratio {med['fast']['all'] / med['plain']['all']:.2f}; forwards "
          f"{med['plain']['forward']:.2f} -> {med['fast']['forward']:.2f} s, sampling "
          f"{med['plain']['sampling']:.2f} -> {med['fast']['sampling']:.2f} s")

    header(f"what bounds a one-token forward at {args.rows} rows")
    peak, bandwidth = matmul_peak(), max(memory_bandwidth().values())
    shape = ModelShape.of(model)
    context = 150
    forward = decode_probe(model, args.rows, context)
    flops, moved = shape.decode_forward(args.rows, context)
    bound = roofline_seconds(flops, moved, peak, bandwidth)
    floor, linear_flops = linear_floor(model, args.rows)
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s, bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"forward {forward * 1e3:.1f} ms | roofline {bound * 1e3:.1f} ms ({bound / forward:.0%} of it "
          f"reached) | its linear layers alone {floor * 1e3:.1f} ms at {linear_flops / floor / 1e9:.0f} "
          f"GFLOP/s ({linear_flops / floor / peak:.0%} of the peak), {floor / forward:.0%} of the forward")
    # what a faster kernel would give: oneDNN's AMX path, fp32 in and out, bf16 inside (inexact)
    if hasattr(torch.backends.mkldnn, "matmul"):
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            bf16_floor, _ = linear_floor(model, args.rows)
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = "none"
        print(f"the same linear layers with bf16 inside the matmul (not exact, not used): "
              f"{bf16_floor * 1e3:.1f} ms ({floor / bf16_floor:.2f}x faster)")


if __name__ == "__main__":
    main()
