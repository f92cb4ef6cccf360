"""Chosen-token log-probs (and entropies) of (N, V) logits, a few rows at a time.

The log-softmax of one token out of a 49k-64k vocabulary is cheap in FLOPs and expensive in memory
traffic: written with whole-tensor operations (temperature, max, subtract, exp, sum, gather, and
in the backward exp, subtract, multiply) every step reads or writes an (N, V) float32 tensor,
hundreds of MB per micro-batch, each time from DRAM. Here the forward and the backward each walk
the logits once, a few rows at a time (`rows_per_chunk`), so every intermediate of a chunk stays in the CPU's
cache (or a GPU's L2) and the backward writes its gradient straight into one (N, V) buffer.
What it saves: benchmarks/chunked_logsoftmax.py and benchmarks/train_profile.py (docs/results.md).

Values equal the whole-tensor form to float32 rounding (tests/test_chunked_logsoftmax.py):
    log p(token) = scale * l[token] - logsumexp(scale * l)
    H           = log Z - sum_v p_v (scale * l_v - max)  on logits shifted by their row max
    d log p / d l = scale * (onehot(token) - softmax(scale * l))
The entropy carries no gradient here (it is a metric, or a credit's input); an entropy bonus, which
needs one, takes the whole-tensor path in `pivotal.logprobs`.
"""

from __future__ import annotations

import torch

# Bytes of float32 logits per chunk. CPU: ~1.5 MB, inside a core's L2 on current x86 and ARM
# server parts (the sweep in docs/results.md: 1.5-8 MB within 10% of each other, 0.5 MB up to 24%
# slower). Accelerators: one chunk is one set of kernel launches, so chunks there are large
# (64 MiB, about an H100's L2, and far fewer launches); not yet measured on a GPU.
CHUNK_BYTES = 3 << 19
ACCELERATOR_CHUNK_BYTES = 64 << 20


def rows_per_chunk(vocab: int, device: torch.device | str = "cpu") -> int:
    budget = CHUNK_BYTES if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_BYTES
    return max(1, budget // (4 * vocab))


def _scaled_float(rows: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * rows as a new float32 tensor."""
    return torch.mul(rows, scale) if rows.dtype == torch.float32 else rows.float().mul_(scale)


class _ChunkedLogSoftmaxPick(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, scale: float, with_entropy: bool):
        n, vocab = logits.shape
        step = rows_per_chunk(vocab, logits.device)
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            shifted = _scaled_float(logits[rows], scale)  # a new chunk: the input is never written
            top = shifted.amax(dim=-1, keepdim=True)
            shifted.sub_(top)
            picked = shifted.gather(-1, token_ids[rows, None]).squeeze(-1)
            if with_entropy:
                exp = torch.exp(shifted)
                total = exp.sum(dim=-1)
                entropy[rows] = torch.log(total) - torch.linalg.vecdot(exp, shifted) / total
            else:
                total = shifted.exp_().sum(dim=-1)
            log_total = torch.log(total)
            lse[rows] = top.squeeze(-1) + log_total
            logp[rows] = picked - log_total
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.scale = scale
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, token_ids, lse = ctx.saved_tensors
        scale = ctx.scale
        n, vocab = logits.shape
        step = rows_per_chunk(vocab, logits.device)
        grad = torch.empty_like(logits)
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            g = grad_logp[rows].float() * scale  # (c,)
            in_place = grad.dtype == torch.float32  # float32: computed inside the gradient itself
            chunk = (torch.mul(logits[rows], scale, out=grad[rows]) if in_place
                     else _scaled_float(logits[rows], scale))
            chunk.sub_(lse[rows, None]).exp_()  # softmax(scale * l)
            chunk.mul_(-g[:, None]).scatter_add_(1, token_ids[rows, None], g[:, None])
            if not in_place:
                grad[rows] = chunk
        return grad, None, None, None


def chunked_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, scale: float = 1.0,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (N,), entropies (N,) or None) of softmax(scale * logits) at `token_ids`.

    logits: (N, V) any float dtype (computed in float32); token_ids: (N,) long. The log-probs
    carry a gradient to `logits`; the entropies none.
    """
    if logits.dim() != 2:
        raise ValueError(f"chunked_logprobs takes (N, V) logits, got shape {tuple(logits.shape)}")
    return _ChunkedLogSoftmaxPick.apply(logits, token_ids, float(scale), with_entropy)
