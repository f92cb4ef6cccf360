"""In-process vLLM against one local `vllm serve` on the same demo steps: step, generation and
weight-sync seconds, and the bytes a sync moves. Run from the vLLM environment, alone:

    .venv-vllm/bin/python benchmarks/vllm_server_overhead.py            # 5 steps per arm
    .venv-vllm/bin/python benchmarks/vllm_server_overhead.py --lora     # LoRA r=16, 3 arms

Each arm runs in its own process on configs/demo.yaml (evaluation and checkpoints off). On a
2-core machine the server shares the trainer's cores, so this measures the overhead of the
server route (HTTP, writing and reloading safetensors), not the speed-up of giving inference its
own GPUs. Medians over steps 2..N: step 1 has no sync (the weights are fresh). A server arm's
sync is split into writing the version directory (merging LoRA in, or copying the adapters out,
included) and loading it on the server (HTTP round trips and the prefix-cache reset included).

With --lora a third arm, `server_lora` (rollout.server_weight_sync=lora), keeps the base on the
server and pushes only the adapters, which vLLM applies itself; against `server` (merged
weights through the filesystem) it shows what that saves in sync and costs in generation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = {"inprocess": ["rollout.engine=vllm"], "server": ["rollout.engine=vllm_server"],
          "server_lora": ["rollout.engine=vllm_server", "rollout.server_weight_sync=lora"]}


def run_arm(arm: str, steps: int, lora: bool, out: Path) -> dict:
    from pivotal.config import load_config
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        *ENGINE[arm], f"train.steps={steps}", f"train.output_dir={out}", "train.save_every=0",
        "train.eval_before_after=false", "train.tensorboard=false", "rollout.vllm_max_model_len=512",
        "rollout.vllm_kv_cache_gb=0.5",
        *(["model.lora.r=16", "model.lora.alpha=32", "optim.lr=1e-4"] if lora else [])])
    trainer = Trainer(cfg, progress=False)
    try:
        trainer.train()
        split = getattr(getattr(trainer.engine, "route", None), "seconds", {})
    finally:
        trainer.close()
    rows = read_metrics(out / "metrics.jsonl")[1:]
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("time_step", "time_generate", "time_sync", "time_train")}
    # the pushes before steps 2..N (a lora route's first push, at start-up, is left out)
    med.update({f"time_sync_{k}": statistics.median(v[-len(rows):]) for k, v in split.items()})
    return {"arm": arm, **med, "sync_bytes": rows[-1].get("sync_bytes"),
            "gap_max": max(r["sampler_logprob_diff_max"] for r in rows),
            "generated_tokens": statistics.median(r["tokens"] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--arm", choices=list(ENGINE), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.steps, args.lora, Path(args.out))))
        return
    results = {}
    arms = list(ENGINE) if args.lora else ["inprocess", "server"]
    for arm in arms:
        with tempfile.TemporaryDirectory() as out:
            done = subprocess.run(
                [sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--out", out,
                 *(["--lora"] if args.lora else [])], capture_output=True, text=True, check=True)
            results[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    a = results["inprocess"]
    print(f"{'':26s}" + "".join(f"{arm:>13s}" for arm in arms)
          + "".join(f"{arm + '/inprocess':>23s}" for arm in arms[1:]))
    for key in ("time_step", "time_generate", "time_sync", "time_sync_write", "time_sync_load",
                "time_train"):
        values = [results[arm].get(key) for arm in arms]
        print(f"{key + ' (s, median)':26s}" + "".join(
            f"{v:13.2f}" if v is not None else f"{'-':>13s}" for v in values) + "".join(
            f"{v / a[key]:23.2f}" if v is not None and a.get(key) else f"{'-':>23s}"
            for v in values[1:]))
    print(f"{'sync bytes':26s}"
          + "".join(f"{results[arm]['sync_bytes'] or 0:13.3g}" for arm in arms))
    print(f"{'gap max (nats)':26s}" + "".join(f"{results[arm]['gap_max']:13.2e}" for arm in arms))


if __name__ == "__main__":
    main()
