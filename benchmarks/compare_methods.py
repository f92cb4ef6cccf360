"""Compare credit-assignment methods on the same budget, the same seeds and the same data.

For every method config and seed: train from the same base model for the same number of steps,
evaluating held-out greedy accuracy every `--eval-every` steps. Reports mean ± std over seeds of
the final held-out accuracy (lenient and strict), wall time, response length and entropy, as a
markdown table, and draws accuracy against step and against wall time (one line per method) into
a PNG. Each run's own output directory keeps its metrics.jsonl and checkpoints.

    python benchmarks/compare_methods.py --seeds 0 1 2 --steps 30 \
        --methods demo fipo dlogp owpo nsr --out runs/compare
    python benchmarks/compare_methods.py ... task.name=svamp eval.max_new_tokens=96   # real data

Methods are names of files in configs/ (their task/rollout settings are overridden by the shared
settings below, so only the algorithm differs); extra `section.key=value` overrides apply to all.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pivotal.config import load_config
from pivotal.metrics import read_metrics
from pivotal.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Everything but the algorithm is held fixed across methods.
SHARED = ["rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=48",
          "eval.size=100", "optim.lr=1e-5", "train.tensorboard=false"]


def run_one(method: str, seed: int, steps: int, eval_every: int, out: Path,
            overrides: list[str]) -> dict:
    run_dir = out / f"{method}-seed{seed}"
    cfg = load_config(CONFIGS / f"{method}.yaml", [
        *SHARED, f"train.seed={seed}", f"train.steps={steps}", f"train.eval_every={eval_every}",
        f"train.output_dir={run_dir}", "task.options.seed=0", *overrides])
    summary = Trainer(cfg, progress=False).train()
    rows = read_metrics(run_dir / "metrics.jsonl")
    elapsed, curve = 0.0, [(0, 0.0, summary["before"]["greedy_lenient"])]
    for r in rows:
        elapsed += r.get("time_step", 0.0)
        if "eval_greedy_lenient" in r:
            curve.append((r["step"], elapsed, r["eval_greedy_lenient"]))
    curve.append((rows[-1]["step"], elapsed, summary["after"]["greedy_lenient"]))
    last = rows[-max(1, len(rows) // 5):]  # the final fifth of training
    return {"method": method, "seed": seed, "lenient": summary["after"]["greedy_lenient"],
            "strict": summary["after"]["greedy_strict"], "wall_s": elapsed, "curve": curve,
            "length": statistics.mean(r["response_length"] for r in last),
            "entropy": statistics.mean(r.get("entropy", 0.0) for r in last)}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    lines = ["| method | held-out lenient | held-out strict | wall s | length | entropy |",
             "| --- | --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        lines.append(f"| {method} | {_mean_std([r['lenient'] for r in rs])} | "
                     f"{_mean_std([r['strict'] for r in rs])} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} | "
                     f"{statistics.mean(r['length'] for r in rs):.1f} | "
                     f"{statistics.mean(r['entropy'] for r in rs):.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        points = len(rs[0]["curve"])
        steps = [rs[0]["curve"][i][0] for i in range(points)]
        acc = [statistics.mean(r["curve"][i][2] for r in rs) for i in range(points)]
        wall = [statistics.mean(r["curve"][i][1] for r in rs) for i in range(points)]
        axes[0].plot(steps, acc, marker="o", label=method)
        axes[1].plot(wall, acc, marker="o", label=method)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training wall time (s)")
    for ax in axes:
        ax.set_ylabel("held-out greedy accuracy (lenient)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["demo", "fipo", "dlogp", "owpo", "nsr"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for method in args.methods:
        for seed in args.seeds:
            result = run_one(method, seed, args.steps, args.eval_every, out, args.overrides)
            results.append(result)
            print(f"{method} seed {seed}: held-out lenient {result['lenient']:.3f} "
                  f"strict {result['strict']:.3f} in {result['wall_s']:.0f}s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "curves.png")
    print(table(results))
    print(f"plot: {out / 'curves.png'}")


if __name__ == "__main__":
    main()
