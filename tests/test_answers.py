"""Gold answers as benchmark files write them (pivotal.tasks.answers), and the loader's report of
the rows no rule reads."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pivotal.errors import DataError
from pivotal.rewards import load_reward
from pivotal.tasks.answers import UnreadableAnswer, clean_answer
from pivotal.tasks.files import FileTask, load_problems


@pytest.mark.parametrize("raw,clean", [
    # units in parentheses or after the number
    ("9 (apples)", "9"), ("16 (oranges)", "16"), ("16 oranges", "16"), ("-5 degrees", "-5"),
    ("5 cm^2", "5"), ("60 km/h", "60"), ("3 square feet", "3"), ("3 miles per hour", "3"),
    ("5°C", "5"), ("1,234.50 dollars", "1234.5"),
    # currency and percent
    ("$18.00", "18"), ("€5", "5"), ("USD 5", "5"), ("Rs. 500", "500"), ("50%", "50"),
    ("50 percent", "50"), ("\\$7", "7"), ("12.5\\%", "12.5"),
    # numbers, fractions, mixed numbers
    ("1,234", "1234"), ("3/4", "3/4"), ("-3/4", "-3/4"), ("1 1/2", "3/2"), ("3 1/2 cups", "7/2"),
    ("\u22122", "-2"), ("+5", "5"), ("5.", "5"), (5.0, "5"), (0.5, "0.5"), (7, "7"),
    # LaTeX
    ("\\frac{1}{2}", "1/2"), ("$\\frac{1}{2}$", "1/2"), ("\\dfrac{3}{4}", "3/4"), ("\\boxed{5}", "5"),
    ("\\(42\\)", "42"), ("\\text{5 apples}", "5"), ("x = 5", "5"), ("**7**", "7"),
    ("1{,}000", "1000"),
    # expressions and short text kept as written, for the verifier
    ("2\\sqrt{3}", "2\\sqrt{3}"), ("x^2 + 1", "x^2 + 1"), ("(1, 2)", "(1, 2)"), ("3:4", "3:4"),
    ("yes", "yes"), ("(B)", "(B)"), ("\\pi", "\\pi"),
])
def test_clean_answer_rules(raw, clean):
    assert clean_answer(raw) == clean


@pytest.mark.parametrize("raw,reason", [
    ("16 or 17", "prose"), ("about 5", "prose"), ("2 hours 30 minutes", "prose"),
    ("5 or more", "prose"), ("5 apples and 3 pears", "prose"), ("1 234", "side by side"),
    ("The answer is yes today", "words of text"), (True, "boolean"), (float("nan"), "finite"),
    ("$ $", "empty"), ([5], "list"),
])
def test_unreadable_answers_are_refused_with_a_reason(raw, reason):
    with pytest.raises(UnreadableAnswer, match=reason):
        clean_answer(raw)


def write_rows(path: Path, answers: list) -> Path:
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))
    return path


def test_unreadable_rows_are_reported_together_with_file_and_line(tmp_path):
    path = write_rows(tmp_path / "bench.jsonl", ["9 (apples)", "16 or 17", "$3", "about 5", "4"])
    with pytest.raises(DataError) as err:
        load_problems(path)
    msg = str(err.value)
    assert "2 of 5 rows" in msg
    assert "bench.jsonl line 2: answer '16 or 17'" in msg and "bench.jsonl line 4" in msg
    assert "answer_format='text'" in msg
    # the text format keeps every field as written
    assert [p.answer for p in load_problems(path, answer_format="text")] == \
        ["9 (apples)", "16 or 17", "$3", "about 5", "4"]
    with pytest.raises(DataError, match="bench.jsonl line 2"):
        FileTask(path, eval_size=1)


def test_a_unit_answer_now_scores_the_right_response(tmp_path):
    """The issue's new-user case: the gold answer reads "16 (oranges)"; a right response used to
    score 0 because the answer was compared as text."""
    problem = load_problems(write_rows(tmp_path / "fruit.jsonl", ["16 (oranges)"]))[0]
    assert problem.answer == "16"
    reward = load_reward("math")
    assert reward("... a total of 16 oranges. The final answer is: 16", problem) == 1.0
    assert reward("... a total of 15 oranges. The final answer is: 15", problem) == 0.0


@pytest.mark.skipif(not os.environ.get("PIVOTAL_DATA_DIR"), reason="needs PIVOTAL_DATA_DIR")
@pytest.mark.parametrize("name,field,fmt", [("gsm8k_test.jsonl", "answer", "gsm8k"),
                                            ("svamp_test.jsonl", "Answer", "plain"),
                                            ("mawps_test.jsonl", "target", "plain")])
def test_real_benchmarks_read_as_plain_numbers(name, field, fmt):
    """Every answer of the real GSM8K / SVAMP / MAWPS files is read, as a plain number."""
    question = {"gsm8k_test.jsonl": "question", "svamp_test.jsonl": "Body",
                "mawps_test.jsonl": "input"}[name]
    problems = load_problems(Path(os.environ["PIVOTAL_DATA_DIR"]) / name, question, field, fmt)
    assert len(problems) > 900
    for p in problems:
        assert re.fullmatch(r"-?\d+(\.\d+)?", p.answer), (p.id, p.answer)
