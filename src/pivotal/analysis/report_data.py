"""Reading and checking the inputs of `pivotal report`: summary.json, responses.jsonl and
tokens.parquet of a `pivotal analyze` directory, and the optional cross_sampling.json of
`pivotal cross-sample`. Errors name the file at fault and the command that writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

# columns of tokens.parquet the report reads (the shared spec's columns, minus the unused ones)
TOKEN_COLUMNS = ("response", "position", "token", "js", "entropy_base", "entropy_rl", "logp_base",
                 "logp_rl", "dlogp", "rank_base", "rank_rl", "top_base_tokens", "top_rl_tokens",
                 "top_base_probs", "top_rl_probs")
OPTIONAL_TOKEN_COLUMNS = ("cig",)  # `pivotal analyze --cig-hint`
SUMMARY_KEYS = ("base", "rl", "n_responses", "n_tokens")
CROSS_KEYS = ("accuracy_base", "accuracy_rl", "points")
POINT_KEYS = ("direction", "criterion", "budget", "accuracy")

WRITTEN_BY_ANALYZE = "it is written by `pivotal analyze --out DIR`"
WRITTEN_BY_CROSS = "it is written by `pivotal cross-sample --out DIR`"


def load_summary(analysis_dir: str | Path) -> dict:
    """summary.json of an analysis directory; FileNotFoundError naming the path (and who writes
    it) when the directory or the file is missing, ValueError when a required key is missing."""
    analysis_dir = Path(analysis_dir)
    if not analysis_dir.is_dir():
        raise FileNotFoundError(f"analysis directory {analysis_dir} does not exist: "
                                f"{WRITTEN_BY_ANALYZE}")
    path = analysis_dir / "summary.json"
    summary = _read_json(path, WRITTEN_BY_ANALYZE)
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"{path} lacks key(s) {', '.join(missing)}: {WRITTEN_BY_ANALYZE}")
    return summary


def load_responses(analysis_dir: str | Path) -> list[dict] | None:
    """The responses.jsonl records in file order, or None when the file is absent (the token view
    then has no prompts and no correctness); ValueError naming the line of a malformed record."""
    path = Path(analysis_dir) / "responses.jsonl"
    if not path.is_file():
        return None
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not valid JSON ({e})") from None
            if "response" not in record:
                raise ValueError(f"{path} line {n} has no 'response' (index) field")
            records.append(record)
    return records


def load_tokens(analysis_dir: str | Path, responses: list[int]):
    """The rows of tokens.parquet of the given response indices (pandas DataFrame sorted by
    response, position); only those rows are read, so a large table costs little memory."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(analysis_dir) / "tokens.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {WRITTEN_BY_ANALYZE}")
    names = set(pq.read_schema(path).names)
    missing = [c for c in TOKEN_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}: {WRITTEN_BY_ANALYZE}")
    columns = list(TOKEN_COLUMNS) + [c for c in OPTIONAL_TOKEN_COLUMNS if c in names]
    if not responses:
        return pd.DataFrame(columns=columns)
    df = pd.read_parquet(path, columns=columns,
                         filters=[("response", "in", [int(r) for r in responses])])
    return df.sort_values(["response", "position"], kind="stable").reset_index(drop=True)


def load_cross_sampling(path: str | Path) -> dict:
    """cross_sampling.json, checked: top-level keys accuracy_base, accuracy_rl, points and, in
    every point, direction, criterion, budget, accuracy (ValueError naming the key and point)."""
    path = Path(path)
    data = _read_json(path, WRITTEN_BY_CROSS)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object: {WRITTEN_BY_CROSS}")
    missing = [k for k in CROSS_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks required key(s) {', '.join(missing)}: {WRITTEN_BY_CROSS}")
    if not isinstance(data["points"], list):
        raise ValueError(f"{path}: 'points' must be a list")
    for i, point in enumerate(data["points"]):
        lacking = [k for k in POINT_KEYS if k not in point]
        if lacking:
            raise ValueError(f"{path}: points[{i}] lacks required key(s) {', '.join(lacking)}")
    return data


def _read_json(path: Path, written_by: str):
    """A JSON file's content; FileNotFoundError / ValueError naming the file and what writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {written_by}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
