"""The Python API (`pivotal.Config`, `pivotal.Trainer`, reward functions in both conventions,
callbacks, the diagnostics as functions) on the tiny random model, and once on the real one."""

import asyncio
import json
import logging

import pytest
import torch

import pivotal
from pivotal.config import ConfigError
from pivotal.errors import DataError, RewardError
from pivotal.metrics import read_metrics
from pivotal.rewards import build_scorer
from pivotal.rewards.functions import BATCH, SAMPLE, FunctionRewards, calling_convention
from pivotal.tasks import DatasetTask, Problem

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "level": a % 3}
        for a in range(10) for b in range(4)]


def tiny(out, **sections):
    base = {"model": {"name": "tiny-random"},
            "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8},
            "train": {"steps": 2, "output_dir": str(out), "eval_before_after": False,
                      "tensorboard": False},
            "optim": {"lr": 1e-3}, "eval": {"size": 4, "max_new_tokens": 8}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return pivotal.Config.build(base)


# ------------------------------------------------------------------------------------ Config

def test_config_builds_from_keywords_dicts_yaml_and_sections(tmp_path):
    cfg = pivotal.Config.build(algo={"loss": "cispo"}, **{"optim.lr": 1e-6},
                               overrides=["train.steps=3"])
    assert (cfg.algo.loss, cfg.optim.lr, cfg.train.steps) == ("cispo", 1e-6, 3)
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  loss: gspo\n")
    assert pivotal.Config.from_yaml(path, ["optim.lr=2e-6"]).optim.lr == 2e-6
    assert pivotal.Config.from_dict({"algo": {"loss": "sapo"}}).algo.loss == "sapo"
    from pivotal.config import OptimConfig
    assert pivotal.Config.build(optim=OptimConfig(lr=3e-6)).optim.lr == 3e-6


def test_config_errors_are_the_clis():
    with pytest.raises(ConfigError, match="Did you mean 'loss'"):
        pivotal.Config.build(algo={"los": "grpo"})
    with pytest.raises(ConfigError, match="Did you mean 'cispo'"):
        pivotal.Config.build(algo={"loss": "cispoo"})
    with pytest.raises(ConfigError, match="must be a number"):
        pivotal.Config.build(optim={"lr": "fast"})
    with pytest.raises(ConfigError, match="'model' is a section"):
        pivotal.Config.build(model="tiny-random")
    with pytest.raises(ConfigError, match="YAML path or a dict"):
        pivotal.Config.build(42)


# ------------------------------------------------------------------------------------ datasets

def test_dataset_task_from_list_dataset_and_file(tmp_path):
    from datasets import Dataset

    task = DatasetTask(ROWS, eval_size=4)
    assert task.num_train == len(ROWS) - 4 and len(task.eval_problems()) == 4
    problem = task.train_problem(0)
    assert problem.meta["columns"]["answer"] == problem.answer
    assert set(problem.meta["columns"]) == {"question", "answer", "level"}
    from_hf = DatasetTask(Dataset.from_list(ROWS), eval_size=4)
    assert [p.question for p in from_hf.eval_problems()] == [p.question for p in task.eval_problems()]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    from_file = DatasetTask(str(path), eval=ROWS[:3])
    held = {p.question for p in from_file.eval_problems()}
    assert len(held) == 3 and all(from_file.train_problem(i).question not in held for i in range(50))


def test_dataset_task_reads_chat_prompts_and_templates():
    rows = [{"prompt": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"Add {a} and 2."}], "solution": f"{a + 2} (apples)"}
            for a in range(10)]
    task = DatasetTask(rows, question_field="prompt", answer_field="solution", eval_size=2)
    problem = task.train_problem(0)
    assert problem.question.startswith("Add ") and problem.answer.isdigit()
    templated = DatasetTask([{"a": "Tom has 3.", "b": "How many?", "y": 3}] * 2 +
                            [{"a": "Ann has 4.", "b": "How many?", "y": 4}],
                            question_field="{a} {b}", answer_field="y", eval_size=1)
    assert templated.num_train == 1  # the repeated question is kept once


def test_dataset_errors_name_the_row():
    with pytest.raises(DataError, match="train_dataset row 2: missing field 'answer'"):
        DatasetTask([{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(DataError, match="train_dataset row 1: .*cannot be read"):
        DatasetTask([{"question": "a", "answer": "5 or more"}, {"question": "b", "answer": "1"}])
    with pytest.raises(DataError, match="one mapping"):
        DatasetTask({"question": "a", "answer": "1"})
    with pytest.raises(DataError, match="row 1: expected a dict"):
        DatasetTask(["What is 1 + 1?"])
    with pytest.raises(DataError, match="needs its rows"):
        DatasetTask()


# ------------------------------------------------------------------------------------ rewards

def trl_exact(completions, answer, **kwargs):
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]


def test_calling_conventions_are_detected_from_signatures():
    def per_sample(completion, problem):
        return 0.0

    def per_sample_kw(completion, problem, **kwargs):
        return 0.0

    def trl_positional(prompts, completions, **kwargs):
        return []

    assert calling_convention(trl_exact) == BATCH
    assert calling_convention(trl_positional) == BATCH
    assert calling_convention(lambda completions: []) == BATCH
    assert calling_convention(per_sample) == SAMPLE
    assert calling_convention(per_sample_kw) == SAMPLE
    assert calling_convention(lambda c, p: 0.0) == SAMPLE
    with pytest.raises(RewardError, match="neither"):
        calling_convention(lambda x: 0.0)


def _problems(n=4):
    return [Problem(id=str(i), question=f"q{i}", answer=str(i),
                    meta={"columns": {"question": f"q{i}", "answer": str(i), "tag": i % 2}})
            for i in range(n)]


def _scorer(funcs, timeout_s=10.0):
    return FunctionRewards(funcs, build_scorer([{"name": "task"}], ["boxed"]), timeout_s)


def test_function_rewards_combine_weights_and_not_applicable(caplog):
    seen = {}

    def trl(completions, tag, prompts, **kwargs):
        seen.update(tag=tag, prompts=prompts)
        return [None if t else 1.0 for t in tag]  # only even rows apply

    def per_sample(completion, problem):
        return float("nan") if problem.answer == "3" else 0.5

    texts = ["\\boxed{0}", "\\boxed{1}", "x", "y"]
    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        scores = _scorer([(trl, 2.0), per_sample]).score(texts, _problems())
    assert [s["reward"] for s in scores] == [2.0 + 0.5, 0.5, 2.0 + 0.5, 0.0]
    assert [s["correct"] for s in scores] == [True, True, False, False]  # the task's verifier
    assert scores[3]["components"] == {"trl": None, "per_sample": None}
    assert seen == {"tag": [0, 1, 0, 1], "prompts": ["q0", "q1", "q2", "q3"]}
    assert "1 of 4 completions: every reward function returned None" in caplog.text


def test_function_reward_bugs_are_named():
    def short(completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardError, match="'short' returned 1 values for 4 completions"):
        _scorer([short]).score(["a"] * 4, _problems())
    wrong = _scorer([lambda completions, **kw: ["yes"] * len(completions)])
    with pytest.raises(RewardError, match="returned 'yes', not a number"):
        wrong.score(["a"] * 4, _problems())


def test_a_failing_function_scores_zero_and_is_logged(caplog):
    def broken(completions, **kwargs):
        raise KeyError("solution")

    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        scores = _scorer([broken, trl_exact]).score(["0", "1", "x", "x"], _problems())
    assert [s["reward"] for s in scores] == [1.0, 1.0, 0.0, 0.0]
    assert "reward function 'broken' failed: KeyError" in caplog.text


def test_async_functions_run_concurrently_and_time_out(caplog):
    running, peak = 0, 0

    async def judge(completion, problem):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return 1.0

    async def batch_judge(completions, **kwargs):
        await asyncio.sleep(0.05)
        return [0.25] * len(completions)

    scores = _scorer([judge, batch_judge]).score(["a"] * 4, _problems())
    assert [s["reward"] for s in scores] == [1.25] * 4
    assert peak == 4  # every sample's call was in flight at once

    async def stuck(completions, **kwargs):
        await asyncio.sleep(30)

    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        scores = _scorer([stuck, trl_exact], timeout_s=0.2).score(["0", "x", "x", "x"], _problems())
    assert [s["reward"] for s in scores] == [1.0, 0.0, 0.0, 0.0]
    assert "'stuck' failed: TimeoutError" in caplog.text

    async def inside_a_running_loop():  # as in Jupyter: the scorer still works
        return _scorer([judge]).score(["a"] * 2, _problems(2))

    assert [s["reward"] for s in asyncio.run(inside_a_running_loop())] == [1.0, 1.0]


# ------------------------------------------------------------------------------------ Trainer

class Recorder(pivotal.Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_step_end(self, step, metrics):
        self.events.append(("step", step, metrics["reward"]))
        return step == self.stop_at

    def on_evaluate(self, tag, summary):
        self.events.append(("eval", tag, summary["num_problems"]))

    def on_checkpoint(self, path):
        self.events.append(("checkpoint", path.name))

    def on_train_end(self, summary):
        self.events.append(("end", summary["steps"]))


def test_trl_reward_trains_and_callbacks_see_the_run(tmp_path):
    calls = []

    def exact(completions, answer, level, **kwargs):
        calls.append(len(completions))  # length: a signal the tiny random model varies in
        return [float(a in c) + len(c) / 100 for c, a in zip(completions, answer)]

    recorder = Recorder()
    trainer = pivotal.Trainer(tiny(tmp_path, train={"eval_every": 1}), train_dataset=ROWS,
                              reward_funcs=exact, callbacks=[recorder], progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert summary["steps"] == 2 and calls == [8, 8]  # once per batch of 2 x 4
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    batch = trainer.last_batch  # ids "dataset-<row>": the reward is the function's verdict
    answers = [ROWS[int(pid.rsplit("-", 1)[1]) - 1]["answer"] for pid in batch.extras["problem_id"]]
    assert batch.rewards.tolist() == pytest.approx(
        [float(a in t) + len(t) / 100 for t, a in zip(batch.extras["text"], answers)])
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [e for e in recorder.events if e[0] == "step"] == [("step", r["step"], r["reward"]) for r in rows]
    assert ("eval", "step1", 4) in recorder.events and ("checkpoint", "step_000002") in recorder.events
    assert recorder.events[-1] == ("end", 2)
    assert "name: dataset" in (tmp_path / "config.yaml").read_text()


def test_async_reward_trains_two_steps(tmp_path):
    async def length_penalty(completion, problem):
        await asyncio.sleep(0)
        return -0.01 * len(completion)

    trainer = pivotal.Trainer(tiny(tmp_path), train_dataset=ROWS, reward_funcs=[length_penalty],
                              progress=False)
    trainer.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward"] < 0 for r in rows)
    texts = trainer.last_batch.extras["text"]
    assert trainer.last_batch.rewards.tolist() == pytest.approx([-0.01 * len(t) for t in texts])


def test_a_callback_stops_the_run_after_its_step(tmp_path):
    recorder = Recorder(stop_at=1)
    trainer = pivotal.Trainer(tiny(tmp_path, train={"steps": 5}), train_dataset=ROWS,
                              reward_funcs=trl_exact, callbacks=[recorder], progress=False)
    summary = trainer.train()
    assert summary["steps"] == 1 and summary["stopped_by"] == "Recorder.on_step_end"
    assert summary["final_checkpoint"].endswith("step_000001")
    with pytest.raises(TypeError, match="none of the hooks"):
        pivotal.Trainer(tiny(tmp_path), callbacks=[object()], progress=False)


def test_a_loaded_model_is_trained_in_place_and_saved(tmp_path):
    from transformers import AutoModelForCausalLM

    from pivotal.models import load_model

    model, tokenizer = load_model("tiny-random", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pivotal.Trainer(tiny(tmp_path / "run"), model=model, tokenizer=tokenizer,
                              train_dataset=ROWS, reward_funcs=lambda c, p: len(c) / 10,
                              progress=False)
    assert trainer.model is model
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    summary = trainer.evaluate()
    assert summary["num_problems"] == 4 and (tmp_path / "run" / "eval_eval.jsonl").exists()
    out = trainer.save(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_save_merges_lora_adapters(tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = pivotal.Trainer(tiny(tmp_path / "run", model={"lora": {"r": 4}}, train={"steps": 1},
                                   optim={"lr": 1e-2}),
                              train_dataset=ROWS, reward_funcs=lambda c, p: len(c) / 10, progress=False)
    trainer.train()
    merged = AutoModelForCausalLM.from_pretrained(trainer.save(tmp_path / "merged"))
    assert not any("lora" in k for k in merged.state_dict())
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trainer.model(ids).logits, rtol=0, atol=1e-4)
    assert trainer.adapters.peft_model.peft_config  # the live policy keeps its adapters


def test_trainer_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="task.name is 'gsm8k'"):
        pivotal.Trainer(tiny(tmp_path, task={"name": "gsm8k", "options": {}}), train_dataset=ROWS, progress=False)
    with pytest.raises(ConfigError, match="reward.labels=pseudo"):
        pivotal.Trainer(tiny(tmp_path, reward={"labels": "pseudo", "label_budget": 0.5}),
                        train_dataset=ROWS, reward_funcs=trl_exact, progress=False)
    with pytest.raises(Exception, match="expected a transformers causal LM"):
        pivotal.Trainer(tiny(tmp_path), model=object(), tokenizer=object(), progress=False)


def test_eval_dataset_replaces_the_tasks_held_out_set(tmp_path):
    trainer = pivotal.Trainer(tiny(tmp_path), eval_dataset=ROWS[:3], progress=False)
    assert [p.question for p in trainer.eval_problems] == [r["question"] for r in ROWS[:3]]
    assert trainer.task.train_problem(0).reward == "math"  # the arithmetic task still trains


# ------------------------------------------------------------------------------------ functions

def test_diagnostics_as_functions(tmp_path):
    summary = pivotal.evaluate("tiny-random", ROWS, out=tmp_path / "eval", limit=3,
                               config={"eval": {"max_new_tokens": 6}})
    assert summary["num_problems"] == 3 and summary["num_responses"] == 3
    assert (tmp_path / "eval" / "generations.jsonl").exists()
    with pytest.raises(TypeError, match="Did you mean 'limit'"):
        pivotal.evaluate("tiny-random", ROWS, out=tmp_path / "e2", limt=3)
    result = pivotal.analyze(rl="tiny-random", base="tiny-random", task="arithmetic", limit=3,
                             max_new_tokens=6, out=tmp_path / "an", quiet=True)
    assert result["n_responses"] == 3 and result["shifted_fraction"] == 0.0  # same model twice
    page = pivotal.report(tmp_path / "an")
    assert page.exists() and page.read_text().startswith("<!DOCTYPE html>")
    xs = pivotal.cross_sample(rl="tiny-random", base="tiny-random", limit=2, max_new_tokens=6,
                              criteria=["dlogp"], directions=["forward"], out=tmp_path / "xs",
                              quiet=True)
    assert xs["accuracy_base"] == xs["accuracy_rl"]
    assert (tmp_path / "xs" / "cross_sampling.png").exists()


def test_real_model_trains_from_python(tmp_path):
    """The built-in SmolLM2-135M through the Python API: one step of 2 x 2 with a TRL reward."""
    def boxed(completions, **kwargs):
        return [1.0 if "\\boxed{" in c else 0.0 for c in completions]

    cfg = tiny(tmp_path, model={"name": "smollm2-135m"}, train={"steps": 1},
               rollout={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 16},
               optim={"lr": 1e-6})
    trainer = pivotal.Trainer(cfg, train_dataset=ROWS, reward_funcs=boxed, progress=False)
    trainer.train()
    texts = trainer.last_batch.extras["text"]
    assert trainer.last_batch.rewards.tolist() == [float("\\boxed{" in t) for t in texts]
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["step"] == 1
