"""Tasks: where training and eval problems come from, chosen by name in config.

    task = build_task("arithmetic", digits=2, steps=2, seed=1)
    task = build_task("gsm8k", data_dir="/data")
    task = build_task("file", path="my.jsonl", question_field="{Body} {Question}")

Names: arithmetic, countdown, file, gsm8k, svamp, mawps, hub, dataset (rows a Python caller holds).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pivotal.registry import Registry, suggest
from pivotal.tasks.arithmetic import ArithmeticLevel, ArithmeticTask
from pivotal.tasks.base import DEFAULT_INSTRUCTION, Problem, Task, format_prompt
from pivotal.tasks.countdown import CountdownTask
from pivotal.tasks.dataset import DatasetTask
from pivotal.tasks.files import (
    PRESETS,
    FileTask,
    HubTask,
    HubUnavailableError,
    from_preset,
    gsm8k_task,
    mawps_task,
    svamp_task,
)

TASKS: Registry[Callable[..., Task]] = Registry("task")
TASKS.register("arithmetic")(ArithmeticTask)
TASKS.register("countdown")(CountdownTask)
TASKS.register("file")(FileTask)
TASKS.register("gsm8k")(gsm8k_task)
TASKS.register("svamp")(svamp_task)
TASKS.register("mawps")(mawps_task)
TASKS.register("hub")(HubTask)
TASKS.register("dataset")(DatasetTask)  # rows from the Python API (pivotal.Trainer) or a file


def task_options(name: str) -> list[str]:
    """The option names the task's constructor accepts."""
    return [p for p in inspect.signature(TASKS.get(name)).parameters if p not in ("self",)]


def build_task(name: str, **options: Any) -> Task:
    """The task registered under name, built with options; clear errors for bad names or options."""
    constructor = TASKS.get(name)  # unknown name: error with a suggestion and the known names
    signature = inspect.signature(constructor)
    valid = list(signature.parameters)
    unknown = [key for key in options if key not in signature.parameters]
    if unknown:
        hints = "".join(suggest(key, valid) for key in unknown)
        raise TypeError(f"task '{name}' got unknown option(s) {', '.join(map(repr, unknown))}.{hints} "
                        f"Valid options: {', '.join(valid)}")
    try:
        signature.bind(**options)
    except TypeError as e:  # e.g. a required option (FileTask's path) is missing
        raise TypeError(f"task '{name}': {e}. Valid options: {', '.join(valid)}") from None
    return constructor(**options)


__all__ = [
    "TASKS", "build_task", "task_options", "Problem", "Task", "format_prompt", "DEFAULT_INSTRUCTION",
    "ArithmeticTask", "ArithmeticLevel", "CountdownTask", "DatasetTask", "FileTask", "HubTask", "HubUnavailableError",
    "PRESETS", "from_preset", "gsm8k_task", "svamp_task", "mawps_task",
]
