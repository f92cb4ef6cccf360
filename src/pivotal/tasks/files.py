"""Problems from data files (JSON lines, parquet) or Hugging Face hub datasets.

``FileTask`` reads rows from a .jsonl/.ndjson/.json file (one JSON object a line; a .json file may
also be one JSON array of objects) or a .parquet file, and maps each row to a Problem:

  question_field: a field name ("question") or a template over the row ("{Body} {Question}").
  answer_field:   likewise; the answer is read by `pivotal.tasks.answers.clean_answer` (5.0 -> "5",
                  "1,000" -> "1000", "$18.00" -> "18", "9 (apples)" -> "9", "\\frac{1}{2}" -> "1/2");
                  rows whose answer no rule reads are reported together, with file and line.
  answer_format:  "plain" (the field is the answer), "gsm8k" (the answer follows the last "####")
                  or "text" (the field as written, no cleaning).

Held-out set: with ``eval_path`` the eval set is that file, and every training row whose question
also appears there is dropped; without it, ``eval_size`` rows (else ``eval_fraction`` of the rows)
are held out by a seeded shuffle. Questions are compared after collapsing whitespace and case, and
duplicates within a file are kept once, so no eval question is ever a training question.

Training order: ``train_problem(i)`` walks a fresh seeded permutation of the training rows each
epoch (epoch = i // n, permutation from ``random.Random(f"{seed}:{epoch}")``), so any index is
reproducible on its own.

Presets (``PRESETS``, ``from_preset``, ``gsm8k_task``, ``svamp_task``, ``mawps_task``) know the field
layout of GSM8K, SVAMP and MAWPS; they look for the files in ``data_dir`` or, failing that, in the
folder named by the ``PIVOTAL_DATA_DIR`` environment variable.

``HubTask`` loads a dataset with ``datasets.load_dataset``. Before calling it, it checks in a few
seconds whether the hub can be reached at all; if not (or if HF_HUB_OFFLINE is set) the load runs in
offline mode, which still finds datasets in the local cache, and otherwise fails at once with a
clear error instead of spending ~25 s on retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pivotal.errors import DataError
from pivotal.hub import env_offline as _env_offline
from pivotal.hub import hub_reachable
from pivotal.tasks.answers import UnreadableAnswer, clean_answer
from pivotal.tasks.base import Problem

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
ANSWER_FORMATS = ("plain", "gsm8k", "text")
DATA_DIR_ENV = "PIVOTAL_DATA_DIR"


# ----------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceRow:
    """One raw row and where it came from, for error messages ("data.jsonl line 17")."""

    source: str
    where: str  # "line 17", "row 3"
    index: int  # 1-based position in the source
    data: dict[str, Any]


def read_rows(path: str | os.PathLike) -> list[SourceRow]:
    """All rows of a .jsonl/.ndjson/.json or .parquet file; clear errors naming file and line."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"task data file not found: {p}")
    if not p.is_file():
        raise DataError(f"task data path is not a file: {p}")
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        rows = _read_parquet(p)
    elif suffix in JSON_SUFFIXES:
        rows = _read_json(p)
    else:
        raise DataError(f"{p}: unsupported file type '{suffix or '(none)'}'; "
                         f"use JSON lines ({', '.join(JSON_SUFFIXES)}) or parquet (.parquet)")
    if not rows:
        raise DataError(f"{p}: file is empty (no data rows)")
    return rows


def _read_json(p: Path) -> list[SourceRow]:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from e
    if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _read_json_array(p, text)
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} line {lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
        rows.append(_as_row(p, f"line {lineno}", lineno, data))
    return rows


def _read_json_array(p: Path, text: str) -> list[SourceRow]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p} line {e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    return [_as_row(p, f"item {i}", i, item) for i, item in enumerate(items, 1)]


def _as_row(p: Path, where: str, index: int, data: Any) -> SourceRow:
    if not isinstance(data, dict):
        raise DataError(f"{p} {where}: expected a JSON object ({{\"field\": value, ...}}), "
                         f"got {type(data).__name__}")
    return SourceRow(str(p), where, index, data)


def _read_parquet(p: Path) -> list[SourceRow]:
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p}: could not read parquet file: {e}") from e
    return [SourceRow(str(p), f"row {i}", i, data) for i, data in enumerate(records, 1)]


# ----------------------------------------------------------------------------------------------
# Mapping a row to question and answer
# ----------------------------------------------------------------------------------------------

def template_fields(spec: str) -> list[str] | None:
    """The row fields a "{a} {b}" template reads, or None when spec is a plain field name."""
    if "{" not in spec:
        return None
    names = [name for _, name, _, _ in string.Formatter().parse(spec) if name]
    return [re.split(r"[.\[]", name, maxsplit=1)[0] for name in names]


def field_value(row: SourceRow, spec: str, role: str) -> Any:
    """The row's value for a field name or template; role ("question"/"answer") is for messages."""
    names = template_fields(spec)
    for name in names if names is not None else [spec]:
        if name not in row.data:
            have = ", ".join(row.data) or "(none)"
            raise DataError(f"{row.source} {row.where}: missing field '{name}' ({role}_field={spec!r}); "
                             f"the row has fields: {have}")
    if names is None:
        value = row.data[spec]
    else:
        try:
            value = spec.format_map(row.data)
        except (ValueError, IndexError, KeyError, AttributeError) as e:
            raise DataError(f"{row.source} {row.where}: bad {role}_field template {spec!r}: {e}") from None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{row.source} {row.where}: {role} ({role}_field={spec!r}) is empty")
    return value


def extract_answer(row: SourceRow, spec: str, answer_format: str) -> str:
    """The row's answer, after '####' for the gsm8k format, read by `answers.clean_answer`
    (kept as written for the text format). An answer no rule reads raises UnreadableRow."""
    value = field_value(row, spec, "answer")
    if answer_format == "gsm8k":
        text = str(value)
        if "####" not in text:
            raise DataError(f"{row.source} {row.where}: answer_format='gsm8k' but the answer field "
                             f"{spec!r} has no '#### <answer>' line: {text[-80:]!r}")
        value = text.rsplit("####", 1)[1]
        if not value.strip():
            raise DataError(f"{row.source} {row.where}: the answer after '####' is empty")
    if answer_format == "text":
        return str(value).strip()
    try:
        return clean_answer(value)
    except UnreadableAnswer as e:
        raise UnreadableRow(f"{row.source} {row.where}: answer {str(value)[:60]!r} "
                            f"({spec!r}) cannot be read as an answer: {e}") from None


class UnreadableRow(DataError):
    """A row whose gold answer no cleaning rule reads (see `pivotal.tasks.answers`)."""


_UNREADABLE_SHOWN = 5


def normalize_question(text: str) -> str:
    """The form questions are compared in: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def rows_to_problems(rows: list[SourceRow], name: str, question_field: str, answer_field: str,
                     answer_format: str, reward: str = "math", part: str | None = None) -> list[Problem]:
    """Rows as Problems, keeping the first of any repeated question."""
    problems, seen, unreadable = [], set(), []
    for row in rows:
        question = str(field_value(row, question_field, "question")).strip()
        try:
            answer = extract_answer(row, answer_field, answer_format)
        except UnreadableRow as e:  # collected, so that one error lists what to fix
            unreadable.append(str(e))
            continue
        key = normalize_question(question)
        if key in seen:
            continue
        seen.add(key)
        pid = f"{name}-{part}-{row.index}" if part else f"{name}-{row.index}"
        meta = {"source": Path(row.source).name, "row": row.index}
        problems.append(Problem(id=pid, question=question, answer=answer, reward=reward, meta=meta))
    if unreadable:
        more = len(unreadable) - _UNREADABLE_SHOWN
        raise UnreadableRow("\n".join(
            [f"{len(unreadable)} of {len(rows)} rows have an answer that cannot be read as an "
             "answer (the rules are in pivotal.tasks.answers):", *unreadable[:_UNREADABLE_SHOWN]]
            + ([f"... and {more} more"] if more > 0 else [])
            + ["Fix these rows, or set answer_format='text' to compare the answer field as written."]))
    return problems


def load_problems(path: str | os.PathLike, question_field: str = "question",
                  answer_field: str = "answer", answer_format: str = "plain",
                  reward: str = "math") -> list[Problem]:
    """Every distinct row of a JSONL/parquet file as a Problem (evaluation on a whole file)."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}")
    return rows_to_problems(read_rows(path), Path(path).stem, question_field, answer_field,
                            answer_format, reward)


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------

class FileTask:
    """Verifiable problems from a JSON-lines or parquet file, with a disjoint held-out set."""

    def __init__(self, path: str | os.PathLike, question_field: str = "question",
                 answer_field: str = "answer", answer_format: str = "plain",
                 eval_path: str | os.PathLike | None = None, eval_fraction: float = 0.1,
                 eval_size: int | None = None, seed: int = 0, name: str | None = None,
                 eval_seed: int | None = None, reward: str = "math"):
        """eval_size: with eval_path, keep the first eval_size eval rows; without, hold out that
        many rows (overrides eval_fraction). eval_seed: seed of the held-out split (default: seed);
        fix it to compare runs of different seeds on one eval set. reward: the verifier's name."""
        train_rows = read_rows(path)
        eval_rows = read_rows(eval_path) if eval_path is not None else None
        self._setup(train_rows, eval_rows, name or Path(path).stem, question_field, answer_field,
                    answer_format, eval_fraction, eval_size, seed, eval_seed, reward)

    def _setup(self, train_rows: list[SourceRow], eval_rows: list[SourceRow] | None, name: str,
               question_field: str, answer_field: str, answer_format: str, eval_fraction: float,
               eval_size: int | None, seed: int, eval_seed: int | None, reward: str) -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}")
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if eval_size is not None and eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {eval_size}")
        self.name, self.seed, self.reward = name, seed, reward
        self.eval_seed = seed if eval_seed is None else eval_seed
        self._fields = (question_field, answer_field, answer_format)
        train = self._problems(train_rows, "train" if eval_rows is not None else None)
        if eval_rows is not None:
            self._train, self._eval = self._drop_eval_questions(train, self._problems(eval_rows, "eval"), eval_size)
        else:
            self._train, self._eval = self._split(train, eval_fraction, eval_size)
        if not self._train:
            raise ValueError(f"{name}: no training problems left after holding out the eval set")
        self._epoch: tuple[int, list[int]] | None = None

    def _problems(self, rows: list[SourceRow], part: str | None) -> list[Problem]:
        return rows_to_problems(rows, self.name, *self._fields, reward=self.reward, part=part)

    @staticmethod
    def _drop_eval_questions(train: list[Problem], evals: list[Problem],
                             eval_size: int | None) -> tuple[list[Problem], list[Problem]]:
        held = {normalize_question(p.question) for p in evals}
        kept = [p for p in train if normalize_question(p.question) not in held]
        return kept, evals[:eval_size] if eval_size is not None else evals

    def _split(self, problems: list[Problem], eval_fraction: float,
               eval_size: int | None) -> tuple[list[Problem], list[Problem]]:
        n = len(problems)
        k = eval_size if eval_size is not None else round(eval_fraction * n)
        if eval_size is None and eval_fraction > 0 and n > 1:
            k = max(k, 1)
        if k >= n:
            raise ValueError(f"{self.name}: holding out {k} of {n} distinct problems leaves none to train on")
        order = list(range(n))
        random.Random(f"{self.eval_seed}:split").shuffle(order)
        held = set(order[:k])
        train = [p for i, p in enumerate(problems) if i not in held]
        return train, [p for i, p in enumerate(problems) if i in held]

    @property
    def num_train(self) -> int:
        """How many distinct training problems there are (one epoch)."""
        return len(self._train)

    def train_problem(self, index: int) -> Problem:
        """The index-th problem of a seeded, per-epoch shuffle of the training rows."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        epoch, position = divmod(index, len(self._train))
        if self._epoch is None or self._epoch[0] != epoch:
            order = list(range(len(self._train)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._epoch = (epoch, order)
        return self._train[self._epoch[1][position]]

    def eval_problems(self) -> list[Problem]:
        """The held-out problems, in file order."""
        return list(self._eval)


# ----------------------------------------------------------------------------------------------
# Presets for the benchmark files
# ----------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "gsm8k": {"train": "gsm8k_train.jsonl", "eval": "gsm8k_test.jsonl", "question_field": "question",
              "answer_field": "answer", "answer_format": "gsm8k", "eval_fraction": 0.1},
    # SVAMP and MAWPS ship as test sets only: train on part of the file, evaluate on the rest.
    "svamp": {"train": "svamp_test.jsonl", "eval": None, "question_field": "{Body} {Question}",
              "answer_field": "Answer", "answer_format": "plain", "eval_fraction": 0.2},
    "mawps": {"train": "mawps_test.jsonl", "eval": None, "question_field": "input",
              "answer_field": "target", "answer_format": "plain", "eval_fraction": 0.2},
}


def resolve_data_dir(preset: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder holding the preset's files: data_dir, else $PIVOTAL_DATA_DIR; clear errors."""
    spec = PRESETS[preset]
    files = [f for f in (spec["train"], spec["eval"]) if f]
    if data_dir is None and not os.environ.get(DATA_DIR_ENV):
        raise DataError(f"preset '{preset}' needs its data files ({', '.join(files)}): pass data_dir=<folder> "
                         f"or set the {DATA_DIR_ENV} environment variable to the folder holding them")
    origin = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
    folder = Path(data_dir if data_dir is not None else os.environ[DATA_DIR_ENV]).expanduser()
    for f in files:
        if not (folder / f).is_file():
            raise FileNotFoundError(f"preset '{preset}': {f} not found in {folder} (from the {origin}); "
                                    f"pass data_dir=<folder> or set {DATA_DIR_ENV} to the folder holding it")
    return folder


def from_preset(preset: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
                eval_fraction: float | None = None, eval_size: int | None = None,
                eval_seed: int | None = None) -> FileTask:
    """A FileTask for a known benchmark ("gsm8k", "svamp", "mawps"); eval_fraction applies only to
    presets without their own eval file."""
    if preset not in PRESETS:
        raise DataError(f"unknown preset '{preset}'; known: {', '.join(sorted(PRESETS))}")
    spec = PRESETS[preset]
    folder = resolve_data_dir(preset, data_dir)
    return FileTask(folder / spec["train"], question_field=spec["question_field"],
                    answer_field=spec["answer_field"], answer_format=spec["answer_format"],
                    eval_path=folder / spec["eval"] if spec["eval"] else None,
                    eval_fraction=spec["eval_fraction"] if eval_fraction is None else eval_fraction,
                    eval_size=eval_size, seed=seed, name=preset, eval_seed=eval_seed)


def gsm8k_task(data_dir: str | os.PathLike | None = None, seed: int = 0, eval_size: int | None = None,
               eval_seed: int | None = None) -> FileTask:
    """GSM8K: train on gsm8k_train.jsonl minus any test question, evaluate on gsm8k_test.jsonl."""
    return from_preset("gsm8k", data_dir, seed=seed, eval_size=eval_size, eval_seed=eval_seed)


def svamp_task(data_dir: str | os.PathLike | None = None, seed: int = 0, eval_fraction: float | None = None,
               eval_size: int | None = None, eval_seed: int | None = None) -> FileTask:
    """SVAMP (svamp_test.jsonl, problem = Body + " " + Question) split into train and eval."""
    return from_preset("svamp", data_dir, seed, eval_fraction, eval_size, eval_seed)


def mawps_task(data_dir: str | os.PathLike | None = None, seed: int = 0, eval_fraction: float | None = None,
               eval_size: int | None = None, eval_seed: int | None = None) -> FileTask:
    """MAWPS (mawps_test.jsonl, fields input/target) split into train and eval."""
    return from_preset("mawps", data_dir, seed, eval_fraction, eval_size, eval_seed)


# ----------------------------------------------------------------------------------------------
# Hugging Face hub datasets
# ----------------------------------------------------------------------------------------------

class HubUnavailableError(DataError, RuntimeError):
    """A hub dataset could not be loaded (no network, unknown name or split, missing package)."""


@contextlib.contextmanager
def forced_offline() -> Iterator[None]:
    """Put huggingface_hub and datasets in offline mode (cache only) for the duration."""
    import datasets.config
    import huggingface_hub.constants

    saved = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE,
             getattr(datasets.config, "HF_DATASETS_OFFLINE", None))
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[:2]
        datasets.config.HF_DATASETS_OFFLINE = saved[2]


def load_hub_rows(dataset: str, split: str, config: str | None = None,
                  probe_timeout: float = 3.0) -> list[SourceRow]:
    """Rows of one split of a hub dataset; fails within seconds, with a clear error, when offline."""
    hint = "pass a local .jsonl/.parquet file instead (task 'file', FileTask)"
    try:
        import datasets
    except ImportError as e:
        raise HubUnavailableError(f"loading hub datasets needs the 'datasets' package; {hint}") from e
    offline = _env_offline() or not hub_reachable(probe_timeout)
    guard = forced_offline() if offline else contextlib.nullcontext()
    try:
        with guard:
            loaded = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:
        why = "offline: the hub is unreachable and the dataset is not cached" if offline else "offline?"
        raise HubUnavailableError(f"could not load dataset '{dataset}' (split '{split}') from the Hugging Face "
                                  f"hub ({why}) — {hint}. Cause: {type(e).__name__}: {e}") from e
    source = f"{dataset}[{split}]"
    rows = [SourceRow(source, f"row {i}", i, dict(item)) for i, item in enumerate(loaded, 1)]
    if not rows:
        raise DataError(f"{source}: the split is empty (no data rows)")
    return rows


class HubTask(FileTask):
    """A FileTask whose rows come from a Hugging Face hub dataset (``datasets.load_dataset``)."""

    def __init__(self, dataset: str, split: str = "train", eval_split: str | None = None,
                 config: str | None = None, question_field: str = "question", answer_field: str = "answer",
                 answer_format: str = "plain", eval_fraction: float = 0.1, eval_size: int | None = None,
                 seed: int = 0, name: str | None = None, eval_seed: int | None = None, reward: str = "math",
                 probe_timeout: float = 3.0):
        """dataset: hub name ("openai/gsm8k"); config: its subset ("main"); eval_split: a split to
        evaluate on (else part of `split` is held out). Offline, fails within seconds."""
        train_rows = load_hub_rows(dataset, split, config, probe_timeout)
        eval_rows = load_hub_rows(dataset, eval_split, config, probe_timeout) if eval_split else None
        self._setup(train_rows, eval_rows, name or dataset.rsplit("/", 1)[-1], question_field, answer_field,
                    answer_format, eval_fraction, eval_size, seed, eval_seed, reward)
