"""Every script in examples/ runs, on the tiny random model, as a user would run it."""

import json
import subprocess
import sys

from conftest import REPO

EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, cwd) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_examples_run_on_the_tiny_model(tmp_path):
    run_example("train_custom_reward.py", "tiny-random", "2", cwd=tmp_path)
    run = tmp_path / "runs" / "example_custom"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert (run / "final" / "model.safetensors").exists()

    run_example("train_trl_style.py", "tiny-random", "2", cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "example_trl" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2]

    out = run_example("analyze_and_report.py", "tiny-random", cwd=tmp_path)
    assert "report: runs/example_analyze/report.html" in out
    assert (tmp_path / "runs" / "example_analyze" / "report.html").exists()
