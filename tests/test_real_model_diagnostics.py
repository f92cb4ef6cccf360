"""The diagnostics on the real built-in model: SmolLM2-135M against a copy moved a little."""

import json

import pandas as pd
import pytest
import torch

from pivotal.cli import main
from pivotal.models import load_model

TASK = ["--task", "arithmetic", "--task-options", "{levels: [{ops: ['+'], digits: 1}]}"]


@pytest.fixture(scope="module")
def moved_model(tmp_path_factory):
    """SmolLM2 with its last layer's MLP scaled by 1.5: a real model, measurably different."""
    model, tokenizer = load_model("smollm2-135m")
    with torch.no_grad():
        for p in model.model.layers[-1].mlp.parameters():
            p.mul_(1.5)
    path = tmp_path_factory.mktemp("moved")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_real_model_analyze_and_report(moved_model, tmp_path):
    out = tmp_path / "analysis"
    assert main(["analyze", "--rl", moved_model, *TASK, "--limit", "3", "--max-new-tokens", "16",
                 "--out", str(out), "--quiet"]) == 0
    table = pd.read_parquet(out / "tokens.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tokens"] == len(table) > 0
    assert (table["js"] >= 0).all() and (table["js"] <= 0.6932).all()
    assert table["js"].max() > 1e-4  # the moved layer changed some next-token distributions
    # Δlog p is the difference of the two models' log-probs of the same (rl-sampled) token
    assert (table["dlogp"] - (table["logp_rl"] - table["logp_base"])).abs().max() < 1e-5
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and html.count('<span class="tok" data-i=') == len(table)


@pytest.mark.slow
def test_real_model_cross_sampling_and_extrapolation(moved_model, tmp_path):
    assert main(["cross-sample", "--rl", moved_model, *TASK, "--limit", "4",
                 "--criteria", "dlogp", "--taus-dlogp", "-0.5", "--directions", "forward",
                 "--max-new-tokens", "16", "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads((tmp_path / "cross_sampling.json").read_text())
    point = result["points"][0]
    assert 0 <= point["budget"] <= 1 and 0 <= point["accuracy"] <= 1
    assert main(["eval", "--model", moved_model, "--extrapolate-base", "smollm2-135m",
                 "--gamma", "0.1", "--tau", "0", "--extrapolate-where", "all", "--limit", "4",
                 "eval.max_new_tokens=16", "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["extrapolation"]["positions"] > 0
    assert summary["extrapolation"]["budget"] == 1.0  # where=all: every position
