"""This machine's limits, and the roofline of each phase of a GRPO step against them.

A phase's roofline time is max(FLOPs / matmul peak, bytes / memory bandwidth): the least time it
could take if it ran at the faster of the two limits that bind it (Williams, Waterman & Patterson,
"Roofline", CACM 2009). The peak and the bandwidth are measured here, in the same run as the
phases, because these machines are shared and both move by tens of percent from minute to minute.

Bytes are the minimum traffic to main memory the phase cannot avoid, counted per decoder forward:
  weights   every matmul weight read once per forward (the tied LM head counted as a matmul)
  KV cache  every live row reads its keys and values over the whole context (left padding
            included: the cache holds it) and writes one new position
  logits    the (rows, V) float32 logits written by the LM head and read once by the sampler
Activations between layers are left out (a few MiB that stay in the caches at these sizes), so the
byte counts are lower bounds and the roofline times are lower bounds too. A decode forward's FLOPs
are 2 per matmul weight per row plus the attention's 4 x context x attention width per layer.

    python benchmarks/roofline.py [--rows 32 8 1] [--context 96]   # the decode probe alone
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

from common import header


def matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 10) -> float:
    """Best fp32 FLOP/s of square matmuls on all threads: the fastest of several sizes and repeats.

    A single measurement on a shared machine can land far below the hardware's rate (measured
    here: 96 and 162 GFLOP/s in two runs a minute apart), and an underestimated peak inflates MFU;
    the script therefore measures before and after the steps and divides by the larger."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best


def memory_bandwidth(mib: int = 512, repeats: int = 5) -> dict[str, float]:
    """Best bytes/s of STREAM's copy (b = a: 2 x size moved) and triad (a = b + s c: 3 x size) on
    float32 buffers of `mib` MiB each, far larger than any cache here, on all threads."""
    n = mib * 2**20 // 4
    a, b, c = torch.ones(n), torch.full((n,), 2.0), torch.full((n,), 0.5)
    best = {"copy": 0.0, "triad": 0.0}
    b.copy_(a)  # warm-up: the pages are touched before they are timed
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        best["copy"] = max(best["copy"], 2 * 4 * n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best["triad"] = max(best["triad"], 3 * 4 * n / (time.perf_counter() - t0))
    return best


@dataclass(frozen=True)
class ModelShape:
    """What a decoder's roofline needs from its model."""

    matmul_params: int      # weights of every nn.Linear, the LM head included
    layers: int
    attention_width: int    # query heads x head dim
    kv_bytes_per_token: int  # keys + values of one position, all layers, one row
    vocab: int
    elem_bytes: int

    @classmethod
    def of(cls, model) -> ModelShape:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        elem = next(model.parameters()).element_size()
        return cls(
            matmul_params=sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)),
            layers=c.num_hidden_layers, attention_width=c.num_attention_heads * head_dim,
            kv_bytes_per_token=2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * elem,
            vocab=c.vocab_size, elem_bytes=elem)

    def decode_forward(self, rows: int, context: int) -> tuple[float, float]:
        """(FLOPs, bytes) of one one-token forward of `rows` live rows over `context` positions."""
        flops = rows * (2 * self.matmul_params + 4 * self.layers * context * self.attention_width)
        moved = (self.matmul_params * self.elem_bytes
                 + rows * (context + 1) * self.kv_bytes_per_token  # read the context, write one
                 + 2 * rows * self.vocab * 4)                       # logits out, and read back
        return flops, moved


def roofline_seconds(flops: float, moved: float, peak: float, bandwidth: float) -> float:
    return max(flops / peak, moved / bandwidth)


def generation_roofline(batch, group: int, shape: ModelShape, peak: float,
                        bandwidth: float) -> dict[str, float]:
    """The roofline of the rollout of `batch` as pivotal's KV-cache loop runs it: one prefill of
    each distinct prompt, then one forward per token step over the rows still live (a row of L
    tokens is in the forwards after its steps 0..L-2; finished rows leave the batch).

    Returns the roofline seconds, the FLOPs and bytes, the number of decode forwards, the mean
    live rows per forward, and the seconds the decode forwards would take at the bandwidth alone
    and at the peak alone (which of the two is larger says what bounds decoding)."""
    prompt_len = batch.prompt_mask.shape[1]  # left-padded: every row's cache holds P positions
    lengths = batch.response_mask.sum(dim=1).long()
    prompts = batch.prompt_mask[::group]
    prefill_flops = 2 * shape.matmul_params * float(prompts.numel())
    prefill_bytes = (shape.matmul_params * shape.elem_bytes
                     + prompts.numel() * shape.kv_bytes_per_token)
    total = {"flops": prefill_flops, "bytes": prefill_bytes,
             "seconds": roofline_seconds(prefill_flops, prefill_bytes, peak, bandwidth),
             "decode_forwards": 0.0, "live_rows": 0.0, "decode_at_bandwidth": 0.0,
             "decode_at_peak": 0.0}
    for step in range(int(lengths.max()) - 1):
        live = int((lengths > step + 1).sum())
        if live == 0:
            break
        flops, moved = shape.decode_forward(live, prompt_len + step + 1)
        total["flops"] += flops
        total["bytes"] += moved
        total["seconds"] += roofline_seconds(flops, moved, peak, bandwidth)
        total["decode_forwards"] += 1
        total["live_rows"] += live
        total["decode_at_bandwidth"] += moved / bandwidth
        total["decode_at_peak"] += flops / peak
    total["live_rows"] /= max(total["decode_forwards"], 1.0)
    return total


def training_roofline(batch, group: int, shape: ModelShape, micro_batches: int,
                      optimizer_steps: int, peak: float, bandwidth: float) -> dict[str, float]:
    """The roofline of the update phase: 6 FLOPs per matmul weight per distinct token (each prompt
    once, as `optim.share_prompt` computes it), plus the bytes: per micro-batch the weights read
    in the forward and twice in the backward (for the input gradient and for the weight gradient's
    accumulation, which also writes it), the logits written, read by the log-softmax and their
    gradient written and read; per optimizer step AdamW's read of weights, gradients and two
    moments and write of weights and moments (7 x 4 bytes per parameter, all parameters)."""
    tokens = float(batch.prompt_mask[::group].sum() + batch.response_mask.sum())
    trained = float(batch.response_mask.sum())
    weight_bytes = shape.matmul_params * shape.elem_bytes
    flops = 6 * shape.matmul_params * tokens
    moved = (micro_batches * 4 * weight_bytes          # forward read, backward read x2, grad write
             + 4 * trained * shape.vocab * 4            # logits: write, read, grad write, read
             + optimizer_steps * 7 * 4 * shape.matmul_params)
    return {"flops": flops, "bytes": moved,
            "seconds": roofline_seconds(flops, moved, peak, bandwidth)}


@torch.no_grad()
def decode_probe(model, rows: int, context: int, repeats: int = 8) -> float:
    """Best seconds of one one-token forward of the model alone (no sampling, no host loop) for
    `rows` rows over a KV cache of `context` positions, called as pivotal's decode loop calls it
    (preallocated cache, a 2D attention mask): the floor that loop can reach with this model code,
    to set against its roofline."""
    from pivotal.kv_cache import preallocate, returned_cache, with_cache

    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (rows, context), device=device)
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    preallocate(cache, 1, repeats)
    token = ids[:, -1:]
    best = float("inf")
    for i in range(repeats):
        positions = torch.full((rows, 1), context + i, device=device)
        mask = torch.ones(rows, context + i + 1, dtype=torch.long, device=device)
        t0 = time.perf_counter()
        out = model(input_ids=token, attention_mask=mask, position_ids=positions, use_cache=True,
                    **with_cache(model, cache))
        best = min(best, time.perf_counter() - t0)
        cache = returned_cache(out)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="+", type=int, default=[32, 8, 1])
    ap.add_argument("--context", type=int, default=96)
    args = ap.parse_args()
    from pivotal.models import load_model
    header("decode probe: one-token forwards against their roofline")
    model, _ = load_model("smollm2-135m")
    model.eval()
    shape = ModelShape.of(model)
    peak, bandwidth = matmul_peak(), memory_bandwidth()
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s | memory bandwidth copy "
          f"{bandwidth['copy'] / 1e9:.1f} GB/s, triad {bandwidth['triad'] / 1e9:.1f} GB/s", flush=True)
    print(probe_report(model, shape, args.rows, args.context, peak, max(bandwidth.values())))


def probe_report(model, shape: ModelShape, rows: list[int], context: int, peak: float,
                 bandwidth: float) -> str:
    lines = []
    for n in rows:
        seconds = decode_probe(model, n, context)
        flops, moved = shape.decode_forward(n, context)
        bound = roofline_seconds(flops, moved, peak, bandwidth)
        kind = "bandwidth" if moved / bandwidth >= flops / peak else "compute"
        lines.append(f"  {n:3d} rows x {context} context: {seconds * 1e3:6.1f} ms per forward, "
                     f"roofline {bound * 1e3:5.1f} ms ({kind}-bound: {flops / 1e9:.2f} GFLOP, "
                     f"{moved / 1e6:.0f} MB) -> {bound / seconds:.0%} of the roofline")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
