"""The verifiers: the REWARDS registry of reward factories (math, math_strict, format, countdown)
and the loading of a reward by name or as a user's "package.module:function"."""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from pivotal.errors import RewardError
from pivotal.registry import Registry, suggest

if TYPE_CHECKING:  # only for annotations; keeps rewards importable from tasks without a cycle
    from pivotal.tasks.base import Problem

from pivotal.rewards.extraction import DEFAULT_METHODS, answers_match, as_methods, extract_answer, extract_boxed

logger = logging.getLogger("pivotal.rewards")

RewardFn = Callable[[str, "Problem"], float]
RewardFactory = Callable[..., RewardFn]

REWARDS: Registry = Registry("reward function")
register_reward = REWARDS.register

# ----------------------------------------------------------------------------------------------
# Registered reward factories
# ----------------------------------------------------------------------------------------------

def _builtin(fn: RewardFn) -> RewardFn:
    """Mark a reward as ours: pure, bounded by its own timeouts, safe to run inline.

    RewardScorer runs marked rewards directly when it is in the main thread, so math-verify's
    SIGALRM timeout can really interrupt sympy (a thread timeout could only abandon it).
    """
    fn.__pivotal_builtin__ = True  # type: ignore[attr-defined]
    return fn


@register_reward("math")
def make_math_reward(extract: str | Sequence[str] = DEFAULT_METHODS, timeout_s: float = 5.0) -> RewardFn:
    """1.0 if the answer extracted with `extract` (methods tried in order) matches problem.answer."""
    methods = as_methods(extract)  # fail at config time, not on the first sample

    def math_reward(completion: str, problem: Problem) -> float:
        pred, _ = extract_answer(completion, methods)
        return 1.0 if pred is not None and answers_match(pred, problem.answer, timeout_s) else 0.0

    return _builtin(math_reward)


@register_reward("math_strict")
def make_math_strict_reward(timeout_s: float = 5.0) -> RewardFn:
    """Like "math" but only a \\boxed{} answer counts (no hash / last-number fallback)."""
    return make_math_reward(extract=("boxed",), timeout_s=timeout_s)


@register_reward("format")
def make_format_reward() -> RewardFn:
    """1.0 if the completion contains a non-empty \\boxed{} (the format the prompt asks for)."""

    def format_reward(completion: str, problem: Problem) -> float:
        return 1.0 if extract_boxed(completion) is not None else 0.0

    return _builtin(format_reward)


# --- countdown --------------------------------------------------------------------------------

_MAX_EXPR_CHARS = 300  # a countdown answer is short; long input only risks deep-recursion parsing
# "." is included so "1.5*16" stays one (invalid) run instead of turning into the valid "5*16".
_ARITH_RUN = re.compile(r"[\d\s+\-*/().]+")
_RE_LATEX_FRAC = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")


def _clean_arithmetic(s: str) -> str:
    """LaTeX/unicode operators to Python ones: \\times, \\cdot, × -> *; \\div, ÷ -> /; braces -> ()."""
    s = s.replace("\\left", "").replace("\\right", "").replace("$", "")
    for a, b in (("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("·", "*"),
                 ("\\div", "/"), ("÷", "/"), ("−", "-"), ("–", "-"), ("[", "("), ("]", ")")):
        s = s.replace(a, b)
    prev = None
    while prev != s:  # innermost \frac{a}{b} first, so nested fractions unwind
        prev = s
        s = _RE_LATEX_FRAC.sub(r"((\1)/(\2))", s)
    return s.replace("{", "(").replace("}", ")")


def _last_expression(s: str) -> str | None:
    """The last run of arithmetic characters that contains a digit and an operator."""
    runs = [r.strip().rstrip(".").strip() for r in _ARITH_RUN.findall(s)]  # sentence-final "."
    runs = [r for r in runs if re.search(r"\d", r) and re.search(r"[+\-*/]", r)]
    return runs[-1] if runs else None


def extract_countdown_expression(completion: str) -> str | None:
    """The expression a countdown completion proposes.

    1. the last \\boxed{} (left of any '=': "\\boxed{6/(1-3/4) = 24}" -> "6/(1-3/4)"), else
    2. the left side of the last line containing '=', else
    3. the last run of arithmetic characters with an operator in the whole text.
    Within 2 and 3 the surrounding words are dropped by taking the last arithmetic run.
    """
    boxed = extract_boxed(completion)
    if boxed is not None:
        return _clean_arithmetic(boxed.split("=")[0]).strip() or None
    text = _clean_arithmetic(completion)
    for line in reversed(text.splitlines()):
        if "=" in line:
            left = _last_expression(line.split("=")[0])
            if left:
                return left
    return _last_expression(text)


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def evaluate_arithmetic(expr: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, integer literals used) of a + - * / ( ) expression; None if anything else.

    Parsed with `ast` and walked by hand, never eval'd: names, calls, attributes, powers, floats and
    strings are rejected, so "__import__('os').system('x')" is just an invalid answer.
    Division by zero also gives None.
    """
    if len(expr) > _MAX_EXPR_CHARS:
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        # bool is a subclass of int: "True" must not sneak in as 1.
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    try:
        value = walk(tree.body)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    return value, used


@register_reward("countdown")
def make_countdown_reward(use_all: bool = False) -> RewardFn:
    """1.0 iff the proposed expression hits problem.meta["target"] exactly with the given numbers.

    Each number in problem.meta["numbers"] may be used at most once (as a multiset: [2, 2] allows
    two 2s); with use_all=True every number must be used exactly once. No other numbers allowed.
    """

    def countdown_reward(completion: str, problem: Problem) -> float:
        try:
            numbers, target = problem.meta["numbers"], problem.meta["target"]
        except KeyError as e:
            raise KeyError(f"countdown problem {problem.id!r} lacks meta[{e.args[0]!r}]") from None
        expr = extract_countdown_expression(completion)
        if expr is None:
            return 0.0
        result = evaluate_arithmetic(expr)
        if result is None:
            return 0.0
        value, used = result
        used_count, allowed = Counter(used), Counter(int(n) for n in numbers)
        if use_all:
            ok_numbers = used_count == allowed
        else:
            ok_numbers = all(used_count[n] <= allowed[n] for n in used_count)
        return 1.0 if ok_numbers and value == Fraction(target) else 0.0

    return _builtin(countdown_reward)


# ----------------------------------------------------------------------------------------------
# Loading by spec
# ----------------------------------------------------------------------------------------------

def accepted_options(fn: Callable) -> set[str] | None:
    """Keyword names fn accepts, or None if it takes **kwargs (anything goes) / can't be inspected."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def load_user_function(spec: str) -> Callable:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise RewardError(f"reward spec '{spec}' must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"reward '{spec}': cannot import module '{module_name}': {e}") from e
    obj: Any = module
    for part in attr_path.split("."):  # "mod:Class.method" works too
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise RewardError(f"reward '{spec}': module '{module_name}' has no attribute "
                              f"'{attr_path}'.{suggest(part, public)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"reward '{spec}': '{attr_path}' is not callable")
    return obj


def load_reward(spec: str, **options: Any) -> RewardFn:
    """A RewardFn from a registered name (options go to its factory) or "package.module:function".

    A user function is itself a RewardFn; options given with it are bound as keyword arguments.
    Raises UnknownNameError (with the nearest name), ImportError (naming the module),
    AttributeError (naming the attribute) or TypeError (unknown option).
    """
    if ":" in spec:
        fn = load_user_function(spec)
        if not options:
            return fn
        accepted = accepted_options(fn)
        unknown = sorted(set(options) - accepted) if accepted is not None else []
        if unknown:
            raise RewardError(f"reward '{spec}' does not accept option(s) {', '.join(map(repr, unknown))}."
                              f"{suggest(unknown[0], sorted(accepted))}")

        def bound(completion: str, problem: Problem) -> float:
            return fn(completion, problem, **options)

        return bound
    factory = REWARDS.get(spec)  # UnknownNameError with a "Did you mean" suggestion
    accepted = accepted_options(factory)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise RewardError(
            f"reward '{spec}' got unknown option(s) {', '.join(map(repr, unknown))}."
            f"{suggest(unknown[0], sorted(accepted or ()))} "
            f"Accepted: {', '.join(sorted(accepted or ())) or 'none'}"
        )
    return factory(**options)

