"""The chunked log-softmax (pivotal.chunked_logsoftmax) against the whole-tensor form, same work.

Log-probs and entropies of N x V float32 logits (the TRL-comparison micro-batch's response tokens
at SmolLM2's 49152-token vocabulary) and the backward of the log-probs, at temperature 1 and 0.7.
The whole-tensor form is what pivotal ran before (logsumexp, gather, the shifted-entropy formula on
whole (N, V) tensors). Prints the best of 5 of each and their ratio, and the largest differences.

    python benchmarks/chunked_logsoftmax.py [--rows 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import header
from pivotal.allocator import retain_freed_memory
from pivotal.chunked_logsoftmax import chunked_logprobs
from pivotal.logprobs import _entropy

VOCAB = 49152


def whole_tensor(logits, tokens, temperature):
    z = (logits / temperature).float()
    logp = torch.gather(z, -1, tokens[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
    with torch.no_grad():
        entropy = _entropy(z.detach())
    return logp, entropy


def chunked(logits, tokens, temperature):
    return chunked_logprobs(logits, tokens, 1.0 / temperature, with_entropy=True)


def best_of(fn, logits, tokens, upstream, temperature, repeats=5):
    times = []
    for _ in range(repeats):
        logits.grad = None
        t0 = time.perf_counter()
        logp, _ = fn(logits, tokens, temperature)
        logp.backward(upstream)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    header("Chunked log-softmax vs the whole-tensor form")
    retain_freed_memory()  # as the trainer runs, so neither side pays page faults
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.rows, VOCAB, generator=g) * 3).requires_grad_()
    tokens = torch.randint(0, VOCAB, (args.rows,), generator=g)
    upstream = torch.randn(args.rows, generator=g)
    for temperature in (1.0, 0.7):
        outs = []
        for fn in (whole_tensor, chunked):
            logits.grad = None
            logp, entropy = fn(logits, tokens, temperature)
            logp.backward(upstream)
            outs.append((logp.detach(), entropy, logits.grad.clone()))
        diffs = [float((a - b).abs().max()) for a, b in zip(*outs)]
        plain = best_of(whole_tensor, logits, tokens, upstream, temperature)
        fast = best_of(chunked, logits, tokens, upstream, temperature)
        print(f"T={temperature}: {args.rows} x {VOCAB} forward+backward: whole-tensor {plain:.3f} s, "
              f"chunked {fast:.3f} s, ratio {plain / fast:.2f}x | max |diff| log p {diffs[0]:.1e}, "
              f"entropy {diffs[1]:.1e}, gradient {diffs[2]:.1e}", flush=True)


if __name__ == "__main__":
    main()
