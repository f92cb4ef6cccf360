"""Cost of the live shift monitor (`train.shift_monitor`) against the training step it rides on.

Trains the built-in model at the TRL-comparison configuration (4 prompts x 8 samples, 64 new
tokens) with the monitor on, and prints, per step and on average, the monitor's own time
(`time_shift_monitor`: one no-grad forward of the initial model over `--rows` responses) as a
fraction of the whole step, measured in the same steps. With `--rows 0` it scores every response.

    python benchmarks/shift_monitor_overhead.py [--steps 3] [--rows 8]
"""

from __future__ import annotations

import argparse
import statistics

from common import header, step_config
from pivotal.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    header(f"live shift monitor overhead, {args.rows or 'all'} responses scored per step")
    cfg = step_config("train.shift_monitor=true", f"train.shift_monitor_rows={args.rows}",
                      *args.overrides)
    trainer = Trainer(cfg, progress=False)
    trainer.train_step()  # warm-up
    fractions = []
    for i in range(args.steps):
        trainer.step += 1
        m = trainer.train_step()
        fractions.append(m["time_shift_monitor"] / m["time_step"])
        print(f"step {i + 1}: step {m['time_step']:.2f} s, monitor {m['time_shift_monitor']:.3f} s "
              f"({100 * fractions[-1]:.1f}%), shifted(|dlogp|>0.1) {m['shift_frac_0.1']:.3f}",
              flush=True)
    print(f"monitor / step = {statistics.mean(fractions):.3f} (mean of {args.steps} steps)")


if __name__ == "__main__":
    main()
