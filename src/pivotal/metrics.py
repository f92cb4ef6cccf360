"""Metric sinks: a JSONL file (always), TensorBoard and Weights & Biases (optional); console lines.

On resume the JSONL file is cut back to the resumed step, so a resumed run's file reads exactly
like an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("pivotal.metrics")


@dataclass
class StepState:
    """What one training step accumulates besides its metrics: seconds per phase, the metrics of
    the stages after scoring (active labels, hints)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("sync", "generate", "score", "hints", "train"), 0.0))
    stage_metrics: dict = field(default_factory=dict)
    sync_metrics: dict = field(default_factory=dict)  # bytes the engine's weight sync moved

    def timing_metrics(self) -> dict[str, float]:
        return {f"time_{k}": v for k, v in self.seconds.items()}


def gap_warning(rollout_cfg, metrics: dict, step: int) -> str | None:
    """The warning for a step whose sampler log-probs stray from the trainer's (above
    `rollout.gap_warn`): the sampler is not running the trainer's weights."""
    r, gap = rollout_cfg, metrics.get("sampler_logprob_diff", 0.0)
    if not (r.gap_warn and gap > r.gap_warn):
        return None
    return (f"step {step}: the sampler's log-probs differ from the trainer's by {gap:.3g} nats per "
            f"token on average (rollout.gap_warn={r.gap_warn:g}): the {r.engine} engine is not "
            "sampling from the trainer's weights (a stale or failed sync?) or runs them at lower "
            "precision")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, tensorboard: bool = True, wandb: bool = False,
                 resume_step: int | None = None, run_config: dict | None = None):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; TensorBoard logging is off")
        self._wandb = None
        if wandb:
            try:
                import wandb as wb
                self._wandb = wb.init(project="pivotal", config=run_config or {},
                                      dir=str(self.dir), resume="allow")
            except ImportError:
                log.warning("wandb is not installed; W&B logging is off")

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def group_metrics(batch) -> dict:
    """The step line's rollout metrics of a scored batch: reward, accuracy, lengths, truncation,
    the share of groups whose rewards all agree."""
    from .algos import group_stats

    lengths = batch.response_lengths
    return {"reward": batch.rewards.mean().item(),
            "accuracy": batch.correct.float().mean().item(),
            "response_length": lengths.mean().item(),
            "response_length_max": lengths.max().item(),
            "truncation_rate": batch.truncated.float().mean().item(),
            "zero_variance_groups": group_stats(batch.rewards, batch.group_ids)["zero_variance_frac"]}


SUMMED_METRICS = ("tokens", "labels_queried")
SHARED_METRICS = ("labels_queried_total", "sync_bytes")  # already over every rank: the same on each


def merge_rank_metrics(parts: list[tuple[dict, float]]) -> dict:
    """One step's metrics of every data-parallel rank -> the step's metrics, as one process with
    all ranks' rows would have logged them. `parts` holds (metrics, rows) per rank in rank order.

    Counts (`SUMMED_METRICS`) add; totals already reduced (`SHARED_METRICS`) are kept; `*_max`
    take the max and `*_min` the min; `time_*` take the slowest rank (the step waits for it);
    other numbers are means weighted by the rank's rows;
    anything else (a cause string) is the first rank's. Metrics the update already reduced over
    ranks are the same on every rank, so any of these rules keeps them.
    """
    merged: dict = {}
    total_rows = sum(rows for _, rows in parts) or 1.0
    for key in dict.fromkeys(k for metrics, _ in parts for k in metrics):
        present = [(m[key], rows) for m, rows in parts if key in m]
        values = [v for v, _ in present]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = values[0]
        elif key in SUMMED_METRICS:
            merged[key] = sum(values)
        elif key in SHARED_METRICS:
            merged[key] = values[0]
        elif key.endswith("_max") or key.startswith("time_"):
            merged[key] = max(values)
        elif key.endswith("_min"):
            merged[key] = min(values)
        else:
            weight = sum(rows for _, rows in present) or total_rows
            merged[key] = sum(v * rows for v, rows in present) / weight if weight else values[0]
    if "tokens" in merged and merged.get("time_step"):
        merged["tokens_per_s"] = merged["tokens"] / merged["time_step"]
    return merged


# ---------------------------------------------------------------------------- console lines

def format_step(step: int, total: int, m: dict) -> str:
    if m.get("skipped"):
        why = f"non-finite {m['nonfinite']}" if m.get("nonfinite") else "all groups agree"
        return f"step {step}/{total} | skipped ({why}; weights unchanged) | reward {m['reward']:.3f}"
    labels = (f" | labels {m['labels_queried']} (total {m['labels_queried_total']}) pseudo-acc "
              f"{m['pseudo_label_accuracy']:.2f}" if "labels_queried" in m else "")
    if "labels_gated" in m:  # CARE: prompts its probe trusts, kept out of the query
        labels += f" gated {m['labels_gated']:.0f}"
    if m.get("credit_modulated_frac"):  # a gated credit: its reach and mean multiplier
        labels += f" | credit x{m['credit_mean']:.3f} on {100 * m['credit_modulated_frac']:.1f}%"
    shift_keys = [k for k in m if k.startswith("shift_frac_")]  # the live shift monitor
    shift = (f" | shifted(|Δlogp|>{shift_keys[0][len('shift_frac_'):]}) {m[shift_keys[0]]:.3f}"
             if shift_keys else "")
    return (f"step {step}/{total} | reward {m['reward']:.3f} acc {m['accuracy']:.3f}{labels}{shift} "
            f"| len {m['response_length']:.1f} trunc {m['truncation_rate']:.2f} "
            f"| ent {m.get('entropy', math.nan):.3f} clip {m.get('clip_frac_low', 0):.3f}/"
            f"{m.get('clip_frac_high', 0):.3f} gnorm {m.get('grad_norm', math.nan):.3f} "
            f"zero-var {m['zero_variance_groups']:.2f} | {m['tokens_per_s']:.0f} tok/s "
            f"| gen {m['time_generate']:.1f}s score {m['time_score']:.1f}s "
            + (f"hints {m['time_hints']:.1f}s " if m.get("time_hints") else "")
            + f"train {m['time_train']:.1f}s")


def format_eval(tag: str, s: dict) -> str:
    return (f"eval {tag}: greedy accuracy strict {100 * s['greedy_strict']:.1f}% | lenient "
            f"{100 * s['greedy_lenient']:.1f}% | boxed {100 * s['boxed_rate']:.1f}% "
            f"| mean length {s['greedy_mean_length']:.1f} ({s['num_problems']} held-out problems)")


def format_before_after(before: dict, after: dict, n: int) -> str:
    rows = [("strict (boxed answer only)", "greedy_strict"),
            ("lenient (last number if no box)", "greedy_lenient"),
            ("writes a \\boxed{} answer", "boxed_rate")]
    lines = [f"held-out greedy accuracy on {n} problems: before -> after"]
    for label, key in rows:
        b, a = 100 * before[key], 100 * after[key]
        lines.append(f"  {label:34s} {b:5.1f}% -> {a:5.1f}%  ({a - b:+.1f} points)")
    return "\n".join(lines)
