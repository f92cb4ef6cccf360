"""`train.deterministic`: the process runs PyTorch's deterministic kernels, and training gives the
values it gives without them (on this CPU both repeat bit for bit). Each run is a subprocess: the
switch is process-wide and would leak into the other tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, torch
from pivotal.config import load_config
from pivotal.trainer import Trainer
cfg = load_config(None, ["model.name=tiny-random", "rollout.prompts_per_step=2", "rollout.group_size=4",
                         "rollout.max_new_tokens=8", "train.tensorboard=false", "algo.kl_beta=0.05",
                         "reward.components=[{name: 'rewards_for_tests:ascii_fraction'}]",
                         "train.deterministic=" + sys.argv[1], "train.output_dir=" + sys.argv[2]])
trainer = Trainer(cfg, progress=False)
rows = [trainer.train_step() for _ in range(3)]
keys = ("reward", "loss", "grad_norm", "entropy", "approx_kl")
print(json.dumps({"enabled": torch.are_deterministic_algorithms_enabled(),
                  "metrics": [{k: r[k] for k in keys if k in r} for r in rows]}))
"""


def _run(tmp_path, deterministic: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, deterministic, str(tmp_path / deterministic)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deterministic_switch_turns_the_mode_on_and_keeps_every_value(tmp_path):
    on, off = _run(tmp_path, "true"), _run(tmp_path, "false")
    assert on["enabled"] and not off["enabled"]
    assert on["metrics"] == off["metrics"]
    assert any(m["grad_norm"] > 0 for m in on["metrics"])  # steps that trained
