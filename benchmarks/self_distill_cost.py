"""Cost of the self-teacher (AMR-SD / self_distill) against the training step it rides on.

Trains the built-in model at the TRL-comparison configuration (4 prompts x 8 samples, 64 new
tokens) with `algo.credit=amr_sd` and prints, per step and on average, the two extra pieces of
work as fractions of the whole step, measured in the same steps: the hint generation
(`time_hints`: one batched greedy call of the rollout engine, `hint_tokens` new tokens per
group, for `hint_source=reflection`) and the hinted forward (`time_context_logprobs`: one no-grad
pass of the policy over every response with the hint in its prompt). Then the same number of
plain GRPO steps (credit identity) in the same process, and the ratio of the mean step times.

    python benchmarks/self_distill_cost.py [--steps 3] [--source reflection]
"""

from __future__ import annotations

import argparse
import statistics

from common import header, step_config
from pivotal.trainer import Trainer


def timed_steps(cfg, steps: int) -> list[dict]:
    trainer = Trainer(cfg, progress=False)
    trainer.train_step()  # warm-up
    out = []
    for _ in range(steps):
        trainer.step += 1
        out.append(trainer.train_step())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--source", default="reflection", choices=("reflection", "solution", "template"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    header(f"self-teacher cost: amr_sd with hint_source={args.source} against plain GRPO")
    rows = timed_steps(step_config("algo.credit=amr_sd", "algo.credit_options={hint_source: "
                                   f"{args.source}, anneal: none}}", *args.overrides), args.steps)
    hint_share, context_share = [], []
    for i, m in enumerate(rows):
        hint_share.append(m["time_hints"] / m["time_step"])
        context_share.append(m["time_context_logprobs"] / m["time_step"])
        print(f"amr_sd step {i + 1}: step {m['time_step']:.2f} s, hints {m['time_hints']:.2f} s "
              f"({100 * hint_share[-1]:.1f}%), hinted forward {m['time_context_logprobs']:.2f} s "
              f"({100 * context_share[-1]:.1f}%), gate on {100 * m['credit_modulated_frac']:.1f}% "
              f"of tokens, hint {m['hint_tokens']:.0f} tokens", flush=True)
    plain = timed_steps(step_config(*args.overrides), args.steps)
    for i, m in enumerate(plain):
        print(f"grpo step {i + 1}: step {m['time_step']:.2f} s", flush=True)
    ratio = statistics.mean(m["time_step"] for m in rows) / statistics.mean(m["time_step"] for m in plain)
    print(f"hints / step = {statistics.mean(hint_share):.3f}, hinted forward / step = "
          f"{statistics.mean(context_share):.3f}, amr_sd step / grpo step = {ratio:.2f} "
          f"(means of {args.steps} steps; the two runs sample different responses after step 1)")


if __name__ == "__main__":
    main()
