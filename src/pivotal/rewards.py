"""Verifiable rewards: pull an answer out of a completion, check it, combine several checks safely.

Protocol
--------
A reward function is ``fn(completion: str, problem: Problem) -> float`` (``RewardFn``). The
``REWARDS`` registry holds *factories*, not reward functions: ``REWARDS.get(name)(**options)``
returns a RewardFn, so options such as the extraction methods are fixed once, at config time::

    math = REWARDS.get("math")(extract=("boxed", "last_number"), timeout_s=5.0)
    math(completion, problem)   # -> 1.0 or 0.0

``load_reward(spec, **options)`` does the same for a registered name or for a user function given
as ``"package.module:function"`` (that function is itself a RewardFn; options, if any, are passed
to it as keyword arguments). ``RewardScorer`` combines weighted components and never crashes.

Registered: "math", "math_strict" (boxed only), "countdown", "format".

Simplifications (deliberate)
----------------------------
* Extraction is regex/brace-counting, not a LaTeX parser. ``extract_boxed`` takes the LAST
  ``\\boxed{...}``/``\\fbox{...}``; if that one is unbalanced (truncated output) it gives None
  rather than falling back to an earlier box.
* ``extract_hash`` keeps only the first line after the last ``####``.
* ``extract_last_number`` knows integers, decimals, ``1,234``-style thousands and ``a/b``; no
  scientific notation, no LaTeX fractions.
* Equivalence: a cheap normalise-and-compare path (numbers compared exactly as fractions, within
  1e-6 relative), then math-verify (sympy) for everything else. math-verify's text handling is
  symbolic: a text answer parses as a product of symbols, so e.g. "hello world" equals
  "world hello". Good enough for math answers; do not use "math" for free-text answers.
* Countdown reads only the final expression (see ``extract_countdown_expression``); it checks
  numbers and value, not that the reasoning was sound.
* Timeouts: math-verify interrupts itself with SIGALRM, which only works in the main thread. In any
  other thread we switch that off and rely on RewardScorer's thread timeout instead, which can
  abandon, but not kill, a stuck computation.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from pivotal.registry import Registry, UnknownNameError

if TYPE_CHECKING:  # only for annotations; keeps rewards importable from tasks without a cycle
    from pivotal.tasks.base import Problem

logger = logging.getLogger("pivotal.rewards")

RewardFn = Callable[[str, "Problem"], float]
RewardFactory = Callable[..., RewardFn]

REWARDS: Registry = Registry("reward function")
register_reward = REWARDS.register

EXTRACTION_METHODS = ("boxed", "hash", "last_number")
DEFAULT_METHODS: tuple[str, ...] = EXTRACTION_METHODS


# ----------------------------------------------------------------------------------------------
# Answer extraction
# ----------------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _balanced_content(text: str, open_idx: int) -> str | None:
    """Text between text[open_idx] == '{' and its matching '}', or None if it never closes.

    Backslash-escaped braces (LaTeX ``\\{``, ``\\}``) are literal characters and do not count.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, whatever it is
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1:i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``; None if absent, unbalanced or empty.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    last = starts[-1]
    content = _balanced_content(text, last.end() - 1)
    if content is None or not content.strip():
        return None
    return content.strip()


def extract_hash(text: str) -> str | None:
    """GSM8K style: the first line of text after the last ``####``, stripped; None if absent/empty."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    rest = text[idx + 4:].strip()
    # Only the first line: a model that keeps talking after "#### 72" still means 72.
    first = rest.splitlines()[0].strip() if rest else ""
    return first or None


# A minus sign counts only when it is not a binary minus ("5-3" ends in 3, not -3). Alternatives
# are tried left to right at each position: fraction, then thousands-grouped, then plain/decimal.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?"
    r"(?:\d+/\d+(?!\d|\.\d)"
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d|,\d)"
    r"|\d+(?:\.\d+)?"
    r"|\.\d+)"
)


def extract_last_number(text: str) -> str | None:
    """The last number in the text, commas removed: "-1,234.5" -> "-1234.5", "3/4" -> "3/4"."""
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": extract_boxed,
    "hash": extract_hash,
    "last_number": extract_last_number,
}


def _as_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """Accept one name or a sequence, and reject unknown names before any work is done."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    for m in methods:
        if m not in _EXTRACTORS:
            raise ValueError(
                f"unknown answer extraction method '{m}'; valid: {', '.join(EXTRACTION_METHODS)}"
            )
    return methods


def extract_answer(
    text: str, methods: str | Iterable[str] = DEFAULT_METHODS
) -> tuple[str | None, str | None]:
    """(answer, method that found it), trying methods in order; (None, None) if none finds one."""
    for method in _as_methods(methods):
        answer = _EXTRACTORS[method](text)
        if answer is not None:
            return answer, method
    return None, None


# ----------------------------------------------------------------------------------------------
# Normalisation and equivalence
# ----------------------------------------------------------------------------------------------

_NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_RE_PLAIN = re.compile(rf"^{_NUM}$")
_RE_SLASH = re.compile(rf"^({_NUM})/({_NUM})$")
_RE_FRAC = re.compile(rf"^(-?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}$")
_RE_FRAC_DIGITS = re.compile(r"^(-?)\\frac(\d)(\d)$")  # \frac12 is legal LaTeX for 1/2
_RE_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_RE_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{")
_LATEX_NOISE = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ",
                "^{\\circ}", "^\\circ", "°", "\\%", "%", "\\$")


def _to_fraction(s: str) -> Fraction | None:
    """s (already normalised) as an exact number, or None if it is not a plain number."""
    try:
        if _RE_PLAIN.match(s):
            return Fraction(s)
        m = _RE_SLASH.match(s)
        if m:
            num, den = Fraction(m.group(1)), Fraction(m.group(2))
            return num / den if den else None
        m = _RE_FRAC.match(s) or _RE_FRAC_DIGITS.match(s)
        if m:
            num, den = Fraction(m.group(2)), Fraction(m.group(3))
            if not den:
                return None
            return -num / den if m.group(1) else num / den
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _unwrap(s: str) -> str:
    """Drop a ``\\text{...}``-like wrapper when it encloses the whole string."""
    m = _RE_WRAPPER.match(s)
    if m:
        inner = _balanced_content(s, m.end() - 1)
        if inner is not None and m.end() + len(inner) + 1 == len(s):
            return inner
    return s


def _normalize_text(s: str) -> str:
    """Cosmetic clean-up shared by voting and the fast equivalence path (no number canonicalising)."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("$", "")
    s = "".join(s.split())  # all whitespace: "x + 1" and "x+1" are the same answer
    # Loop because wrappers and trailing dots can nest: "\text{5.}." -> "5".
    prev = None
    while prev != s:
        prev = s
        s = _unwrap(s).rstrip(".")
    if _RE_THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def normalize_answer(s: str) -> str:
    """Canonical string for comparing/voting: "1,000", "$1000$", "1000.0" -> "1000"; 0.75 -> "3/4".

    Strips whitespace, ``$``, trailing ``.``, thousands commas, a whole-string ``\\text{}`` wrapper,
    ``\\%``, degree signs and LaTeX spacing; plain numbers become an exact fraction "n" or "n/d".
    """
    s = _normalize_text(s)
    value = _to_fraction(s)
    if value is None:
        return s
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _numbers_close(a: Fraction, b: Fraction, rel_tol: float = 1e-6) -> bool:
    # Exact fractions first so 0 == 0 works; relative tolerance absorbs rounded decimals.
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


def _math_verify_timeout(timeout_s: float | None) -> int | None:
    """The timeout to hand math-verify: an int, or None (its SIGALRM off) outside the main thread.

    signal.alarm only accepts whole seconds; math-verify swallows the TypeError a float causes and
    silently returns "no parse", so round up to at least 1.
    """
    if timeout_s is None or timeout_s <= 0:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None  # signal.signal would raise ValueError here
    return max(1, math.ceil(timeout_s))


def _for_math_verify(s: str) -> str:
    # math-verify does its own LaTeX normalisation; we only remove math-mode delimiters and put
    # the answer in one $...$ so its LaTeX extractor sees the whole string as one expression.
    s = re.sub(r"(?<!\\)\$", "", s).strip()
    return f"${s}$"


def answers_match(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether the predicted answer equals the gold answer.

    Fast path: normalised strings equal, or both plain numbers within 1e-6 relative. Otherwise
    math-verify (sympy). Any error or timeout counts as no match.
    """
    if pred is None or gold is None:
        return False
    norm_pred, norm_gold = _normalize_text(pred), _normalize_text(gold)
    if not norm_pred or not norm_gold:
        return False
    if norm_pred == norm_gold:
        return True
    num_pred, num_gold = _to_fraction(norm_pred), _to_fraction(norm_gold)
    if num_pred is not None and num_gold is not None:
        return _numbers_close(num_pred, num_gold)  # both numbers: sympy cannot do better

    try:
        # Imported lazily: sympy costs ~0.5 s and most users of this module never get here.
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except ImportError:  # pragma: no cover - math-verify is a hard dependency
        logger.warning("math-verify is not installed; symbolic answers are compared as strings")
        return False
    timeout = _math_verify_timeout(timeout_s)
    try:
        gold_parsed = parse(_for_math_verify(gold), parsing_timeout=timeout)
        pred_parsed = parse(_for_math_verify(pred), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        # verify is not symmetric (assignments like "x=3" are unwrapped on the prediction side):
        # gold goes first, as math-verify documents.
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException derives from BaseException
        logger.debug("math-verify failed on pred=%r gold=%r", pred, gold, exc_info=True)
        return False


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
    methods = _as_methods(extract)  # fail at config time, not on the first sample

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

def _accepted_options(fn: Callable) -> set[str] | None:
    """Keyword names fn accepts, or None if it takes **kwargs (anything goes) / can't be inspected."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _load_user_function(spec: str) -> Callable:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"reward spec '{spec}' must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"reward '{spec}': cannot import module '{module_name}': {e}") from e
    obj: Any = module
    for part in attr_path.split("."):  # "mod:Class.method" works too
        if not hasattr(obj, part):
            raise AttributeError(
                f"reward '{spec}': module '{module_name}' has no attribute '{attr_path}'"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"reward '{spec}': '{attr_path}' is not callable")
    return obj


def load_reward(spec: str, **options: Any) -> RewardFn:
    """A RewardFn from a registered name (options go to its factory) or "package.module:function".

    A user function is itself a RewardFn; options given with it are bound as keyword arguments.
    Raises UnknownNameError (with the nearest name), ImportError (naming the module),
    AttributeError (naming the attribute) or TypeError (unknown option).
    """
    if ":" in spec:
        fn = _load_user_function(spec)
        if not options:
            return fn
        accepted = _accepted_options(fn)
        unknown = sorted(set(options) - accepted) if accepted is not None else []
        if unknown:
            raise TypeError(f"reward '{spec}' does not accept option(s) {', '.join(unknown)}")

        def bound(completion: str, problem: Problem) -> float:
            return fn(completion, problem, **options)

        return bound
    factory = REWARDS.get(spec)  # UnknownNameError with a "Did you mean" suggestion
    accepted = _accepted_options(factory)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"reward '{spec}' got unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted or ())) or 'none'}"
        )
    return factory(**options)


# ----------------------------------------------------------------------------------------------
# Combination with timeouts
# ----------------------------------------------------------------------------------------------

@dataclass
class RewardComponent:
    fn: RewardFn
    weight: float
    name: str


class _TaskReward:
    """The "task" spec: each problem is scored by the reward its own `problem.reward` names.

    Options go only to the rewards that accept them, so {"extract": [...]} works on a mixed
    math + countdown set; an option that no registered reward accepts is a typo and fails early.
    """

    def __init__(self, options: dict[str, Any]):
        known = set().union(*((_accepted_options(REWARDS.get(n)) or set()) for n in REWARDS.names()))
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"reward 'task': no registered reward accepts option(s) {', '.join(unknown)}")
        self.options = options
        self._cache: dict[str, RewardFn] = {}

    def resolve(self, problem: Problem) -> RewardFn:
        spec = problem.reward
        if spec not in self._cache:
            target = _load_user_function(spec) if ":" in spec else REWARDS.get(spec)
            accepted = _accepted_options(target)
            options = {k: v for k, v in self.options.items() if accepted is not None and k in accepted}
            self._cache[spec] = load_reward(spec, **options)
        return self._cache[spec]

    def __call__(self, completion: str, problem: Problem) -> float:
        return self.resolve(problem)(completion, problem)


def _call_with_timeout(fn: RewardFn, completion: str, problem: Problem, timeout_s: float | None) -> Any:
    """fn(completion, problem), raising TimeoutError if it takes longer than timeout_s.

    The call runs in a fresh daemon thread and we wait on a concurrent.futures.Future. A Python
    thread cannot be killed: on timeout it is abandoned and keeps running (and holding CPU) until
    it finishes on its own. Daemon threads rather than a ThreadPoolExecutor on purpose: the
    executor's workers are joined at interpreter exit, so one stuck reward would hang the process
    at shutdown, and a stuck worker would also occupy a pool slot for good.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn(completion, problem)
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(completion, problem))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, not swallowed
            future.set_exception(e)

    threading.Thread(target=run, name="pivotal-reward", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"reward did not finish within {timeout_s} s") from None


# str | (spec, weight[, options]) | {"name", "weight", "options", "label"} | RewardComponent
ComponentSpec = Any


class RewardScorer:
    """Weighted sum of reward components; a failing or slow component scores 0, never crashes.

    components: list of specs, each one of
        "math"                                        weight 1.0, no options
        ("math", 1.0) or ("math", 1.0, {"extract": ["boxed"]})
        {"name": "math", "weight": 1.0, "options": {...}, "label": "math_boxed"}
        RewardComponent(fn, weight, name)
    The spec "task" (the default, alone, when components is None) uses each problem's own
    `problem.reward`. Component names must be unique; "label" renames one.

    score() returns per sample {"reward": sum(weight * raw), "correct": bool, "components": {name: raw}}.
    "correct" is the FIRST component's raw score >= 1: list the correctness check first and
    shaping terms (format, length...) after it.

    timeout_s bounds each call of a component on one sample (see _call_with_timeout). Our own
    rewards run inline when score() is called from the main thread, where math-verify's SIGALRM
    timeout can interrupt sympy; user rewards, or any call off the main thread, go to a thread.
    """

    _DICT_KEYS = {"name", "weight", "options", "label"}

    def __init__(self, components: Sequence[ComponentSpec] | None = None, timeout_s: float | None = 10.0):
        specs = list(components) if components is not None else ["task"]
        if not specs:
            raise ValueError("RewardScorer needs at least one component")
        self.components = [self._build(s) for s in specs]
        names = [c.name for c in self.components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate reward component name(s) {dupes}; give each a 'label'")
        self.timeout_s = timeout_s

    @classmethod
    def _build(cls, spec: ComponentSpec) -> RewardComponent:
        if isinstance(spec, RewardComponent):
            return spec
        label = None
        if isinstance(spec, str):
            name, weight, options = spec, 1.0, {}
        elif isinstance(spec, dict):
            unknown = set(spec) - cls._DICT_KEYS
            if unknown or "name" not in spec:
                raise ValueError(
                    f"reward component {spec!r}: needs 'name'; allowed keys {sorted(cls._DICT_KEYS)}"
                )
            name, weight = spec["name"], spec.get("weight", 1.0)
            options, label = dict(spec.get("options") or {}), spec.get("label")
        elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
            name, weight = spec[0], spec[1]
            options = dict(spec[2]) if len(spec) == 3 and spec[2] else {}
        else:
            raise ValueError(f"cannot build a reward component from {spec!r}")
        fn: RewardFn = _TaskReward(options) if name == "task" else load_reward(name, **options)
        return RewardComponent(fn=fn, weight=float(weight), name=label or name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def _raw(self, component: RewardComponent, completion: str, problem: Problem) -> float:
        """One component on one sample, every failure mapped to 0.0 (and logged)."""
        try:
            fn = component.fn.resolve(problem) if isinstance(component.fn, _TaskReward) else component.fn
            inline = getattr(fn, "__pivotal_builtin__", False) and (
                threading.current_thread() is threading.main_thread()
            )
            value = fn(completion, problem) if inline else _call_with_timeout(
                fn, completion, problem, self.timeout_s
            )
            value = float(value)
            if math.isnan(value):
                raise ValueError("reward returned NaN")
            return value
        except Exception as e:  # noqa: BLE001 - a reward bug must not kill training
            logger.warning("reward component '%s' failed on problem %r: %s: %s",
                           component.name, getattr(problem, "id", "?"), type(e).__name__, e,
                           exc_info=not isinstance(e, TimeoutError))
            return 0.0

    def score(self, completions: list[str], problems: list[Problem]) -> list[dict[str, Any]]:
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        results = []
        for completion, problem in zip(completions, problems):
            raws = {c.name: self._raw(c, completion, problem) for c in self.components}
            total = sum(c.weight * raws[c.name] for c in self.components)
            results.append({
                "reward": total,
                "correct": raws[self.components[0].name] >= 1.0,
                "components": raws,
            })
        return results


# ----------------------------------------------------------------------------------------------
# Evaluation helpers
# ----------------------------------------------------------------------------------------------

def is_correct(completion: str, problem: Problem, extract: str | Sequence[str] | None = None,
               timeout_s: float = 5.0) -> bool:
    """Whether `problem.reward`'s check gives full marks. `extract`/`timeout_s` are passed only
    to rewards that take them (so a mixed math/countdown eval set works with one call)."""
    spec = problem.reward
    target = _load_user_function(spec) if ":" in spec else REWARDS.get(spec)
    accepted = _accepted_options(target)
    wanted = {"timeout_s": timeout_s}
    if extract is not None:
        wanted["extract"] = extract
    options = {k: v for k, v in wanted.items() if accepted is None or k in accepted}
    if ":" in spec and accepted is None:
        options = {}  # a **kwargs user function gets no surprise options
    return load_reward(spec, **options)(completion, problem) >= 1.0


def extracted(completion: str, methods: str | Sequence[str] = DEFAULT_METHODS) -> str | None:
    """Normalised extracted answer (a majority-vote key: "1,000" and "1000" vote together)."""
    answer, _ = extract_answer(completion, methods)
    if answer is None:
        return None
    return normalize_answer(answer) or None


__all__ = [
    "RewardFn", "RewardFactory", "REWARDS", "register_reward", "EXTRACTION_METHODS",
    "DEFAULT_METHODS", "extract_boxed", "extract_hash", "extract_last_number", "extract_answer",
    "normalize_answer", "answers_match", "extract_countdown_expression", "evaluate_arithmetic",
    "load_reward", "RewardComponent", "RewardScorer", "is_correct", "extracted", "UnknownNameError",
]
