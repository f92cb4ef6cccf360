"""Hand-checked cases for pivotal.rewards: extraction, equivalence, countdown, loading, scoring."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
import time

import pytest

from pivotal.errors import RewardError
from pivotal.registry import UnknownNameError
from pivotal.rewards import (
    REWARDS,
    RewardComponent,
    RewardScorer,
    answers_match,
    evaluate_arithmetic,
    extract_answer,
    extract_boxed,
    extract_countdown_expression,
    extract_hash,
    extract_last_number,
    extracted,
    is_correct,
    load_reward,
    normalize_answer,
)
from pivotal.tasks.base import Problem


def math_problem(answer: str, reward: str = "math") -> Problem:
    return Problem(id="p", question="q", answer=answer, reward=reward)


def countdown_problem(numbers: list[int], target: int) -> Problem:
    return Problem(id="c", question="q", answer=str(target), reward="countdown",
                   meta={"numbers": numbers, "target": target})


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

def test_boxed_nested_braces_and_last_one_wins():
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"  # escaped braces are literal
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed {42}") == "42"


def test_boxed_absent_empty_or_unbalanced_is_none():
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{}") is None
    assert extract_boxed(r"\boxed{  }") is None
    assert extract_boxed(r"\boxed{\frac{1}{2}") is None  # truncated generation


def test_hash_extraction():
    assert extract_hash("work...\n#### 72") == "72"
    assert extract_hash("#### 1\n#### 2  \nexplanation after") == "2"
    assert extract_hash("no marker") is None
    assert extract_hash("####   ") is None


def test_last_number():
    assert extract_last_number("so we get -3 apples") == "-3"
    assert extract_last_number("total is 1,234 dollars") == "1234"
    assert extract_last_number("pi is about 3.14.") == "3.14"
    assert extract_last_number("the ratio is 3/4.") == "3/4"
    assert extract_last_number("5-3") == "3"  # binary minus is not a sign
    assert extract_last_number("no digits") is None


def test_extract_answer_order_and_methods():
    text = r"Maybe 3. Final: \boxed{5} and then 9"
    assert extract_answer(text) == ("5", "boxed")
    assert extract_answer("it is 9", ("boxed", "last_number")) == ("9", "last_number")
    assert extract_answer("it is 9", ("boxed",)) == (None, None)
    assert extract_answer("#### 12\nthen 13") == ("12", "hash")
    assert extract_answer("x", "boxed") == (None, None)  # a single name is accepted


def test_unknown_extraction_method_is_named():
    with pytest.raises(ValueError, match="'boxd'.*boxed, hash, last_number"):
        extract_answer("x", ("boxd",))


# ---------------------------------------------------------------------------------------------
# Normalisation and equivalence
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, gold", [
    ("3/4", "0.75"),
    (r"\frac{3}{4}", "0.75"),
    (r"-\dfrac{1}{2}", "-0.5"),
    ("1,234", "1234"),
    ("5.0", "5"),
    ("$5$.", "5"),
    (r"\text{42}", "42"),
    (r"50\%", "50"),
    ("-7", "-7"),
])
def test_answers_match_fast_path(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize("pred, gold", [("3", "-3"), ("0.76", "0.75"), ("", "5"), ("1,2", "12")])
def test_answers_do_not_match(pred, gold):
    assert not answers_match(pred, gold)


def test_answers_match_symbolic_via_math_verify():
    assert answers_match(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}")
    assert not answers_match(r"\sqrt{3}/2", r"\frac{\sqrt{2}}{2}")


def test_math_verify_off_main_thread_does_not_raise():
    # math-verify's SIGALRM timeout raises ValueError outside the main thread unless disabled.
    out = {}
    t = threading.Thread(target=lambda: out.update(ok=answers_match(r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}")))
    t.start()
    t.join()
    assert out["ok"] is True


def test_normalize_answer_voting_keys():
    assert normalize_answer("1,000") == normalize_answer("1000") == normalize_answer("$1000.$") == "1000"
    assert normalize_answer("0.75") == normalize_answer(r"\frac{3}{4}") == "3/4"
    assert extracted(r"\boxed{1,000}") == extracted("#### 1000") == "1000"
    assert extracted("nothing") is None


# ---------------------------------------------------------------------------------------------
# Registered math / format rewards
# ---------------------------------------------------------------------------------------------

def test_math_reward():
    math = REWARDS.get("math")()
    assert math(r"... so \boxed{\frac{1}{2}}", math_problem("0.5")) == 1.0
    assert math(r"\boxed{3}", math_problem("4")) == 0.0
    assert math("I have no idea.", math_problem("4")) == 0.0  # no answer at all: 0, no crash


def test_last_number_fallback_on_and_off():
    problem = math_problem("12")
    assert REWARDS.get("math")(extract=("boxed", "last_number"))("so it is 12", problem) == 1.0
    assert REWARDS.get("math")(extract=("boxed",))("so it is 12", problem) == 0.0
    assert REWARDS.get("math_strict")()("so it is 12", problem) == 0.0
    assert REWARDS.get("math_strict")()(r"\boxed{12}", problem) == 1.0


def test_bad_extract_option_fails_at_config_time():
    with pytest.raises(ValueError, match="'boxd'"):
        load_reward("math", extract=("boxd",))
    with pytest.raises(RewardError, match="extrct.*Did you mean 'extract'"):
        load_reward("math", extrct=("boxed",))


def test_format_reward():
    fmt = load_reward("format")
    assert fmt(r"\boxed{x}", math_problem("x")) == 1.0
    assert fmt(r"\boxed{}", math_problem("x")) == 0.0
    assert fmt("42", math_problem("42")) == 0.0


def test_is_correct_dispatches_on_problem_reward():
    assert is_correct(r"\boxed{4}", math_problem("4"))
    assert not is_correct("4", math_problem("4"), extract=("boxed",))
    assert is_correct("4", math_problem("4"), extract=("boxed", "last_number"))
    # extract is only passed to rewards that take it
    assert is_correct(r"\boxed{6/(1-3/4)}", countdown_problem([6, 1, 3, 4], 24), extract=("boxed",))


# ---------------------------------------------------------------------------------------------
# Countdown
# ---------------------------------------------------------------------------------------------

COUNTDOWN = load_reward("countdown")


@pytest.mark.parametrize("completion, numbers, target, expected", [
    (r"\boxed{(25 - 1) * 1}", [25, 1, 1], 24, 1.0),          # repeated number given twice: ok
    (r"\boxed{6/(1-3/4)}", [6, 1, 3, 4], 24, 1.0),           # exact division via fractions
    ("6 / (1 - 3/4) = 24", [6, 1, 3, 4], 24, 1.0),           # '=' line, no box
    (r"\boxed{\frac{6}{1-\frac{3}{4}} = 24}", [6, 1, 3, 4], 24, 1.0),
    (r"\boxed{6 \times 4}", [6, 4, 9], 24, 1.0),              # subset allowed by default
    (r"\boxed{5 * 5 - 1}", [5, 1, 7], 24, 0.0),              # 5 reused
    (r"\boxed{8 * 3}", [8, 2, 1], 24, 0.0),                  # 3 not given
    (r"\boxed{6 / (3 - 3)}", [6, 3, 3], 24, 0.0),            # division by zero
    (r"\boxed{7/2}", [7, 2], 3, 0.0),                        # 3.5 != 3: no integer division
    (r"\boxed{2 ** 4}", [2, 4], 16, 0.0),                    # power not allowed
    (r"\boxed{1.5 * 16}", [16, 3], 24, 0.0),                 # floats not allowed
    ("I give up", [1, 2], 3, 0.0),
])
def test_countdown(completion, numbers, target, expected):
    assert COUNTDOWN(completion, countdown_problem(numbers, target)) == expected


def test_countdown_use_all():
    problem = countdown_problem([6, 4, 9], 24)
    assert load_reward("countdown", use_all=True)(r"\boxed{6 * 4}", problem) == 0.0
    assert load_reward("countdown", use_all=True)(r"\boxed{6 * 4 * (9 - 9 + 1)}", problem) == 0.0
    assert load_reward("countdown", use_all=True)(r"\boxed{(9 - 6) * 4 * 2}", problem) == 0.0
    problem = countdown_problem([2, 3, 4], 24)
    assert load_reward("countdown", use_all=True)(r"\boxed{2 * 3 * 4}", problem) == 1.0


def test_countdown_never_executes_code(monkeypatch):
    import os
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    evil = r"\boxed{__import__('os').system('x')}"
    assert COUNTDOWN(evil, countdown_problem([1, 2], 3)) == 0.0
    assert evaluate_arithmetic("__import__('os').system('x')") is None
    assert evaluate_arithmetic("True + 2") is None
    assert called == []


def test_countdown_expression_extraction():
    assert extract_countdown_expression("Step: 25 - 1 = 24\nSo (25-1)*1 = 24.") == "(25-1)*1"
    assert extract_countdown_expression("Answer: (6/(1-3/4)).") == "(6/(1-3/4))"


# ---------------------------------------------------------------------------------------------
# Loading by spec
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import time

        def length_reward(completion, problem, scale=1.0):
            return scale * len(completion)

        def boom(completion, problem):
            raise RuntimeError("kaboom")

        def slow(completion, problem):
            time.sleep(0.6)
            return 1.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def test_load_reward_module_function(user_module):
    fn = load_reward(f"{user_module}:length_reward")
    assert fn("abc", math_problem("1")) == 3
    assert load_reward(f"{user_module}:length_reward", scale=2.0)("abc", math_problem("1")) == 6.0


def test_load_reward_errors(user_module):
    with pytest.raises(UnknownNameError, match="'maths'.*Did you mean 'math'"):
        load_reward("maths")
    with pytest.raises(RewardError, match="'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:fn")
    with pytest.raises(RewardError, match="'missing'"):
        load_reward(f"{user_module}:missing")


# ---------------------------------------------------------------------------------------------
# RewardScorer
# ---------------------------------------------------------------------------------------------

def test_weighted_combination_sums():
    scorer = RewardScorer([{"name": "math", "weight": 1.0}, {"name": "format", "weight": 0.1}])
    out = scorer.score([r"\boxed{4}", "4", r"\boxed{5}"], [math_problem("4")] * 3)
    assert [o["reward"] for o in out] == pytest.approx([1.1, 1.0, 0.1])
    assert [o["correct"] for o in out] == [True, True, False]
    assert out[2]["components"] == {"math": 0.0, "format": 1.0}


def test_task_spec_uses_problem_reward():
    scorer = RewardScorer()  # default: [("task", 1.0)]
    problems = [math_problem("4"), countdown_problem([6, 1, 3, 4], 24)]
    out = scorer.score([r"\boxed{4}", r"\boxed{6/(1-3/4)}"], problems)
    assert [o["correct"] for o in out] == [True, True]
    assert out[0]["components"] == {"task": 1.0}


def test_tuple_specs_and_options():
    scorer = RewardScorer([("math", 2.0, {"extract": ["boxed"]}), ("format", 0.5)])
    out = scorer.score(["4"], [math_problem("4")])
    assert out[0]["reward"] == 0.0 and out[0]["correct"] is False


def test_raising_reward_scores_zero_and_logs(user_module, caplog):
    scorer = RewardScorer([("math", 1.0), (f"{user_module}:boom", 1.0)])
    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        out = scorer.score([r"\boxed{4}"], [math_problem("4")])
    assert out[0]["reward"] == 1.0
    assert out[0]["components"][f"{user_module}:boom"] == 0.0
    assert "kaboom" in caplog.text


def test_slow_reward_times_out(user_module, caplog):
    scorer = RewardScorer([(f"{user_module}:slow", 1.0)], timeout_s=0.2)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        out = scorer.score(["x"], [math_problem("4")])
    assert time.perf_counter() - start < 0.5
    assert out[0] == {"reward": 0.0, "correct": False, "components": {f"{user_module}:slow": 0.0}}
    assert "TimeoutError" in caplog.text


def test_unknown_problem_reward_scores_zero(caplog):
    with caplog.at_level(logging.WARNING, logger="pivotal.rewards"):
        out = RewardScorer().score(["x"], [math_problem("4", reward="nope")])
    assert out[0]["reward"] == 0.0 and "nope" in caplog.text


def test_scorer_config_errors():
    with pytest.raises(ValueError, match="duplicate"):
        RewardScorer(["math", "math"])
    with pytest.raises(ValueError, match="allowed keys"):
        RewardScorer([{"name": "math", "wieght": 1.0}])
    with pytest.raises(UnknownNameError, match="Did you mean"):
        RewardScorer(["fromat"])
    scorer = RewardScorer([RewardComponent(fn=lambda c, p: 0.5, weight=2.0, name="half")])
    assert scorer.score(["x"], [math_problem("1")])[0]["reward"] == 1.0


def test_task_options_go_only_to_rewards_that_take_them():
    scorer = RewardScorer([{"name": "task", "options": {"extract": ["boxed"]}}])
    problems = [math_problem("4"), countdown_problem([6, 1, 3, 4], 24)]
    out = scorer.score(["4", r"\boxed{6/(1-3/4)}"], problems)
    assert [o["correct"] for o in out] == [False, True]  # "4" unboxed: last_number is off
    with pytest.raises(RewardError, match="extrct.*Did you mean 'extract'"):
        RewardScorer([{"name": "task", "options": {"extrct": ["boxed"]}}])
