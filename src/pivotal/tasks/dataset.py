"""Problems from data a Python user already holds: a `datasets.Dataset`, a list of dicts, or a
file path, with the field mapping of task files (`pivotal.tasks.files`).

    task = DatasetTask([{"question": "2+3?", "answer": "5"}, ...])
    task = DatasetTask(load_dataset("gsm8k", "main")["train"], answer_format="gsm8k")
    task = DatasetTask("train.jsonl", eval="test.jsonl", question_field="{Body} {Question}")

Rows are read as a `FileTask` reads a file's: the question and answer fields (or templates), the
answer cleaning and its errors naming the row, the held-out split, the seeded per-epoch order.
Two things more:
  - every row's columns travel with its problem (`problem.meta["columns"]`), so that reward
    functions in TRL's convention get the dataset's other columns as keyword arguments;
  - a question field holding chat messages (TRL's conversational "prompt": a list of
    {"role", "content"}) gives the last user message's text (pivotal builds the chat itself,
    with `task.system_prompt`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pivotal.errors import DataError
from pivotal.tasks.base import Problem
from pivotal.tasks.files import FileTask, SourceRow, read_rows, template_fields

DataSource = Any  # a datasets.Dataset, an iterable of mappings, or a path to a .jsonl/.parquet file


def source_rows(data: DataSource, label: str) -> list[SourceRow]:
    """The rows of `data` as SourceRows named "<label> row i" (files keep "file line i")."""
    if isinstance(data, (str, os.PathLike)):
        return read_rows(Path(data))
    if isinstance(data, Mapping):
        raise DataError(f"{label}: got one mapping; give a list of rows (dicts), a "
                        "datasets.Dataset or a file path")
    if not isinstance(data, Iterable):
        raise DataError(f"{label}: expected a datasets.Dataset, a list of dicts or a file path, "
                        f"got {type(data).__name__}")
    rows = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, Mapping):
            raise DataError(f"{label} row {i}: expected a dict of columns, got {type(item).__name__}")
        rows.append(SourceRow(label, f"row {i}", i, dict(item)))
    if not rows:
        raise DataError(f"{label}: no rows")
    return rows


def _message_text(row: SourceRow, field: str) -> SourceRow:
    """The row with a chat-message question field replaced by its last user message."""
    value = row.data.get(field)
    if not (isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value)):
        return row
    users = [m.get("content") for m in value if m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise DataError(f"{row.source} {row.where}: question field '{field}' holds chat messages "
                        "but no user message with text content")
    return SourceRow(row.source, row.where, row.index, {**row.data, field: users[-1]})


class DatasetTask(FileTask):
    """Verifiable problems from in-memory rows or a file; the held-out set is `eval`, else a
    seeded `eval_fraction` (or `eval_size` rows) of `train`."""

    def __init__(self, train: DataSource = None, eval: DataSource = None,
                 question_field: str = "question", answer_field: str = "answer",
                 answer_format: str = "plain", eval_fraction: float = 0.1,
                 eval_size: int | None = None, seed: int = 0, name: str = "dataset",
                 eval_seed: int | None = None, reward: str = "math"):
        if train is None:
            raise DataError("task 'dataset' needs its rows: pass train_dataset= to pivotal.Trainer "
                            "(a datasets.Dataset, a list of dicts or a file path), or a file path "
                            "as task.options.train")
        single = template_fields(question_field) is None
        prepare = (lambda r: _message_text(r, question_field)) if single else (lambda r: r)
        train_rows = [prepare(r) for r in source_rows(train, "train_dataset")]
        eval_rows = ([prepare(r) for r in source_rows(eval, "eval_dataset")]
                     if eval is not None else None)
        self._columns = {(r.source, r.index): r.data for r in train_rows + (eval_rows or [])}
        self._setup(train_rows, eval_rows, name, question_field, answer_field, answer_format,
                    eval_fraction, eval_size, seed, eval_seed, reward)

    def _problems(self, rows: list[SourceRow], part: str | None) -> list[Problem]:
        problems = super()._problems(rows, part)
        source = rows[0].source
        return [replace(p, meta={**p.meta, "columns": self._columns[(source, p.meta["row"])]})
                for p in problems]
