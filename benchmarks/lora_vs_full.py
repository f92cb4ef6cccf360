"""Full fine-tuning against LoRA on the built-in demo: step time, memory, checkpoint size, and the
held-out gain after the demo's steps, each arm in its own process (so each peak RSS is its own).

    python benchmarks/lora_vs_full.py                 # 30 steps each, ~30 minutes on 2 cores
    python benchmarks/lora_vs_full.py --steps 5 --eval-size 20    # a quick look

The LoRA arm: r=16, alpha=32 on every linear layer, lr 1e-4 (10x the full fine-tuning lr of
1e-5: LoRA's best lr sits about 10x above full fine-tuning's, Schulman et al., "LoRA Without
Regret", Thinking Machines 2025). Everything else is configs/demo.yaml. Run it alone: two
cores shared with another job measure the contention.

Printed per arm: median step and training-phase seconds, trained-state bytes (weights +
gradients + AdamW moments, counted from the tensors), the process's peak RSS, the last
checkpoint's size, held-out greedy accuracy before -> after; for LoRA also the seconds to build
the merged weights a separate rollout engine receives (`pivotal.lora.merged_weights`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "full": [],
    "lora": ["model.lora.r=16", "model.lora.alpha=32", "optim.lr=1e-4"],
}


def run_arm(arm: str, steps: int, eval_size: int, out: Path) -> dict:
    import torch

    from pivotal import checkpoint as ckpt
    from pivotal.config import load_config
    from pivotal.lora import merged_weights
    from pivotal.metrics import read_metrics
    from pivotal.trainer import Trainer
    from pivotal.update import trainable_parameters

    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"train.steps={steps}", f"eval.size={eval_size}", f"train.output_dir={out}",
        "train.tensorboard=false", *ARMS[arm]])
    trainer = Trainer(cfg, progress=False)
    summary = trainer.train()
    rows = read_metrics(out / "metrics.jsonl")
    trainable = trainable_parameters(trainer.trained)
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    moments = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values()
                  for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    result = {
        "arm": arm, "lr": cfg.optim.lr,
        "trainable_params": sum(p.numel() for p in trainable),
        "all_params": sum(p.numel() for p in trainer.model.parameters()),
        "step_s": statistics.median(r["time_step"] for r in rows),
        "train_s": statistics.median(r["time_train"] for r in rows),
        "state_mb": (weights + grads + moments) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checkpoint_mb": ckpt.directory_bytes(Path(summary["final_checkpoint"])) / 2**20,
        "before": summary["before"]["greedy_lenient"], "after": summary["after"]["greedy_lenient"],
    }
    if trainer.adapters is not None:
        merged = Path(summary["final_checkpoint"]) / "merged"
        result["checkpoint_mb"] -= ckpt.directory_bytes(merged) / 2**20  # the adapters alone
        t0 = time.perf_counter()
        n = sum(t.numel() for _, t in merged_weights(trainer.model))
        result["merge_s"] = time.perf_counter() - t0
        result["merged_params"] = n
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # one arm, in a child
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.steps, args.eval_size, Path(args.out))))
        return
    results = {}
    for arm in ARMS:
        out = Path(tempfile.mkdtemp(prefix=f"lora-bench-{arm}-"))
        print(f"-- {arm}: {args.steps} steps, output in {out}", flush=True)
        child = subprocess.run([sys.executable, __file__, "--arm", arm, "--steps", str(args.steps),
                                "--eval-size", str(args.eval_size), "--out", str(out)],
                               capture_output=True, text=True, cwd=ROOT)
        if child.returncode != 0:
            sys.exit(f"{arm} failed:\n{child.stderr[-3000:]}")
        results[arm] = json.loads(child.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    print(f"\n{'':22}{'full':>12}{'lora':>12}{'lora/full':>11}")
    for key, fmt in (("trainable_params", "{:,.0f}"), ("step_s", "{:.2f}"), ("train_s", "{:.2f}"),
                     ("state_mb", "{:.0f}"), ("peak_rss_mb", "{:.0f}"), ("checkpoint_mb", "{:.1f}")):
        ratio = lora[key] / full[key] if full[key] else float("nan")
        print(f"{key:22}{fmt.format(full[key]):>12}{fmt.format(lora[key]):>12}{ratio:>10.3f}x")
    for r in (full, lora):
        print(f"{r['arm']:5} lr {r['lr']:g}: held-out greedy (lenient) {100 * r['before']:.0f}% -> "
              f"{100 * r['after']:.0f}% after {args.steps} steps")
    print(f"merged weights for a separate engine: {lora['merge_s']:.3f} s for "
          f"{lora['merged_params']:,} values")


if __name__ == "__main__":
    main()
