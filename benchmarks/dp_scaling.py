"""Data parallelism on this machine: 2 gloo ranks x 1 thread against 1 process x 2 threads.

The same training steps of the built-in model (the TRL-comparison batch: 4 prompts x 8 samples,
64 new tokens, so the global batch is the same for every contender) run as

  single  one process, torch.set_num_threads(2)
  ddp     torchrun --nproc-per-node 2, 1 thread per rank, dist.strategy=ddp
  fsdp    the same with dist.strategy=fsdp (FSDP2, fully_shard per decoder layer)
  fsdp_keep  fsdp with dist.reshard_after_forward=false (each layer's gathered weights kept
          from its forward to its backward: one all-gather per micro-batch instead of two)
  alone1  one process, 1 thread, half the batch (one rank's share), alone on the machine
  pair    two alone1 processes at once (the same work each: alone1's), no communication: what
          2 ranks x 1 thread can do on this machine with no data-parallel code at all, the
          ceiling for ddp

Where ddp falls short of single, the three ratios say why (they multiply to ddp / single):
  alone1 x 2 / single   what a second thread gives one process (below 1: 2 threads scale
                        better than 2 processes would even without sharing the machine)
  pair / (alone1 x 2)   what the two processes cost each other (memory bandwidth, caches)
  ddp / pair            what data parallelism itself costs (collectives, waiting, the code)

After one warm-up step each contender times --steps steps and reports, per contender:

  samples/s        samples / median step seconds (the slowest rank's step; pair: the slower
                   process, both processes' samples)
  tok/s, vs single response tokens generated and trained on per second over all the timed steps
                   (every rank's tokens over the slowest rank's wall time), and its ratio to
                   single: the throughput ratio, which unlike samples/s does not depend on how
                   long this contender's rollouts happened to be
  gen s, train s   the step's generation and update seconds (the slowest rank's); below the
                   table, each rank's (each pair process's) own seconds and response tokens
                   summed over the timed steps, which show how unevenly the ranks' rollouts load
                   them
  comm share       on rank 0, during one more (profiled) step: the wall time with a gloo
                   collective in flight (the union of torch.profiler's gloo:* events, which
                   include waiting for the other rank), over that step's seconds
  transfer share   the part of that which is moving data, not waiting: every rank issues the
                   same collectives in the same order, and the rank that arrives last at one
                   waits for nobody, so each collective's shortest duration over the ranks is
                   its transfer time; their sum over the step's seconds
  bytes per step   what rank 0 handed to collectives in that step, from the profiler's recorded
                   input shapes (FSDP2's all-gathers and reduce-scatters, DTensor gathers);
                   DDP's gradient all-reduce runs in C++ and is counted as its bucket bytes
                   (every gradient, once per optimizer step)
  train state      per-rank bytes of parameters + gradients + AdamW state (FSDP2: the rank's
                   shards), and the ratio to single; under FSDP2 the colocated engine's whole
                   replica of the policy is printed beside it

    python benchmarks/dp_scaling.py [--steps 3] [--only single,ddp,fsdp,fsdp_keep,alone1,pair]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PROMPTS

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- one contender

# collective ops whose recorded input shapes give the bytes this rank sends: (name, input index)
SHAPED_COLLECTIVES = {"c10d::_allgather_base_": 1, "c10d::_reduce_scatter_base_": 1,
                      "_c10d_functional::all_gather_into_tensor": 0,
                      "_c10d_functional::all_reduce": 0}


def _sent_bytes(events, element_size: int) -> int:
    """Bytes this rank handed to collectives, from the profiler's recorded input shapes."""
    total = 0
    for e in events:
        index = SHAPED_COLLECTIVES.get(e.name)
        if index is not None and len(e.input_shapes) > index:
            n = 1
            for d in e.input_shapes[index]:
                n *= d
            total += n * element_size
    return total


def _merged_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _transfer_seconds(events, runtime) -> float | None:
    """Sum over this step's collectives of the shortest duration any rank saw (None when the
    ranks' sequences of gloo events do not line up)."""
    gloo = sorted((e for e in events if e.name.startswith("gloo:")),
                  key=lambda e: e.time_range.start)
    mine = [(e.name, (e.time_range.end - e.time_range.start) / 1e6) for e in gloo]
    every = runtime.gather_objects(mine)
    if any([name for name, _ in r] != [name for name, _ in mine] for r in every):
        return None
    return sum(min(r[i][1] for r in every) for i in range(len(mine)))


def _train_state_bytes(trainer) -> tuple[int, int]:
    """(parameters + gradients + optimizer state bytes of this rank, whole-replica bytes)."""
    import torch

    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    params = list(trainer.trained.parameters())
    state = sum(local(p) for p in params) + sum(local(p.grad) for p in params if p.grad is not None)
    for s in trainer.optimizer.state.values():
        state += sum(local(v) for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    replica = 0
    if trainer.whole_policy is not trainer.model:
        replica = sum(local(p) for p in trainer.whole_policy.parameters())
    return state, replica


HALF = [f"rollout.prompts_per_step={PROMPTS // 2}"]  # one rank's share of the global batch
STRATEGIES = {"single": [], "ddp": ["dist.strategy=ddp"], "fsdp": ["dist.strategy=fsdp"],
              "fsdp_keep": ["dist.strategy=fsdp", "dist.reshard_after_forward=false"],
              "alone1": HALF, "pair": HALF}
ONE_THREAD_ALONE = ("alone1", "pair")  # one-process contenders with 1 thread


def worker(strategy: str, steps: int, out: Path) -> None:
    import torch

    from common import step_config
    from pivotal.trainer import Trainer

    cfg = step_config("optim.lr=1e-6", *STRATEGIES[strategy],  # the same on every rank
                      f"train.output_dir={out.parent / out.stem}")
    trainer = Trainer(cfg, progress=False)
    rt = trainer.runtime
    own = []  # this rank's own (unmerged) step metrics
    local_step = trainer._train_step

    def recorded_step():
        metrics, rows = local_step()
        own.append(metrics)
        return metrics, rows
    trainer._train_step = recorded_step
    trainer.train_step()  # warm-up: caches, allocator, first collectives
    times, phases = [], []
    for _ in range(steps):
        trainer.step += 1
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        times.append(time.perf_counter() - t0)
        phases.append((metrics["time_generate"], metrics["time_train"]))
    # per rank, over the timed steps: (generation s, update s, response tokens), summed
    own_sums = [sum(m[k] for m in own[1:steps + 1]) for k in ("time_generate", "time_train", "tokens")]
    per_rank = rt.gather_objects(own_sums)
    comm_share, transfer_share, step_bytes = None, None, 0
    if rt.active:  # one more step under the profiler: time in collectives, bytes
        from torch.profiler import ProfilerActivity, profile
        trainer.step += 1
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            metrics = trainer.train_step()
            wall = time.perf_counter() - t0
        events = prof.events()
        spans = [(e.time_range.start / 1e6, e.time_range.end / 1e6) for e in events
                 if e.name.startswith("gloo:")]
        comm_share = _merged_seconds(spans) / wall
        transfer = _transfer_seconds(events, rt)
        transfer_share = None if transfer is None else transfer / wall
        params = list(trainer.trained.parameters())
        step_bytes = _sent_bytes(events, params[0].element_size())
        if strategy == "ddp":  # the reducer's bucket all-reduces (C++, shapes unrecorded)
            step_bytes += metrics["optimizer_steps"] * sum(p.numel() * p.element_size()
                                                           for p in params)
    state, replica = _train_state_bytes(trainer)
    peaks = rt.gather_objects(state)
    median = sorted(range(steps), key=times.__getitem__)[steps // 2]
    result = {"strategy": strategy, "world": rt.world, "threads": torch.get_num_threads(),
              "step_s": times[median], "gen_s": phases[median][0], "train_s": phases[median][1],
              "wall_s": sum(times), "tokens": sum(t for _, _, t in per_rank),
              "step_bytes": step_bytes,
              "comm_share": comm_share, "transfer_share": transfer_share, "per_rank": per_rank,
              "train_state_bytes": max(peaks), "replica_bytes": replica,
              "samples": cfg.rollout.prompts_per_step * cfg.rollout.group_size}
    if rt.is_main:
        out.write_text(json.dumps(result))
    trainer.close()


# ----------------------------------------------------------------------------- the launcher

def run(strategy: str, steps: int, tmp: Path) -> dict:
    """Run one contender (pair: its two processes at once) and return its result."""
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "2" if strategy == "single" else "1"}
    launch = [] if strategy == "single" or strategy in ONE_THREAD_ALONE else [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    outs = [tmp / f"{strategy}{i}.json" for i in range(2 if strategy == "pair" else 1)]
    cmds = [[sys.executable, *launch, str(Path(__file__).resolve()), "--worker", strategy,
             "--steps", str(steps), "--out", str(out)] for out in outs]
    print(f"-- {strategy}: {len(cmds)} x {' '.join(cmds[0][1:4])} ...", flush=True)
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    for p in procs:
        err = p.communicate()[1]
        if p.returncode != 0:
            sys.exit(f"{strategy} failed:\n{err[-3000:]}")
    results = [json.loads(out.read_text()) for out in outs]
    slowest = max(results, key=lambda r: r["step_s"])  # the pair is done when both are
    return {**slowest, "samples": sum(r["samples"] for r in results),
            "tokens": sum(r["tokens"] for r in results),
            "wall_s": max(r["wall_s"] for r in results),
            "per_rank": [pr for r in results for pr in r["per_rank"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default=",".join(STRATEGIES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.out)
    import torch
    print(f"== data parallelism: 2 ranks x 1 thread vs 1 process x 2 threads | torch "
          f"{torch.__version__} | {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run(s, args.steps, Path(tmp)) for s in args.only.split(",")}
    base = results.get("single")
    mib = 2 ** 20
    print(f"{'':10} {'step s':>7} {'gen s':>6} {'train s':>7} {'samples/s':>9} {'tok/s':>6} "
          f"{'vs single':>9} "
          f"{'comm':>6} {'transfer':>8} "
          f"{'MiB/step':>9} {'state MiB':>9} {'vs single':>9} {'replica MiB':>11}")
    for name, r in results.items():
        rate = r["samples"] / r["step_s"]
        tok_rate = r["tokens"] / r["wall_s"]
        ratio = tok_rate / (base["tokens"] / base["wall_s"]) if base else float("nan")
        mem = r["train_state_bytes"] / base["train_state_bytes"] if base else float("nan")
        comm = f"{r['comm_share']:.1%}" if r["comm_share"] is not None else "-"
        transfer = f"{r['transfer_share']:.1%}" if r.get("transfer_share") is not None else "-"
        print(f"{name:10} {r['step_s']:7.2f} {r['gen_s']:6.2f} {r['train_s']:7.2f} {rate:9.2f} "
              f"{tok_rate:6.1f} "
              f"{ratio:9.2f} {comm:>6} {transfer:>8} "
              f"{r['step_bytes'] / mib:9.1f} {r['train_state_bytes'] / mib:9.1f} {mem:9.2f} "
              f"{r['replica_bytes'] / mib:11.1f}")
    for name, r in results.items():
        print(f"{name}: per rank (process) over the timed steps (gen s, update s, response "
              f"tokens): " + " | ".join(f"{g:.1f}, {u:.1f}, {int(t)}" for g, u, t in r["per_rank"]))
    rate = {name: r["tokens"] / r["wall_s"] for name, r in results.items()}
    if {"single", "alone1", "pair"} <= rate.keys():
        print(f"tokens/s: 2 x alone1 / single {2 * rate['alone1'] / rate['single']:.2f} (a second "
              f"process vs a second thread) | pair / (2 x alone1) "
              f"{rate['pair'] / (2 * rate['alone1']):.2f} (the processes' cost to each other)"
              + "".join(f" | {n} / pair {rate[n] / rate['pair']:.2f}"
                        for n in ("ddp", "fsdp", "fsdp_keep") if n in rate))


if __name__ == "__main__":
    main()
