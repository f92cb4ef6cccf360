"""Data parallelism on this machine: 2 gloo ranks x 1 thread against 1 process x 2 threads.

The same training steps of the built-in model (the TRL-comparison batch: 4 prompts x 8 samples,
64 new tokens, so the global batch is the same for every contender) run as

  single  one process, torch.set_num_threads(2)
  ddp     torchrun --nproc-per-node 2, 1 thread per rank, dist.strategy=ddp
  fsdp    the same with dist.strategy=fsdp (FSDP2, fully_shard per decoder layer)
  fsdp_keep  fsdp with dist.reshard_after_forward=false (each layer's gathered weights kept
          from its forward to its backward: one all-gather per micro-batch instead of two)

After one warm-up step each contender times --steps steps and reports, per contender:

  samples/s        32 / step seconds (the slowest rank's step), and the ratio to single
  comm share       on rank 0, during one more (profiled) step: the wall time with a gloo
                   collective in flight (the union of torch.profiler's gloo:* events, which
                   include waiting for the other rank), over that step's seconds
  bytes per step   what rank 0 handed to collectives in that step, from the profiler's recorded
                   input shapes (FSDP2's all-gathers and reduce-scatters, DTensor gathers);
                   DDP's gradient all-reduce runs in C++ and is counted as its bucket bytes
                   (every gradient, once per optimizer step)
  train state      per-rank bytes of parameters + gradients + AdamW state (FSDP2: the rank's
                   shards), and the ratio to single; under FSDP2 the colocated engine's whole
                   replica of the policy is printed beside it

    python benchmarks/dp_scaling.py [--steps 3] [--only single,ddp,fsdp,fsdp_keep]
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


STRATEGIES = {"single": [], "ddp": ["dist.strategy=ddp"], "fsdp": ["dist.strategy=fsdp"],
              "fsdp_keep": ["dist.strategy=fsdp", "dist.reshard_after_forward=false"]}


def worker(strategy: str, steps: int, out: Path) -> None:
    import torch

    from common import step_config
    from pivotal.trainer import Trainer

    cfg = step_config("optim.lr=1e-6", *STRATEGIES[strategy],
                      f"train.output_dir={out.parent / strategy}")  # the same on every rank
    trainer = Trainer(cfg, progress=False)
    rt = trainer.runtime
    trainer.train_step()  # warm-up: caches, allocator, first collectives
    times = []
    for _ in range(steps):
        trainer.step += 1
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    comm_share, step_bytes = None, 0
    if strategy != "single":  # one more step under the profiler: time in collectives, bytes
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
        params = list(trainer.trained.parameters())
        step_bytes = _sent_bytes(events, params[0].element_size())
        if strategy == "ddp":  # the reducer's bucket all-reduces (C++, shapes unrecorded)
            step_bytes += metrics["optimizer_steps"] * sum(p.numel() * p.element_size()
                                                           for p in params)
    state, replica = _train_state_bytes(trainer)
    peaks = rt.gather_objects(state)
    result = {"strategy": strategy, "world": rt.world, "threads": torch.get_num_threads(),
              "step_s": sorted(times)[len(times) // 2], "step_bytes": step_bytes,
              "comm_share": comm_share, "train_state_bytes": max(peaks), "replica_bytes": replica,
              "samples": cfg.rollout.prompts_per_step * cfg.rollout.group_size}
    if rt.is_main:
        out.write_text(json.dumps(result))
    trainer.close()


# ----------------------------------------------------------------------------- the launcher

def run(strategy: str, steps: int, tmp: Path) -> dict:
    out = tmp / f"{strategy}.json"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    me = [str(Path(__file__).resolve()), "--worker", strategy, "--steps", str(steps),
          "--out", str(out)]
    if strategy == "single":
        env["OMP_NUM_THREADS"] = "2"
        cmd = [sys.executable, *me]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", *me]
    print(f"-- {strategy}: {' '.join(cmd[1:4])} ...", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{strategy} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


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
    print(f"{'':10} {'step s':>7} {'samples/s':>9} {'vs single':>9} {'comm':>6} "
          f"{'MiB/step':>9} {'state MiB':>9} {'vs single':>9} {'replica MiB':>11}")
    for name, r in results.items():
        rate = r["samples"] / r["step_s"]
        ratio = rate / (base["samples"] / base["step_s"]) if base else float("nan")
        mem = r["train_state_bytes"] / base["train_state_bytes"] if base else float("nan")
        comm = f"{r['comm_share']:.1%}" if r["comm_share"] is not None else "-"
        print(f"{name:10} {r['step_s']:7.2f} {rate:9.2f} {ratio:9.2f} {comm:>6} "
              f"{r['step_bytes'] / mib:9.1f} {r['train_state_bytes'] / mib:9.1f} {mem:9.2f} "
              f"{r['replica_bytes'] / mib:11.1f}")


if __name__ == "__main__":
    main()
