"""Answer extraction and normalisation: pull an answer out of a completion, and decide whether two
answers are equal (exact fractions first, then math-verify). The simplifications are listed in
`pivotal.rewards`."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations; keeps rewards importable from tasks without a cycle
    pass

logger = logging.getLogger("pivotal.rewards")

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


def as_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
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
    for method in as_methods(methods):
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

