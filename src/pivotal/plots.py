"""Training curves as a PNG: what a person looks at first after a run.

`plot_run(output_dir)` reads `<output_dir>/metrics.jsonl` (and `summary.json` when present) and
writes `<output_dir>/curves.png`: reward/accuracy, response length, entropy, clip fractions,
gradient norm, the per-step time split, and the live shift monitor's fractions when it was on.
"""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import read_metrics

PANELS = [
    ("reward and accuracy (training samples)", ["reward", "accuracy"]),
    ("response length (tokens)", ["response_length", "response_length_max"]),
    ("entropy (nats / token)", ["entropy"]),
    ("clip fractions", ["clip_frac_low", "clip_frac_high"]),
    ("gradient norm (before clipping)", ["grad_norm"]),
    ("seconds per step", ["time_generate", "time_score", "time_train"]),
]


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    rows = [r for r in read_metrics(output_dir / "metrics.jsonl") if not r.get("skipped")]
    if not rows:
        raise ValueError(f"{output_dir / 'metrics.jsonl'} has no training steps to plot")
    steps = [r["step"] for r in rows]
    panels = list(PANELS)
    shift_keys = [k for k in rows[0] if k.startswith("shift_frac_")]
    if shift_keys:  # the live shift monitor was on
        panels.append(("tokens changed since the initial policy (|Δlog p| > τ)", shift_keys))
    n_rows = -(-len(panels) // 3)
    fig, axes = plt.subplots(n_rows, 3, figsize=(14, 3.75 * n_rows))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            if key in rows[0]:
                ax.plot(steps, [r.get(key) for r in rows], label=key, marker=".", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    title = f"pivotal run: {output_dir}"
    summary_path = output_dir / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        if "before" in s and "after" in s:
            title += (f"\nheld-out greedy accuracy (lenient) {100 * s['before']['greedy_lenient']:.1f}%"
                      f" -> {100 * s['after']['greedy_lenient']:.1f}%, strict "
                      f"{100 * s['before']['greedy_strict']:.1f}% -> "
                      f"{100 * s['after']['greedy_strict']:.1f}%")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out) if out else output_dir / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
