"""In-process vLLM against one local `vllm serve` on the same demo steps: step, generation and
weight-sync seconds, and the bytes a sync moves. Run from the vLLM environment, alone:

    .venv-vllm/bin/python benchmarks/vllm_server_overhead.py            # 5 steps per arm
    .venv-vllm/bin/python benchmarks/vllm_server_overhead.py --lora     # both arms with LoRA r=16

Each arm runs in its own process on configs/demo.yaml (evaluation and checkpoints off). On a
2-core machine the server shares the trainer's cores, so this measures the overhead of the
server route (HTTP, writing and reloading safetensors), not the speed-up of giving inference its
own GPUs. Medians over steps 2..N: step 1 has no sync (the weights are fresh).
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
ENGINE = {"inprocess": "rollout.engine=vllm", "server": "rollout.engine=vllm_server"}


def run_arm(arm: str, steps: int, lora: bool, out: Path) -> dict:
    from pivotal.config import load_config
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        ENGINE[arm], f"train.steps={steps}", f"train.output_dir={out}", "train.save_every=0",
        "train.eval_before_after=false", "train.tensorboard=false", "rollout.vllm_max_model_len=512",
        "rollout.vllm_kv_cache_gb=0.5",
        *(["model.lora.r=16", "model.lora.alpha=32", "optim.lr=1e-4"] if lora else [])])
    trainer = Trainer(cfg, progress=False)
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = read_metrics(out / "metrics.jsonl")[1:]
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("time_step", "time_generate", "time_sync", "time_train")}
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
    for arm in ENGINE:
        with tempfile.TemporaryDirectory() as out:
            done = subprocess.run(
                [sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--out", out,
                 *(["--lora"] if args.lora else [])], capture_output=True, text=True, check=True)
            results[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["inprocess"], results["server"]
    print(f"{'':24s}{'in-process':>12s}{'server':>12s}{'server/in-process':>20s}")
    for key in ("time_step", "time_generate", "time_sync", "time_train"):
        print(f"{key + ' (s, median)':24s}{a[key]:12.2f}{b[key]:12.2f}{b[key] / a[key]:20.2f}")
    print(f"{'sync bytes':24s}{a['sync_bytes'] or 0:12.3g}{b['sync_bytes']:12.3g}")
    print(f"{'gap max (nats)':24s}{a['gap_max']:12.2e}{b['gap_max']:12.2e}")


if __name__ == "__main__":
    main()
