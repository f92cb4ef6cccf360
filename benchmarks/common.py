"""Shared set-up for the benchmarks: the same model, prompts and shapes for every contender."""

from __future__ import annotations

import statistics
import time

import torch

from pivotal.models import load_model
from pivotal.tasks import build_task, format_prompt

# The configuration of the TRL comparison in the foundation issue.
PROMPTS, GROUP, NEW_TOKENS = 4, 8, 64


def setup(model_name: str = "smollm2-135m"):
    model, tokenizer = load_model(model_name)
    task = build_task("arithmetic", levels=[{"ops": ["+"], "digits": 2}], seed=0)
    problems = [task.train_problem(i) for i in range(PROMPTS)]
    prompts = [format_prompt(p, tokenizer) for p in problems]
    return model, tokenizer, problems, prompts


def step_config(*overrides: str):
    """The trainer config of the TRL comparison (4 x 8, 64 new tokens, 2-digit sums), plus overrides."""
    import tempfile

    from pivotal.config import load_config
    return load_config(None, [
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
        f"rollout.max_new_tokens={NEW_TOKENS}", "task.options={levels: [{ops: ['+'], digits: 2}]}",
        f"train.output_dir={tempfile.mkdtemp()}", "train.tensorboard=false", *overrides])


def timed(fn, repeats: int = 3):
    """Run fn `repeats` times; return (median seconds, last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def header(title: str) -> None:
    print(f"== {title} | torch {torch.__version__} | threads {torch.get_num_threads()}", flush=True)
