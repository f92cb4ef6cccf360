"""Cost of `pivotal analyze` against the forward passes it cannot avoid.

Base = the built-in model (smollm2-135m); rl = the same model with small random weight noise (or a
checkpoint directory given with --rl). N responses of up to --new-tokens tokens are sampled once
from rl (temperature 1, so most run to the length limit). Then, over exactly those tokens and in
the same micro-batches, it times

  analysis  pivotal.analysis.shift.token_table (every per-token column: divergences, log-probs,
            ranks, top-k; chunked LM head) plus the summary
  forwards  two plain forward passes, one per model, with logits for all positions

and prints both times (median of --repeats) and their ratio (target <= 1.3).

    python benchmarks/analyze_cost.py [--responses 16] [--new-tokens 48] [--rl CKPT_DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from common import header, timed
from pivotal.analysis.shift import Response, build_batch, summary, token_table
from pivotal.models import load_model
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.tasks import build_task, format_prompt


def noisy_copy(model, scale: float, seed: int = 0):
    """The model with each weight w -> w + scale * std(w) * N(0, 1): a stand-in for an RL update."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * (scale * float(p.std())))
    return out


def sample_responses(model, tokenizer, n: int, new_tokens: int) -> list[Response]:
    task = build_task("arithmetic", seed=0)
    problems = [task.train_problem(i) for i in range(n)]
    prompts = [format_prompt(p, tokenizer) for p in problems]
    batch, texts = TransformersEngine(model, tokenizer).generate(
        prompts, 1, SamplingParams(new_tokens, temperature=1.0), seed=0)
    out = []
    for i, (p, prompt, text) in enumerate(zip(problems, prompts, texts)):
        prompt_ids = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        response_ids = batch.response_ids[i][batch.response_mask[i].bool()].tolist()
        out.append(Response(problem_id=p.id, prompt=prompt, prompt_ids=prompt_ids,
                            response_ids=response_ids, text=text))
    return out


def plain_forwards(models, batch, micro_batch: int) -> None:
    """One ordinary forward per model over the batch: logits for every position (B, P+T, V)."""
    with torch.no_grad():
        for start in range(0, batch.size, micro_batch):
            rows = batch.select(torch.arange(start, min(start + micro_batch, batch.size)))
            attention = rows.attention_mask
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            for model in models:
                model(input_ids=rows.input_ids, attention_mask=attention,
                      position_ids=positions).logits.float()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rl", help="checkpoint directory of the rl model (default: base + noise)")
    ap.add_argument("--noise", type=float, default=0.03,
                    help="relative weight noise of the rl stand-in")
    ap.add_argument("--responses", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--chunk-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("pivotal analyze cost vs two plain forward passes")
    base, tokenizer = load_model("smollm2-135m")
    rl = load_model(args.rl)[0] if args.rl else noisy_copy(base, args.noise)
    responses = sample_responses(rl, tokenizer, args.responses, args.new_tokens)
    batch = build_batch(responses, tokenizer.pad_token_id)
    n_tokens = sum(r.length for r in responses)
    prompt_tokens = sum(len(r.prompt_ids) for r in responses)
    print(f"{len(responses)} responses, {n_tokens} response tokens "
          f"(mean {n_tokens / len(responses):.1f}), {prompt_tokens} prompt tokens; "
          f"micro-batch {args.micro_batch}, chunk {args.chunk_tokens}", flush=True)

    def analysis():
        df = token_table(base, rl, tokenizer, responses, chunk_tokens=args.chunk_tokens,
                         micro_batch=args.micro_batch)
        return df, summary(df, responses, base="smollm2-135m", rl=args.rl or "noise",
                           source="benchmark")

    plain_forwards([base, rl], batch, args.micro_batch)  # warm-up
    # interleaved repeats: on a shared machine the load drifts, and both contenders should see
    # the same drift
    t_forward, t_analysis = [], []
    for _ in range(args.repeats):
        t_forward.append(timed(lambda: plain_forwards([base, rl], batch, args.micro_batch), 1)[0])
        seconds, (df, s) = timed(analysis, 1)
        t_analysis.append(seconds)
    fwd, ana = statistics.median(t_forward), statistics.median(t_analysis)
    print(f"two plain forwards: {fwd:.2f} s | analysis: {ana:.2f} s | ratio {ana / fwd:.2f} "
          f"(target <= 1.3); median of {args.repeats}, all: forwards "
          f"{' '.join(f'{t:.1f}' for t in t_forward)}, analysis "
          f"{' '.join(f'{t:.1f}' for t in t_analysis)}")
    print(f"(shifted fraction js >= 0.1: {s['shifted_fraction']:.3f}, "
          f"mean js {df['js'].mean():.4f})")


if __name__ == "__main__":
    main()
