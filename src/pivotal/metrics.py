"""Metric sinks: a JSONL file (always), TensorBoard and Weights & Biases (optional).

On resume the JSONL file is cut back to the resumed step, so a resumed run's file reads exactly
like an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("pivotal.metrics")


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
