"""The Python API: a Trainer that takes what a notebook already holds, and the CLI's diagnostics
as functions. Everything here is exported from `pivotal` itself (docs/python_api.md).

    import pivotal

    def ends_with_answer(completions, answer, **kwargs):          # TRL's convention
        return [1.0 if c.strip().endswith(a) else 0.0 for c, a in zip(completions, answer)]

    trainer = pivotal.Trainer(pivotal.Config.build(train={"steps": 20}),
                              train_dataset=[{"question": "What is 2 + 3?", "answer": "5"}, ...],
                              reward_funcs=[ends_with_answer])
    trainer.train()
    trainer.save("runs/my-model")          # a plain Hugging Face model directory

`Trainer` is the CLI's training loop (`pivotal.trainer.Trainer`) with its inputs resolved from
Python objects: the config from a Config, dict or YAML path; the model from a name, a directory
or a loaded transformers model; the data from a `datasets.Dataset`, a list of dicts or a path
(`pivotal.tasks.dataset`); the rewards from callables (`pivotal.rewards.functions`).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

from .callbacks import Callback
from .config import DEMO_TASK_OPTIONS, Config, ConfigError, nearest_name
from .trainer import Trainer as _LoopTrainer

__all__ = ["Config", "Trainer", "Callback", "as_config", "evaluate", "analyze", "cross_sample",
           "report"]


def as_config(config: Config | dict | str | os.PathLike | None) -> Config:
    """A validated copy of `config` (a Config, a dict as in a YAML file, or a YAML path)."""
    if config is None:
        return Config.build()
    if isinstance(config, Config):
        return Config.build(config.to_dict())
    return Config.build(config)


class _HeldOut:
    """A task whose held-out set is replaced by the caller's eval_dataset."""

    def __init__(self, task, problems: list):
        self._task, self._problems = task, problems
        self.name = task.name

    def train_problem(self, index: int):
        return self._task.train_problem(index)

    def eval_problems(self) -> list:
        return list(self._problems)


def _dataset_task(cfg: Config, train_dataset, eval_dataset):
    """The task of train_dataset / eval_dataset, with task.options as the field mapping; sets
    `task.name = dataset` in `cfg` so that the saved config says where the problems came from."""
    from .tasks import DatasetTask, build_task
    from .tasks.dataset import source_rows
    from .tasks.files import rows_to_problems

    untouched = cfg.task.name == "arithmetic" and cfg.task.options == DEMO_TASK_OPTIONS
    if train_dataset is None:  # the config's task trains; eval_dataset replaces its held-out set
        task = build_task(cfg.task.name, **cfg.task.options)
        opts = {k: v for k, v in cfg.task.options.items()
                if k in ("question_field", "answer_field", "answer_format")}
        rows = source_rows(eval_dataset, "eval_dataset")
        return _HeldOut(task, rows_to_problems(rows, "eval_dataset", opts.get("question_field", "question"),
                                               opts.get("answer_field", "answer"),
                                               opts.get("answer_format", "plain")))
    if not untouched and cfg.task.name != "dataset":
        raise ConfigError(f"train_dataset was given and task.name is '{cfg.task.name}': the "
                          "problems come from one or the other; for the dataset's field mapping "
                          "use task.name=dataset with task.options (question_field, answer_field, "
                          "answer_format, eval_fraction, eval_size, seed)")
    options = {} if untouched else dict(cfg.task.options)
    for key in ("train", "eval"):
        if key in options:
            raise ConfigError(f"task.options.{key} and the {key}_dataset argument both give "
                              "rows: give one")
    cfg.task.name, cfg.task.options = "dataset", options
    return DatasetTask(train_dataset, eval_dataset, **options)


def _function_scorer(cfg: Config, reward_funcs):
    from .rewards import build_scorer
    from .rewards.functions import FunctionRewards

    if cfg.reward.labels != "all":
        raise ConfigError(f"reward.labels={cfg.reward.labels} scores pseudo-labels with the "
                          "configured reward components; with reward_funcs it would not know "
                          "which column holds the label. Use one or the other")
    funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    truth = build_scorer([{"name": "task"}], cfg.reward.extract, cfg.reward.timeout_s)
    return FunctionRewards(list(funcs), truth, cfg.reward.timeout_s)


class Trainer(_LoopTrainer):
    """RLVR training from Python objects.

    config: a Config, a dict (as in a YAML file) or a YAML path; None: the built-in demo's.
    model: a name ("smollm2-135m"), a directory, or a loaded transformers causal LM (trained in
        place); tokenizer: its tokenizer (default: loaded from the model's name_or_path).
    train_dataset / eval_dataset: a `datasets.Dataset`, a list of dicts or a .jsonl/.parquet path,
        mapped by task.options (question_field, answer_field or "{a} {b}" templates,
        answer_format); without eval_dataset, task.options.eval_fraction of train is held out.
    reward_funcs: a callable, or a list of callables, registered names or (callable, weight)
        pairs, replacing reward.components (`pivotal.rewards.functions` says which calling
        convention is detected how).
    callbacks: `pivotal.Callback` objects (`pivotal.callbacks`).

    `train()` returns the run's summary, `evaluate()` the held-out summary, `save(path)` writes the
    policy as a Hugging Face model directory; `save_checkpoint()` a resumable checkpoint.
    """

    def __init__(self, config: Config | dict | str | os.PathLike | None = None, *, model=None,
                 tokenizer=None, train_dataset=None, eval_dataset=None, reward_funcs=None,
                 callbacks=None, progress: bool = True):
        cfg = as_config(config)
        if isinstance(model, (str, os.PathLike)):
            cfg.model.name, model = str(model), None
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if tokenizer is not None and model is None:
            from .models import load_model
            model = load_model(cfg.model.name, "cpu", cfg.model.dtype, cfg.model.cache_dir,
                               seed=cfg.train.seed)[0]
        if model is not None:  # what the saved config and the logs call it: where it came from
            cfg.model.name = str(getattr(model, "name_or_path", "") or f"<{type(model).__name__} object>")
        task = (_dataset_task(cfg, train_dataset, eval_dataset)
                if train_dataset is not None or eval_dataset is not None else None)
        scorer = _function_scorer(cfg, reward_funcs) if reward_funcs is not None else None
        super().__init__(cfg, progress, task=task, scorer=scorer, model=model,
                         tokenizer=tokenizer, callbacks=callbacks or ())

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, path: str | os.PathLike) -> Path:
        """The current policy as one Hugging Face model directory (LoRA adapters merged), which
        `from_pretrained` and `pivotal eval --model` load. Every rank calls it; rank 0 writes."""
        from .distributed import copy_full_parameters
        from .export import write_model_dir
        from .lora import merged_model

        if self.whole_policy is not self.model:  # FSDP2: gather the shards into the replica
            copy_full_parameters(self.model, self.whole_policy)
        if self.runtime.is_main:
            policy = (merged_model(copy.deepcopy(self.adapters)) if self.adapters is not None
                      else self.whole_policy)
            write_model_dir(policy, self.tokenizer, Path(path))
        self.runtime.barrier()
        return Path(path)


# ---------------------------------------------------------------------------------------------
# The diagnostics: the CLI subcommands as functions returning their summaries
# ---------------------------------------------------------------------------------------------

def _namespace(command: str, required: dict, options: dict) -> argparse.Namespace:
    """The argparse namespace `pivotal <command>` would build, from Python keyword arguments
    named as the CLI's options (`max_new_tokens` for --max-new-tokens)."""
    from .cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices[command]._actions if a.dest not in ("help", "fn")}
    given = {**required, **options}
    for key in given:
        if key not in actions:
            raise TypeError(f"{command}() got an unknown option '{key}'.{nearest_name(key, actions)} "
                            f"Options: {', '.join(sorted(actions))}")
    values = {dest: copy.deepcopy(a.default) for dest, a in actions.items()}
    values.update(given)
    values.setdefault("items", [])
    return argparse.Namespace(**values)


def evaluate(model: str | os.PathLike = "smollm2-135m", data=None, *,
             config: Config | dict | str | None = None, out: str | os.PathLike = "runs/eval",
             **options) -> dict:
    """`pivotal eval` as a function: greedy (and with eval.n_samples > 1 sampled) accuracy of
    `model` on `data` (a path, a list of dicts or a datasets.Dataset; default: the config's task's
    held-out set). Writes <out>/eval_summary.json and generations.jsonl; returns the summary.
    options: the CLI's (limit, question_field, answer_field, answer_format, extrapolate_base...)."""
    from .cli import run_eval

    args = _namespace("eval", {"model": str(model), "out": str(out)}, options)
    args.data = data if data is None or not isinstance(data, (str, os.PathLike)) else str(data)
    cfg = as_config(config)
    return run_eval(args, cfg)


def analyze(rl: str | os.PathLike, base: str | os.PathLike = "smollm2-135m", *,
            out: str | os.PathLike = "runs/analyze", **options) -> dict:
    """`pivotal analyze` as a function: the per-token shift from `base` to `rl`; writes
    tokens.parquet, responses.jsonl and summary.json into `out` and returns the summary.
    options: the CLI's (generations, task, data, limit, sampler, max_new_tokens, quiet...)."""
    from .analysis.cli_analyze import analyze_from_args

    args = _namespace("analyze", {"rl": str(rl), "base": str(base), "out": str(out)}, options)
    return analyze_from_args(args)[0]


def cross_sample(rl: str | os.PathLike, base: str | os.PathLike = "smollm2-135m", *,
                 out: str | os.PathLike = "runs/cross_sample", **options) -> dict:
    """`pivotal cross-sample` as a function: accuracy against replacement budget; writes
    cross_sampling.json and .png into `out` and returns the result.
    options: the CLI's (task, data, limit, criteria, directions, taus_dlogp, ...)."""
    from .analysis.cli_cross_sample import cross_sample_from_args

    args = _namespace("cross-sample", {"rl": str(rl), "base": str(base), "out": str(out)}, options)
    return cross_sample_from_args(args)[0]


def report(analysis_dir: str | os.PathLike, *, cross_sampling: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None, max_responses: int = 20,
           color_by: str = "dlogp") -> Path:
    """`pivotal report` as a function: one self-contained HTML page; returns its path."""
    from .analysis.report import write_report

    if max_responses < 0:
        raise ValueError(f"max_responses must be >= 0, got {max_responses}")
    target = Path(out) if out else Path(analysis_dir) / "report.html"
    return write_report(analysis_dir, target, cross_sampling_path=cross_sampling,
                        max_responses=max_responses, color_by=color_by)
