"""Data parallelism for real: 2 gloo ranks on this CPU (torchrun) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pivotal.config import load_config
from pivotal.errors import ModelLoadError
from pivotal.metrics import merge_rank_metrics
from pivotal.models import load_model

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dp_worker.py"
CASES = [
    {"name": f"ddp_{agg}", "overrides": [f"algo.aggregation={agg}"]}
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
] + [
    {"name": f"fsdp_{agg}", "overrides": [f"algo.aggregation={agg}", "dist.strategy=fsdp"]}
    for agg in ("token-mean", "seq-mean-token-sum-norm")
] + [
    {"name": "ddp_divergence", "overrides": ["algo.credit=divergence"]},
    {"name": "fsdp_divergence", "overrides": ["algo.credit=divergence", "dist.strategy=fsdp"]},
    # FIPO's row-drop rule runs a no-grad pass of the sharded policy on the off-policy step
    {"name": "fsdp_fipo", "overrides": ["algo.credit=fipo", "dist.strategy=fsdp"]},
    # AMR-SD's hinted log-probs: per-row inputs that follow each rank's rows
    {"name": "fsdp_amr_sd", "overrides": ["algo.credit=amr_sd", "dist.strategy=fsdp",
                                          "algo.credit_options={hint_source: template, tau_pos: 0.0, "
                                          "tau_neg: 0.0, anneal: none}"]},
    # a KL reference, sharded under FSDP2, with rank 1 holding 3 rows to rank 0's 8 (one
    # micro-batch to three: its reference forwards are padded to pair the all-gathers)
    {"name": "ddp_kl_uneven", "overrides": ["algo.kl_beta=0.05"], "drop": 5},
    {"name": "fsdp_kl_uneven", "overrides": ["algo.kl_beta=0.05", "dist.strategy=fsdp"], "drop": 5},
    # the shift monitor's own (sharded) copy of the initial policy
    {"name": "fsdp_shift_monitor", "overrides": ["dist.strategy=fsdp", "train.shift_monitor=true"],
     "drop": 5},
    # OCC's heads and their off-policy mini-batch statistics (the second epoch)
    {"name": "ddp_occ", "overrides": ["algo.mtp_heads=1"]},
    # (uneven rows: rank 1 pads its statistics pass). c_k reads lp - olp after the first step,
    # which Adam's near-zero-gradient noise moves: one process alone gives weights 2.3e-5 apart
    # at micro-batch size 3 and 2 on this batch, so the bound is the 2e-5 below, doubled
    {"name": "fsdp_occ", "overrides": ["algo.mtp_heads=1", "dist.strategy=fsdp"], "drop": 5,
     "weights_atol": 4e-5},
    # FSDP2 keeping each layer's gathered weights from forward to backward, with FIPO's no-grad
    # row-drop pass before the off-policy step's training forwards
    {"name": "fsdp_keep_gathered", "overrides": ["dist.strategy=fsdp", "algo.credit=fipo",
                                                 "dist.reshard_after_forward=false"]},
    {"name": "ddp_batch_std", "overrides": ["algo.advantage_options={std_scale: batch}"]},
    {"name": "ddp_reinforce_pp", "overrides": ["algo.advantage=reinforce_pp_baseline"]},
    {"name": "fsdp_gspo", "overrides": ["algo.loss=gspo", "algo.aggregation=seq-mean-token-mean",
                                        "dist.strategy=fsdp"], "export": True},
    {"name": "ddp_lora", "overrides": ["model.lora.r=4", "optim.lr=1e-2"]},
    {"name": "fsdp_lora", "overrides": ["model.lora.r=4", "optim.lr=1e-2", "dist.strategy=fsdp"],
     "export": True},
]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}


def _torchrun(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", *map(str, args)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_two_ranks_give_the_single_process_update(tmp_path):
    """Same fixed batch: loss and grad norm agree within 1e-5, updated weights within 2e-5, for every
    aggregation, DDP and FSDP2, a mini-batch-normalised credit, batch-std and whitened advantages,
    GSPO, LoRA, OCC's heads, a KL reference with ranks of unequal rows (two optimizer steps each:
    on- and off-policy). Under FSDP2 a rank holds half the reference, and OWPO's ratchet and the
    reference's saved state dict reach it exactly."""
    cases = json.dumps(CASES)
    one = subprocess.run([sys.executable, str(WORKER), tmp_path / "one", cases], env=_env(),
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(WORKER, tmp_path / "two", cases)
    assert two.returncode == 0, two.stderr[-3000:]
    for case in CASES:
        name = case["name"]
        a = json.loads((tmp_path / "one" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "two" / f"{name}.json").read_text())
        assert a["optimizer_steps"] == b["optimizer_steps"] == 2, name
        assert a["grad_norm"] > 0, name  # the batch carries signal
        for key in ("grad_norm", "loss", "ratio_mean"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (name, key)
        wa = load_file(tmp_path / "one" / f"{name}.safetensors")
        wb = load_file(tmp_path / "two" / f"{name}.safetensors")
        worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        # 1% of the most two AdamW steps at lr 1e-3 can move a weight (2e-3): Adam divides by
        # sqrt(v), so a near-zero gradient's summation-order noise moves its weight by up to
        # ~lr; 1e-5 was met by all cases but the divergence credit (1.12e-5 on this CPU)
        assert worst < case.get("weights_atol", 2e-5), (name, worst)
        if "reference_local_fraction" in b:  # FSDP2 shards the reference, DDP keeps it whole
            sharded = "dist.strategy=fsdp" in case["overrides"]
            assert b["reference_local_fraction"] == pytest.approx(0.5 if sharded else 1.0,
                                                                  abs=0.01), name
            assert b["ratchet_gap"] == b["reloaded_gap"] == 0.0, name
        if "monitor_local_fraction" in b:  # the shift monitor's own initial copy, likewise
            assert b["monitor_local_fraction"] == pytest.approx(0.5, abs=0.01), name
    _export_gives_the_trained_logprobs(tmp_path / "two", "fsdp_gspo")
    _export_gives_the_trained_logprobs(tmp_path / "two", "fsdp_lora")  # adapters merged


def _export_gives_the_trained_logprobs(out: Path, name: str) -> None:
    """The consolidated export of the 2-rank FSDP2 model, loaded by plain transformers, scores
    the batch as the sharded model did."""
    from transformers import AutoModelForCausalLM

    saved = load_file(out / f"{name}_logprobs.safetensors")
    model = AutoModelForCausalLM.from_pretrained(out / f"{name}_export")
    ids = saved["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=saved["attention_mask"]).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    real = saved["attention_mask"][:, 1:].bool()
    assert real.sum() > 0
    torch.testing.assert_close(logprobs[real], saved["logprobs"][real], rtol=0, atol=1e-5)


TRAIN = ["model.name=tiny-random", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.max_new_tokens=8", "train.eval_before_after=false", "train.tensorboard=false",
         "train.save_every=1", "reward.components=[{name: 'rewards_for_tests:ascii_fraction'}]"]


def test_two_rank_fsdp_run_exports_and_resumes_in_one_process(tmp_path):
    """A 2-rank FSDP2 run writes DCP shards and a consolidated export that plain transformers
    loads; one process resumes the sharded checkpoint (DCP reshards 2 -> 1) and trains on."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    run = _torchrun("-m", "pivotal", "train", *TRAIN, "train.steps=2", "dist.strategy=fsdp",
                    f"--output-dir={out}", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    final = out / "checkpoints" / "step_000002"
    assert (final / "dcp").is_dir() and (final / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["grad_norm"] > 0
    model = AutoModelForCausalLM.from_pretrained(final)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    earlier = out / "checkpoints" / "step_000001"  # shards only: `pivotal export` consolidates it
    with pytest.raises(ModelLoadError, match="pivotal export"):
        load_model(str(earlier))
    exported = subprocess.run([sys.executable, "-m", "pivotal", "export", earlier, "--out",
                               tmp_path / "step1"], env=_env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    step1 = AutoModelForCausalLM.from_pretrained(tmp_path / "step1").state_dict()
    assert any(not torch.equal(step1[k], v) for k, v in model.state_dict().items())
    bad = subprocess.run([sys.executable, "-m", "pivotal", "export", tmp_path], env=_env(),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a sharded or LoRA pivotal checkpoint" in bad.stderr, bad.stderr
    again = subprocess.run([sys.executable, "-m", "pivotal", "train", *TRAIN, "train.steps=3",
                            f"--output-dir={out}", "--resume", "--quiet"], env=_env(), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_a_python_api_script_trains_on_two_fsdp_ranks_and_saves(tmp_path):
    """pivotal.Trainer under torchrun: each rank scores its share with the TRL-style reward, the
    callback's stop holds on both ranks at one step, and save(path) gathers the shards into the
    weights of the final checkpoint's consolidated export."""
    out = tmp_path / "run"
    run = _torchrun(ROOT / "tests" / "api_dp_worker.py", out, "fsdp")
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        assert seen["calls"] == [4, 4]  # 2 prompts x 4 per step over 2 ranks: 4 each, per step
        assert seen["summary"]["steps"] == 2 and seen["summary"]["stopped_by"] == "StopAtTwo.on_step_end"
    saved = load_file(out / "saved" / "model.safetensors")
    final = load_file(out / "checkpoints" / "step_000002" / "model.safetensors")
    assert saved.keys() == final.keys()
    for name in saved:
        assert torch.equal(saved[name], final[name]), name


def _rows(out: Path) -> list[dict]:
    from test_trainer import _deterministic
    return _deterministic(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())


def test_two_rank_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    """2 ranks, 3 steps: rank 0 is SIGKILLed right after step 2 is checkpointed and logged; the
    resumed run gives the uninterrupted run's metrics and final weights."""
    common = [*TRAIN, "train.steps=3", "train.plugins=[interrupt_helpers]",
              "optim.mini_batches=2", "--quiet"]
    full = _torchrun("-m", "pivotal", "train", *common, f"--output-dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]
    part = tmp_path / "part"
    env = {**_env(), "PIVOTAL_TEST_KILL_AFTER_STEP": "2"}
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", "-m", "pivotal", "train", *common,
                             f"--output-dir={part}"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert (part / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert len(_rows(part)) == 2
    resumed = _torchrun("-m", "pivotal", "train", *common, f"--output-dir={part}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(part) == _rows(tmp_path / "full")
    a = load_file(tmp_path / "full" / "checkpoints" / "step_000003" / "model.safetensors")
    b = load_file(part / "checkpoints" / "step_000003" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_two_rank_lora_run_resumes_exactly(tmp_path):
    """LoRA on 2 ranks: checkpoints hold the adapters only (no base weights in the shards); a run
    stopped after step 1 and resumed gives the uninterrupted run's metrics and merged weights."""
    common = [*TRAIN, "model.lora.r=4", "optim.lr=1e-2", "algo.kl_beta=0.1"]
    full = _torchrun("-m", "pivotal", "train", *common, "train.steps=2",
                     f"--output-dir={tmp_path / 'full'}", "--quiet")
    assert full.returncode == 0, full.stderr[-3000:]
    part = tmp_path / "part"
    for steps, extra in ((1, []), (2, ["--resume"])):
        run = _torchrun("-m", "pivotal", "train", *common, f"train.steps={steps}",
                        f"--output-dir={part}", "--quiet", *extra)
        assert run.returncode == 0, run.stderr[-3000:]
    assert _rows(part) == _rows(tmp_path / "full") and len(_rows(part)) == 2
    from pivotal.safe_load import safe_dcp_reader  # the DCP index names what the shards hold
    saved = safe_dcp_reader(part / "checkpoints" / "step_000001" / "dcp").read_metadata()
    weights = [k for k in saved.state_dict_metadata if k.startswith("model.")]
    assert weights and all(".lora_" in k for k in weights), weights
    a = load_file(tmp_path / "full" / "checkpoints" / "step_000002" / "merged" / "model.safetensors")
    b = load_file(part / "checkpoints" / "step_000002" / "merged" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


@pytest.mark.parametrize("selector", ["cag_oracle", "care"])
def test_the_active_label_budget_is_a_share_of_the_global_batch(tmp_path, selector):
    """2 ranks x 1 group each, budget 0.5: one true label per step in all (ceil(0.5 x 2)), not
    one per rank (ceil(0.5 x 1) each). CARE's probe scores both ranks' groups together."""
    extra = (["reward.label_options={warmup_steps: 1, prompt_dim: 8, mid_dim: 8, resp_dim: 8, "
              "resp_out: 8}"] if selector == "care" else [])
    run = _torchrun("-m", "pivotal", "train", *TRAIN, "train.steps=2", f"reward.labels={selector}",
                    "reward.label_budget=0.5", *extra, f"--output-dir={tmp_path}", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["labels_queried"] for r in rows] == [1, 1]
    assert rows[-1]["labels_queried_total"] == 2
    if selector == "care":  # after the 1-step warm-up ceil(0.25 x 2) = 1 of the 2 groups is gated
        assert [r["labels_gated"] for r in rows] == [0, 1]
        assert [r["probe_buffer"] for r in rows] == [1, 2]


BF16_RUNS = {  # name -> (launcher, overrides, dtype the trained weights are stored in)
    "one_bf16": ("one", ["model.dtype=bfloat16"], torch.bfloat16),
    "ddp_bf16": ("two", ["model.dtype=bfloat16"], torch.bfloat16),
    "fsdp_bf16": ("two", ["model.dtype=bfloat16", "dist.strategy=fsdp"], torch.bfloat16),
    "fsdp_mixed": ("two", ["dist.strategy=fsdp", "dist.mixed_precision=bfloat16"], torch.float32),
}


def test_bfloat16_trains_in_one_process_and_on_two_ranks(tmp_path):
    """Two steps in bfloat16 (and FSDP2 mixed precision) in one process and on 2 ranks: dtype
    mistakes a GPU run would hit show up here. The lr is large enough to move bf16 weights (at the
    default the step is below half an ulp, and the run warns so)."""
    initial = load_model("tiny-random", "cpu", "float32", seed=0)[0].state_dict()
    for name, (launcher, overrides, dtype) in BF16_RUNS.items():
        out = tmp_path / name
        args = ["-m", "pivotal", "train", *TRAIN, "train.steps=2", "optim.lr=1e-2", *overrides,
                f"--output-dir={out}", "--quiet"]
        run = (_torchrun(*args) if launcher == "two" else
               subprocess.run([sys.executable, *args], env=_env(), cwd=ROOT, capture_output=True,
                              text=True, timeout=600))
        assert run.returncode == 0, (name, run.stderr[-3000:])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2], name
        for row in rows:
            assert row["optimizer_steps"] == 1 and 0 < row["grad_norm"] < float("inf"), (name, row)
            assert all(v == v for v in row.values() if isinstance(v, float)), (name, row)  # no NaN
        weights = load_file(out / "checkpoints" / "step_000002" / "model.safetensors")
        assert {w.dtype for w in weights.values()} == {dtype}, name
        moved = sum(not torch.equal(w.float(), initial[k].to(dtype).float())
                    for k, w in weights.items())
        assert moved > len(weights) // 2, (name, moved, len(weights))


def test_a_bfloat16_policy_at_a_tiny_lr_warns(tmp_path, caplog):
    from pivotal.trainer import Trainer
    from test_trainer import tiny_config
    Trainer(tiny_config(tmp_path, **{"model.dtype": "bfloat16", "optim.lr": 1e-6}), progress=False)
    assert "below half a bfloat16 ulp" in caplog.text and "dist.mixed_precision" in caplog.text
    caplog.clear()
    Trainer(tiny_config(tmp_path, **{"model.dtype": "bfloat16", "optim.lr": 1e-2}), progress=False)
    Trainer(tiny_config(tmp_path), progress=False)
    assert "ulp" not in caplog.text


def test_frozen_weight_fraction_counts_updates_below_half_an_ulp():
    from pivotal.safety import frozen_weight_fraction
    w = torch.tensor([1.0, 2.0 ** -10, 0.0, -1.0], dtype=torch.bfloat16)  # half-ulps 2^-8, 2^-18
    assert frozen_weight_fraction([w], 1e-3) == 0.5  # 1 and -1 are stuck; 2^-10 and 0 move
    assert frozen_weight_fraction([w], 1e-2) == 0.0
    assert frozen_weight_fraction([w.float()], 1e-9) == 0.0
    w2 = w.clone()
    w2.add_(1e-3)  # what the warning predicts actually happens
    assert w2[0] == w[0] and w2[3] == w[3] and w2[1] != w[1]


def _free_port() -> int:
    """A port the OS says is free now (a fixed one can be held by an earlier test's socket)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manual_ranks(tmp_path, per_rank_overrides):
    """Two ranks started by hand (as on two nodes, with no torchrun agent to stop the others)."""
    procs, port = [], _free_port()
    for rank, extra in enumerate(per_rank_overrides):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pivotal", "train", *TRAIN, *extra, "dist.timeout_s=60",
             f"--output-dir={tmp_path / 'run'}", "--quiet"], env=env, cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def test_a_killed_rank_stops_the_other_with_a_message(tmp_path):
    procs = _manual_ranks(tmp_path, [["train.steps=100000"], ["train.steps=100000"]])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and procs[0].poll() is None, procs[0].stderr.read()[-3000:]
        time.sleep(0.5)
    procs[1].kill()
    t0 = time.time()
    _, err = procs[0].communicate(timeout=120)
    procs[1].wait()
    assert procs[0].returncode == 1 and time.time() - t0 < 60
    assert "rank 0 lost the other ranks" in err and "--resume" in err


def test_ranks_with_different_configs_are_named_at_start(tmp_path):
    procs = _manual_ranks(tmp_path, [["train.steps=1"], ["train.steps=1", "train.seed=7"]])
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 2 for p in procs), [e[-2000:] for e in errors]
    assert "rank 1 differs from rank 0 in train.seed (0 vs 7)" in errors[0]


def test_rank_metrics_merge_with_their_weights():
    merged = merge_rank_metrics([({"reward": 1.0, "tokens": 10, "response_length_max": 5,
                                   "time_step": 2.0, "nonfinite": "loss"}, 2),
                                 ({"reward": 0.0, "tokens": 30, "response_length_max": 9,
                                   "time_step": 3.0}, 6)])
    assert merged["reward"] == pytest.approx(0.25)
    assert merged["tokens"] == 40 and merged["response_length_max"] == 9
    assert merged["time_step"] == 3.0 and merged["tokens_per_s"] == pytest.approx(40 / 3)
    assert merged["nonfinite"] == "loss"


def test_no_grad_passes_pad_to_the_forwards_every_rank_runs():
    # a sharded frozen model's all-gathers pair up only if every rank runs as many forwards: the
    # extra calls run on one row and add nothing to the result
    from pivotal.logprobs import per_token_no_grad
    from test_algos import make_batch

    batch, seen = make_batch(), []

    def compute(view):
        seen.append(view.size)
        return {"x": torch.ones(view.size, view.response_ids.shape[1])}

    plain = per_token_no_grad(batch, compute, 1, torch.device("cpu"))["x"]
    assert seen == [1, 1]
    seen.clear()
    padded = per_token_no_grad(batch, compute, 1, torch.device("cpu"), forwards=4)["x"]
    assert seen == [1, 1, 1, 1]
    assert torch.equal(plain, padded)


def test_fsdp_ranks_run_without_the_shared_prompt_layout(monkeypatch):
    # the shared-prompt layout runs one forward or two per micro-batch depending on its rows;
    # the config's resolution turns it off where FSDP2's all-gathers must pair up, only there
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not load_config(None, ["dist.strategy=fsdp"]).optim.share_prompt
    assert load_config(None, ["dist.strategy=ddp"]).optim.share_prompt
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert load_config(None, ["dist.strategy=fsdp"]).optim.share_prompt


@pytest.mark.slow
def test_real_model_trains_on_two_fsdp_ranks_and_exports(tmp_path):
    """Slow: the built-in SmolLM2 on 2 FSDP2 ranks for 2 steps; the consolidated export loads
    with plain transformers and differs from the base model where the run had a gradient."""
    from transformers import AutoModelForCausalLM

    from pivotal.models import builtin_model_dir
    out = tmp_path / "run"
    run = _torchrun("-m", "pivotal", "train", "train.steps=2", "train.eval_before_after=false",
                    "train.tensorboard=false", "rollout.prompts_per_step=2",
                    "rollout.group_size=4", "rollout.max_new_tokens=24",
                    "task.options={levels: [{ops: ['+'], digits: 1}]}", "dist.strategy=fsdp",
                    f"--output-dir={out}", "--quiet", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] == r["loss"] and r["tokens"] > 0 for r in rows)
    exported = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step_000002")
    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir()).state_dict()
    after = exported.state_dict()
    assert after.keys() == base.keys()
    if any(r["optimizer_steps"] and r["grad_norm"] > 0 for r in rows):
        assert any(not torch.equal(after[k], base[k]) for k in base)
