"""Compare credit-assignment methods on the same budget, the same seeds and the same data.

For every method config and seed: train from the same base model for the same number of steps,
evaluating held-out greedy accuracy every `--eval-every` steps. Reports mean ± std over seeds of
the final held-out accuracy (lenient and strict), wall time, response length and entropy, as a
markdown table, and draws accuracy against step and against wall time (one line per method) into
a PNG. Each run's own output directory keeps its config, metrics.jsonl, result.json and final model
(its optimizer state is deleted once the run is done); a run whose
result.json exists is not repeated, so an interrupted comparison continues where it stopped
(delete the run's `claimed` file first), and several processes given the same arguments share
the work (each claims a run before starting it; with 2 cores, two processes with
OMP_NUM_THREADS=1 finish sooner than one with two threads).

    python benchmarks/compare_methods.py --base demo --seeds 0 1 2 --steps 20 \
        --methods demo fipo dlogp divergence clip_rescue owpo cag --out runs/compare-arith
    python benchmarks/compare_methods.py --base svamp ... --out runs/compare-svamp   # real data

The experiment (model, task, rollout budget, reward, evaluation) comes from the `--base` config;
each method config in configs/ contributes only its `algo` and `optim` sections and its
`reward.labels` / `label_budget` / `label_options` / `unlabeled_weight` (active labels), so only the
algorithm differs.
Extra `section.key=value` overrides apply to every run. The base model's held-out evaluation is
computed once and shared: greedy decoding of the same problems by the same model gives the same
result for every method and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import yaml

from pivotal.config import load_config
from pivotal.metrics import read_metrics
from pivotal.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHOD_SECTIONS = ("algo", "optim")
METHOD_REWARD_KEYS = ("labels", "label_budget", "label_options", "unlabeled_weight")


def _yaml(name: str) -> dict:
    path = CONFIGS / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(f"no config named '{name}' in {CONFIGS}")
    return yaml.safe_load(path.read_text()) or {}


def experiment_config(base: str, method: str) -> dict:
    """The base config's experiment with the method config's algorithm: a plain dict."""
    merged, recipe = _yaml(base), _yaml(method)
    for section in METHOD_SECTIONS:
        merged[section] = recipe.get(section, {})
    reward = dict(merged.get("reward") or {})
    reward.update({k: v for k, v in (recipe.get("reward") or {}).items()
                   if k in METHOD_REWARD_KEYS})
    merged["reward"] = reward
    merged.pop("train", None)
    return merged


def run_one(base: str, method: str, seed: int, steps: int, eval_every: int, out: Path,
            overrides: list[str]) -> dict | None:
    run_dir = out / f"{method}-seed{seed}"
    done = run_dir / "result.json"
    if done.exists():
        return {**json.loads(done.read_text()), **rollout_stats(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # a claim, so that several processes can share one comparison (one per core)
        os.close(os.open(run_dir / "claimed", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        print(f"{run_dir} is being run by another process; skipped", flush=True)
        return None
    spec = run_dir / "experiment.yaml"
    spec.write_text(yaml.safe_dump(experiment_config(base, method), sort_keys=False))
    cfg = load_config(spec, [f"train.seed={seed}", f"train.steps={steps}",
                             f"train.eval_every={eval_every}", f"train.output_dir={run_dir}",
                             "train.tensorboard=false", "train.save_every=0", *overrides])
    trainer = Trainer(cfg, progress=False)
    base_eval = out / "base_eval.json"
    if base_eval.exists():  # same model, same problems, greedy: the same for every run
        trainer.history["before"] = json.loads(base_eval.read_text())
    summary = trainer.train()
    if not base_eval.exists():
        base_eval.write_text(json.dumps(summary["before"]))
    rows = read_metrics(run_dir / "metrics.jsonl")
    elapsed, curve = 0.0, [(0, 0.0, summary["before"]["greedy_lenient"])]
    for r in rows:
        elapsed += r.get("time_step", 0.0)
        if "eval_greedy_lenient" in r and r["step"] != rows[-1]["step"]:
            curve.append((r["step"], elapsed, r["eval_greedy_lenient"]))
    curve.append((rows[-1]["step"], elapsed, summary["after"]["greedy_lenient"]))
    last = rows[-max(1, len(rows) // 5):]  # the final fifth of training
    result = {"method": method, "seed": seed, "lenient": summary["after"]["greedy_lenient"],
              "strict": summary["after"]["greedy_strict"], "wall_s": elapsed, "curve": curve,
              "before": summary["before"]["greedy_lenient"],
              "length": statistics.mean(r["response_length"] for r in last),
              "entropy": statistics.mean(r.get("entropy", 0.0) for r in last),
              "reward": statistics.mean(r.get("reward", 0.0) for r in last)}
    done.write_text(json.dumps(result))
    # A finished run is never resumed: keep its model, drop the optimizer state (1.1 GB per run
    # for the built-in model, which filled the disk on a 24-run comparison).
    for state in run_dir.glob("checkpoints/*/trainer_state.pt"):
        state.unlink()
    return {**result, **rollout_stats(run_dir)}


def rollout_stats(run_dir: Path) -> dict:
    """What the run's own rollouts say, read from its metrics at no cost:
      train_curve  (step, elapsed s, true accuracy of the step's rollouts): a learning curve (the
                   true accuracy, not the reward: under active labels the reward uses pseudo-labels)
      signal       share of groups whose rewards differ, over all steps: only those carry a
                   gradient, whatever the credit method does with the advantage
      truncated    share of responses cut by the token cap, over all steps"""
    elapsed, curve = 0.0, []
    rows = read_metrics(run_dir / "metrics.jsonl")
    for r in rows:
        elapsed += r.get("time_step", 0.0)
        curve.append((r["step"], elapsed, r["accuracy"]))
    return {"train_curve": curve,
            "signal": statistics.mean(1 - r.get("zero_variance_groups", 0.0) for r in rows),
            "truncated": statistics.mean(r.get("truncation_rate", 0.0) for r in rows)}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _methods(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in results))


def table(results: list[dict]) -> str:
    lines = [("| method | seeds | held-out lenient (before → after) | held-out strict | "
             "train acc, last 3 steps | groups with signal | truncated | wall s | length | "
             "entropy |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in _methods(results):
        rs = [r for r in results if r["method"] == method]
        tail = [statistics.mean(a for _, _, a in r["train_curve"][-3:]) for r in rs]
        lines.append(f"| {method} | {len(rs)} | {rs[0]['before']:.3f} → "
                     f"{_mean_std([r['lenient'] for r in rs])} | "
                     f"{_mean_std([r['strict'] for r in rs])} | {_mean_std(tail)} | "
                     f"{statistics.mean(r['signal'] for r in rs):.0%} | "
                     f"{statistics.mean(r['truncated'] for r in rs):.0%} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} | "
                     f"{statistics.mean(r['length'] for r in rs):.1f} | "
                     f"{statistics.mean(r['entropy'] for r in rs):.3f} |")
    return "\n".join(lines)


def _smooth(values: list[float], width: int = 3) -> list[float]:
    """Trailing moving average: per-step rollout accuracy of 32 samples is noisy."""
    return [statistics.mean(values[max(0, i - width + 1):i + 1]) for i in range(len(values))]


def plot(results: list[dict], path: Path) -> None:
    """Rollout accuracy vs step and vs wall time (mean over seeds, smoothed), and held-out
    accuracy before and after training (mean ± std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    methods = _methods(results)
    for i, method in enumerate(methods):
        rs = [r for r in results if r["method"] == method]
        n = min(len(r["train_curve"]) for r in rs)
        steps = [rs[0]["train_curve"][j][0] for j in range(n)]
        acc = _smooth([statistics.mean(r["train_curve"][j][2] for r in rs) for j in range(n)])
        wall = [statistics.mean(r["train_curve"][j][1] for r in rs) for j in range(n)]
        axes[0].plot(steps, acc, marker=".", label=method)
        axes[1].plot(wall, acc, marker=".", label=method)
        after = [r["lenient"] for r in rs]
        err = statistics.stdev(after) if len(after) > 1 else 0.0
        axes[2].bar(i, statistics.mean(after), yerr=err, capsize=4, color=f"C{i}")
    axes[2].axhline(results[0]["before"], color="k", ls="--", lw=1, label="base model")
    axes[2].set_xticks(range(len(methods)), methods, rotation=30)
    axes[2].set_ylabel("held-out greedy accuracy (lenient)")
    axes[2].set_title("held-out after training (mean ± std over seeds)")
    axes[2].legend()
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training wall time (s)")
    for ax in axes[:2]:
        ax.set_ylabel("rollout accuracy (3-step moving average)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="demo", help="config giving the experiment (task, budget)")
    ap.add_argument("--methods", nargs="+",
                    default=["demo", "fipo", "dlogp", "divergence", "clip_rescue", "owpo", "cag"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:  # seeds outermost: a stopped comparison still covers every method
        for method in args.methods:
            result = run_one(args.base, method, seed, args.steps, args.eval_every, out,
                             args.overrides)
            if result is None:
                continue
            results.append(result)
            print(f"{method} seed {seed}: held-out lenient {result['lenient']:.3f} "
                  f"strict {result['strict']:.3f} in {result['wall_s']:.0f}s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "curves.png")
    print(table(results))
    print(f"plot: {out / 'curves.png'}")


if __name__ == "__main__":
    main()
