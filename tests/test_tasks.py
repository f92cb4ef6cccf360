"""Tests for the task layer: generated tasks, file tasks, presets, hub loading, the task registry."""

from __future__ import annotations

import ast
import itertools
import json
import operator
import os
import time
from fractions import Fraction
from pathlib import Path

import pytest

from pivotal.registry import UnknownNameError
from pivotal.tasks import (
    TASKS,
    ArithmeticTask,
    CountdownTask,
    FileTask,
    HubTask,
    HubUnavailableError,
    Problem,
    Task,
    build_task,
    format_prompt,
    gsm8k_task,
    mawps_task,
    svamp_task,
)
from pivotal.tasks.answers import clean_answer

DATA_DIR = Path(os.environ["PIVOTAL_DATA_DIR"]) if os.environ.get("PIVOTAL_DATA_DIR") else None


def needs_data() -> Path:
    if DATA_DIR is None or not (DATA_DIR / "gsm8k_train.jsonl").is_file():
        pytest.skip(f"benchmark data not found (PIVOTAL_DATA_DIR={DATA_DIR})")
    return DATA_DIR


def questions(task: Task, n: int) -> set[str]:
    return {task.train_problem(i).question for i in range(n)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------
# Arithmetic
# ------------------------------------------------------------------------------------------------

BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def reference_value(question: str) -> int:
    """Independent evaluator: parse 'What is <expr>?' with Python's own grammar and fold the tree."""
    assert question.startswith("What is ") and question.endswith("?")

    def fold(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in BINOPS:
            return BINOPS[type(node.op)](fold(node.left), fold(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int), ast.dump(node)
        return node.value

    return fold(ast.parse(question[len("What is "):-1], mode="eval").body)


def test_arithmetic_is_a_task_and_deterministic_per_index():
    a, b = ArithmeticTask(seed=3), ArithmeticTask(seed=3)
    assert isinstance(a, Task)
    assert a.train_problem(12345) == b.train_problem(12345)
    assert [a.train_problem(i) for i in (7, 3, 7)][0] == a.train_problem(7)  # order-independent
    other = ArithmeticTask(seed=4)
    same = sum(a.train_problem(i).question == other.train_problem(i).question for i in range(200))
    assert same < 50
    assert a.eval_problems() == b.eval_problems()


def test_arithmetic_answers_are_correct_and_respect_precedence():
    for task in (ArithmeticTask(), ArithmeticTask(steps=3, digits=(1, 3), allow_negative=True),
                 ArithmeticTask(ops=("*", "-"), steps=2, digits=2)):
        for i in range(300):
            p = task.train_problem(i)
            assert p.answer == str(reference_value(p.question)), p
            assert len(p.meta["ops"]) == len(p.meta["operands"]) - 1
        for p in task.eval_problems():
            assert p.answer == str(reference_value(p.question))
    task = ArithmeticTask(ops=("+", "*"), steps=2, digits=1)
    mixed = [p for p in (task.train_problem(i) for i in range(200)) if p.meta["ops"] == ["+", "*"]]
    assert mixed
    for p in mixed:
        a, b, c = p.meta["operands"]
        assert int(p.answer) == a + b * c


def test_arithmetic_knobs():
    task = ArithmeticTask(ops=("-",), digits=2, steps=1)
    for i in range(200):
        p = task.train_problem(i)
        assert all(10 <= x <= 99 for x in p.meta["operands"]) and " - " in p.question
        assert int(p.answer) >= 0  # allow_negative=False
    neg = ArithmeticTask(ops=("-",), digits=1, allow_negative=True)
    assert any(int(neg.train_problem(i).answer) < 0 for i in range(100))
    assert ArithmeticTask(ops="+-").levels[0].ops == ("+", "-")
    per_operand = ArithmeticTask(ops="+", digits=[1, (3, 3)])
    for i in range(50):
        x, y = per_operand.train_problem(i).meta["operands"]
        assert x <= 9 and 100 <= y <= 999
    assert ArithmeticTask(steps=3).train_problem(0).question.count(" ") == 2 + 2 * 3
    for bad in ({"ops": ("/",)}, {"digits": 0}, {"steps": 0}, {"digits": [1, 2, 3]}, {"eval_fraction": 0.9}):
        with pytest.raises(ValueError):
            ArithmeticTask(**bad)


def test_arithmetic_eval_is_disjoint_from_training():
    task = ArithmeticTask(digits=(1, 2), eval_size=200)
    evals = {p.question for p in task.eval_problems()}
    assert len(evals) == 200 == len(task.eval_problems())
    assert not evals & questions(task, 5000)
    # any seed's training stream stays out of any eval set
    assert not evals & questions(ArithmeticTask(seed=9), 2000)


def test_arithmetic_small_space_terminates():
    task = ArithmeticTask(ops=("+",), digits=1, eval_size=200)  # 100 questions in all
    start = time.time()
    evals = task.eval_problems()
    assert time.time() - start < 5
    assert 0 < len(evals) < 30 and len({p.question for p in evals}) == len(evals)
    train = questions(task, 2000)
    assert len(train) <= 100 - len(evals) and not train & {p.question for p in evals}


def test_arithmetic_levels_mix():
    levels = [{"ops": ["+"], "digits": 1, "weight": 3, "name": "easy"},
              {"ops": ["*"], "digits": 2, "steps": 2, "weight": 1}]
    task = ArithmeticTask.mix(levels, seed=1, eval_size=100)
    picks = [task.train_problem(i).meta["level"] for i in range(2000)]
    assert 0.68 < picks.count(0) / len(picks) < 0.82
    easy = task.train_problem(picks.index(0))
    assert easy.meta["level_name"] == "easy" and " + " in easy.question
    hard = task.train_problem(picks.index(1))
    assert hard.question.count("*") == 2 and hard.answer == str(reference_value(hard.question))
    evals = task.eval_problems()
    by_level = [sum(p.meta["level"] == k for p in evals) for k in (0, 1)]
    assert by_level[1] == 25 and 0 < by_level[0] <= 75  # level 0's space is small (100 questions)
    assert not {p.question for p in evals} & questions(task, 3000)
    with pytest.raises(ValueError, match="unknown arithmetic level key"):
        ArithmeticTask(levels=[{"op": "+"}])


# ------------------------------------------------------------------------------------------------
# Countdown
# ------------------------------------------------------------------------------------------------

def reachable(numbers: list[int], target: int) -> bool:
    """Brute force: can some subset of numbers, each used once, make target with + - * / ?"""
    def values(nums: tuple[Fraction, ...]) -> set[Fraction]:
        if len(nums) == 1:
            return {nums[0]}
        out: set[Fraction] = set()
        for r in range(1, len(nums)):
            for left_idx in itertools.combinations(range(len(nums)), r):
                left = tuple(nums[i] for i in left_idx)
                right = tuple(nums[i] for i in range(len(nums)) if i not in left_idx)
                for a in values(left):
                    for b in values(right):
                        out |= {a + b, a - b, a * b}
                        if b != 0:
                            out.add(a / b)
        return out

    fracs = [Fraction(n) for n in numbers]
    return any(Fraction(target) in values(subset)
               for r in range(1, len(fracs) + 1) for subset in itertools.combinations(fracs, r))


def test_countdown_problems_are_reachable_and_well_formed():
    for task in (CountdownTask(num_count=3, seed=0), CountdownTask(num_count=4, max_number=25, seed=1)):
        for i in range(30):
            p = task.train_problem(i)
            nums, target = p.meta["numbers"], p.meta["target"]
            assert p.reward == "countdown" and p.answer == str(target)
            assert len(nums) == task.num_count and isinstance(target, int) and target > 0
            assert p.question == (f"Using the numbers {nums}, make {target}. You may use + - * / and "
                                  f"each number at most once. Write the expression.")
            assert reachable(nums, target), p


def test_countdown_deterministic_and_disjoint():
    a, b = CountdownTask(seed=5), CountdownTask(seed=5)
    assert a.train_problem(777) == b.train_problem(777)
    assert questions(a, 100) != questions(CountdownTask(seed=6), 100)
    evals = a.eval_problems()
    assert len(evals) == 200 and evals == b.eval_problems()
    train = [a.train_problem(i) for i in range(5000)]
    assert not {p.question for p in evals} & {p.question for p in train}
    canon = lambda p: (tuple(sorted(p.meta["numbers"])), p.meta["target"])  # noqa: E731
    assert not {canon(p) for p in evals} & {canon(p) for p in train}


# ------------------------------------------------------------------------------------------------
# File tasks
# ------------------------------------------------------------------------------------------------

ROWS = [{"question": f"What is {i} plus {i}?", "answer": float(2 * i)} for i in range(50)]


def test_file_task_jsonl_split_and_determinism(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS + [ROWS[3]])  # a duplicate row is kept once
    task = FileTask(path, eval_fraction=0.2, seed=1)
    assert task.name == "data" and task.num_train == 40 and len(task.eval_problems()) == 10
    assert not {p.question for p in task.eval_problems()} & questions(task, 5000)
    assert len(questions(task, 40)) == 40  # one epoch visits every training problem once
    assert FileTask(path, eval_fraction=0.2, seed=1).train_problem(123) == task.train_problem(123)
    epoch0 = [task.train_problem(i).id for i in range(40)]
    epoch1 = [task.train_problem(i).id for i in range(40, 80)]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert [task.train_problem(i).id for i in range(40)] == epoch0  # back to epoch 0 after caching epoch 1
    other = FileTask(path, eval_fraction=0.2, seed=2)
    assert [other.train_problem(i).id for i in range(40)] != epoch0
    p = task.train_problem(0)
    assert p.answer == str(int(p.question.split()[2]) * 2) and "." not in p.answer
    assert len(FileTask(path, eval_size=7).eval_problems()) == 7
    fixed = FileTask(path, seed=1, eval_seed=0).eval_problems()
    assert fixed == FileTask(path, seed=2, eval_seed=0).eval_problems()


def test_file_task_parquet_and_templates(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"Body": f"Ann has {i} apples.", "Question": "How many apples?", "Answer": i + 0.5 * (i % 2)}
            for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    task = FileTask(tmp_path / "t.parquet", question_field="{Body} {Question}", answer_field="Answer",
                    eval_size=5)
    by_q = {p.question: p.answer for p in task.eval_problems() + [task.train_problem(i) for i in range(15)]}
    assert by_q["Ann has 4 apples. How many apples?"] == "4"
    assert by_q["Ann has 3 apples. How many apples?"] == "3.5"
    assert len(by_q) == 20


def test_file_task_gsm8k_format_and_eval_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "Q1?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Q2?", "answer": "Lots.\n#### 1,250"},
        {"question": "  q3? ", "answer": "#### -2"},
    ])
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q3?", "answer": "#### -2"},
                                                 {"question": "Q4?", "answer": "#### 0.50"}])
    task = FileTask(train, answer_format="gsm8k", eval_path=test)
    assert task.num_train == 2  # "  q3? " is the eval question "Q3?" up to case and spaces
    assert {task.train_problem(i).answer for i in range(2)} == {"7", "1250"}
    assert [p.answer for p in task.eval_problems()] == ["-2", "0.5"]
    with pytest.raises(ValueError, match="no '#### <answer>' line"):
        FileTask(write_jsonl(tmp_path / "x.jsonl", [{"question": "a", "answer": "7"}] * 3), answer_format="gsm8k")


def test_clean_answer_numbers():
    assert [clean_answer(v) for v in (5.0, 0.5, 5, "5.0", " 42 ", "1,000", "-3.50", "1/2", 1e-05, "$5")] == \
        ["5", "0.5", "5", "5", "42", "1000", "-3.5", "1/2", "0.00001", "5"]


def test_file_task_bad_input(tmp_path):
    lines = [json.dumps(r) for r in ROWS[:16]] + ['{"question": "broken", "answer": ']
    bad = tmp_path / "gsm8k_train.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"gsm8k_train\.jsonl line 17: not valid JSON"):
        FileTask(bad)

    missing = write_jsonl(tmp_path / "m.jsonl", ROWS[:2] + [{"question": "q", "solution": "4"}])
    with pytest.raises(ValueError) as err:
        FileTask(missing)
    msg = str(err.value)
    assert "m.jsonl line 3" in msg and "'answer'" in msg and "question, solution" in msg

    with pytest.raises(ValueError, match=r"missing field 'Body'.*has fields: question, answer"):
        FileTask(write_jsonl(tmp_path / "t.jsonl", ROWS[:3]), question_field="{Body} {Question}")

    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: file is empty"):
        FileTask(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        FileTask(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        FileTask(tmp_path / "x.csv")
    (tmp_path / "list.jsonl").write_text('[1, 2]\n')
    with pytest.raises(ValueError, match="list.jsonl line 1: expected a JSON object"):
        FileTask(tmp_path / "list.jsonl")
    with pytest.raises(ValueError, match="leaves none to train on"):
        FileTask(write_jsonl(tmp_path / "one.jsonl", ROWS[:1]), eval_size=1)


# ------------------------------------------------------------------------------------------------
# Presets on the real benchmark files
# ------------------------------------------------------------------------------------------------

def test_gsm8k_preset():
    data = needs_data()
    task = gsm8k_task(data)
    test_questions = {json.loads(line)["question"] for line in (data / "gsm8k_test.jsonl").open()}
    assert len(task.eval_problems()) == len(test_questions) == 1319
    assert 7400 <= task.num_train <= 7473
    assert not questions(task, 5000) & {p.question for p in task.eval_problems()}
    first = json.loads((data / "gsm8k_test.jsonl").open().readline())
    assert task.eval_problems()[0].answer == first["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert all(p.answer and "#" not in p.answer and "," not in p.answer for p in task.eval_problems())


def test_svamp_and_mawps_presets(monkeypatch):
    data = needs_data()
    monkeypatch.setenv("PIVOTAL_DATA_DIR", str(data))
    svamp = build_task("svamp", seed=0)
    row = json.loads((data / "svamp_test.jsonl").open().readline())
    train = [svamp.train_problem(i) for i in range(svamp.num_train)]
    everything = {p.question: p for p in svamp.eval_problems() + train}
    p = everything[row["Body"] + " " + row["Question"]]
    assert p.answer == str(int(row["Answer"])) and p.answer == "145"
    assert len(everything) == 1000 and not {q.question for q in svamp.eval_problems()} & questions(svamp, 2000)
    mawps = mawps_task(data, eval_size=100)
    assert len(mawps.eval_problems()) == 100
    answers = {q.answer for q in mawps.eval_problems() + [mawps.train_problem(i) for i in range(mawps.num_train)]}
    assert "11.5" in answers and not any(a.endswith(".0") for a in answers)


def test_preset_data_dir_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("PIVOTAL_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="PIVOTAL_DATA_DIR"):
        gsm8k_task()
    with pytest.raises(FileNotFoundError, match=r"svamp_test\.jsonl not found in .*PIVOTAL_DATA_DIR"):
        svamp_task(tmp_path)


# ------------------------------------------------------------------------------------------------
# Hub, registry, prompts
# ------------------------------------------------------------------------------------------------

def test_hub_fails_fast_offline(monkeypatch):
    pytest.importorskip("datasets")
    from pivotal.tasks import files

    if files.hub_reachable(timeout=3):
        pytest.skip("the hub is reachable here; this test checks offline behaviour")
    start = time.time()
    with pytest.raises(HubUnavailableError, match=r"could not load dataset 'no-such/dataset-xyz'.*local \.jsonl"):
        HubTask("no-such/dataset-xyz")
    assert time.time() - start < 30


def test_registry_and_build_task(tmp_path):
    assert set(TASKS.names()) == {"arithmetic", "countdown", "file", "gsm8k", "svamp", "mawps", "hub", "dataset"}
    task = build_task("arithmetic", digits=2, seed=7)
    assert task.train_problem(0) == ArithmeticTask(digits=2, seed=7).train_problem(0)
    assert isinstance(build_task("countdown", num_count=4), CountdownTask)
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert build_task("file", path=str(path), eval_size=5).num_train == 45
    with pytest.raises(UnknownNameError, match="Did you mean 'arithmetic'"):
        build_task("arithmetc")
    with pytest.raises(TypeError, match=r"task 'arithmetic' got unknown option\(s\) 'digit'.*digits"):
        build_task("arithmetic", digit=2)
    with pytest.raises(TypeError, match="task 'file'.*path"):
        build_task("file")


def test_format_prompt_without_chat_template():
    p = Problem(id="x", question="What is 2 + 2?", answer="4")
    prompt = format_prompt(p, tokenizer=object())
    assert prompt.startswith("Question: What is 2 + 2?") and prompt.endswith("Answer:")
