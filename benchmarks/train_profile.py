"""Where the training phase's time goes: a torch.profiler table of one policy update.

The configuration of the TRL comparison (4 prompts x 8 samples, 64 new tokens, the built-in
model). One warm-up step makes a real rollout batch (advantages included); the policy update of
that batch (`pivotal.update.PolicyUpdate`, every micro-batch's forward, objective, backward and
the optimizer step) is then timed `--repeats` times and profiled once. Prints the update's time,
its MFU against the matmul peak measured in the same run (6 N per distinct trained token, as
step_mfu.py counts), and the profiler's operators by self CPU time, so the levers of issue 15
item 2 (entropy, the LM head, attention, the optimizer) are chosen from a measurement.

    python benchmarks/train_profile.py [--repeats 3] [--rows 25] [--trace FILE.json] [override ...]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch

from common import GROUP, header, step_config
from pivotal.trainer import Trainer
from roofline import matmul_peak


def distinct_tokens(batch) -> float:
    """Each prompt once (one per group) plus every response token."""
    return float(batch.prompt_mask[::GROUP].sum() + batch.response_mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25, help="operators to print (0: no profile)")
    ap.add_argument("--shapes", action="store_true",
                    help="group the matmuls by their input shapes")
    ap.add_argument("--trace", default=None, help="also write a Chrome trace here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    header("Profile of one policy update")
    cfg = step_config("optim.lr=1e-7", *args.overrides)
    trainer = Trainer(cfg, progress=False)
    trainer.train_step()  # the rollout batch, and a warm-up of every kernel
    batch = trainer.last_batch
    n_params = sum(p.numel() for p in trainer.model.parameters())
    flops = 6 * n_params * distinct_tokens(batch)
    peak = matmul_peak()
    times, faults = [], []
    for _ in range(args.repeats):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        trainer.update(copy.deepcopy(batch), trainer.step)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    median = statistics.median(times)
    print(f"{batch.size} rows, {distinct_tokens(batch):.0f} distinct tokens, "
          f"{int(batch.response_mask.sum())} response tokens | update {median:.2f} s (median of "
          f"{args.repeats}: {', '.join(f'{t:.2f}' for t in times)}) | {flops / 1e12:.2f} TFLOP | "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s | {flops / (median * peak):.1%} of peak", flush=True)
    print(f"page faults per update: {', '.join(f'{f / 1e3:.0f}k' for f in faults)} | peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(train.retain_freed_memory={cfg.train.retain_freed_memory})", flush=True)
    if not args.rows:
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=args.shapes) as prof:
        trainer.update(copy.deepcopy(batch), trainer.step)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.shapes:
        matmuls = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"]
        matmuls.sort(key=lambda e: -e.self_cpu_time_total)
        print("matmuls by input shapes: self time, calls, GFLOP/s")
        for e in matmuls[: args.rows]:
            (m, k), (_, n) = e.input_shapes[0], e.input_shapes[1]
            rate = 2 * m * k * n * e.count / max(e.self_cpu_time_total * 1e-6, 1e-9)
            print(f"  {m} x {k} @ {k} x {n}: {e.self_cpu_time_total / 1e6:.2f} s, {e.count} calls, "
                  f"{rate / 1e9:.0f}")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}")


if __name__ == "__main__":
    main()
