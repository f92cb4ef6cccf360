"""Reading the gold answer of a data row as an answer, the way benchmark files write it.

Real files carry answers such as "9 (apples)", "$18.00", "1,234", "3/4", "50%" or
"\\frac{1}{2}". Compared as text they never match a model's "... The final answer is: 9", and an
evaluation silently reports near-zero accuracy. `clean_answer` applies these rules, in order:

  1. numbers stored as numbers: 5.0 -> "5", 0.5 -> "0.5" (no float noise: Decimal of the repr);
  2. surrounding space, a final period, markdown bold and LaTeX math delimiters go:
     "$5$", "\\(5\\)", "\\[5\\]", "**5**", "5." -> "5"; a whole-answer \\boxed{...} or \\text{...}
     is unwrapped; \\dfrac / \\tfrac are \\frac; "\\%", "\\$", "{,}" and LaTeX spacing are read as
     "%", "$", "," and nothing; a Unicode minus is "-";
  3. a leading "x = " (one-letter variable) goes: "x = 5" -> "5";
  4. a number, optionally signed, with thousands commas and decimals ("1,234.50" -> "1234.5"), a
     fraction ("3/4", "-3/4"), a mixed number ("1 1/2" -> "3/2") or a numeric LaTeX fraction
     ("\\frac{1}{2}" -> "1/2"), may carry
       - a currency sign or code before it: "$18.00", "€5", "USD 5" -> "18", "5", "5";
       - a percent sign or "percent" after it: "50%" -> "50" (the verifier drops "%" from a
         response too, so "50%" and "50" match; "0.5" does not);
       - up to four unit words after it, bare or in parentheses, with a power or "/":
         "9 (apples)", "16 oranges", "5 cm^2", "60 km/h", "3 square feet" -> the number; words
         such as "or", "to", "more", "about" make it a phrase instead ("5 or more": refused);
  5. anything else that contains digits must be a mathematical expression, kept as written for
     the verifier (math-verify compares it symbolically): "2\\sqrt{3}", "x^2 + 1", "(1, 2)",
     "3:4". It is refused if it reads as prose (a word of two or more letters outside a LaTeX
     command: "16 or 17", "about 5", "2 hours 30 minutes") or as two numbers side by side ("1 234");
  6. an answer without digits is kept as text when short (at most three words: "yes", "(B)",
     "\\pi"); a longer one is refused.

A refused answer raises `UnreadableAnswer` with the reason; the task loader reports the file and
line (`pivotal.tasks.files`). answer_format="text" skips all of this and keeps the field as written.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from pivotal.rewards.extraction import _balanced_content as balanced_content


class UnreadableAnswer(ValueError):
    """A gold answer that none of the rules reads as an answer."""


_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_DECIMAL = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(rf"[+-]?{_DECIMAL}")
_FRACTION = re.compile(rf"([+-]?)({_INT})\s*/\s*({_INT})")
_MIXED = re.compile(rf"([+-]?)({_INT})\s+({_INT})\s*/\s*({_INT})")
_LATEX_FRACTION = re.compile(rf"([+-]?)\\frac\s*\{{\s*({_DECIMAL})\s*\}}\s*\{{\s*({_DECIMAL})\s*\}}")
_CURRENCY = re.compile(r"^(?:[$€£¥₹]|(?:USD|EUR|GBP|INR|Rs\.?)\s*)\s*")
_PERCENT = re.compile(r"\s*(?:%|percent\b)\s*")
_UNIT_WORD = r"(?:[^\W\d_]+\.?(?:\^\d+|[²³])?|°[CF]?)"
_UNITS = re.compile(rf"{_UNIT_WORD}(?:\s*/\s*{_UNIT_WORD}|\s+{_UNIT_WORD}){{0,3}}")
# words that make "5 or more" or "16 to 18" a phrase, not a number with its unit
_NOT_UNITS = frozenset("or and to more less than at least most about around approximately nearly "
                       "over under between plus minus times each".split())
_VARIABLE = re.compile(r"^[A-Za-z]\s*=\s*")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_WRAPPER = re.compile(r"^\\(?:boxed|text|textbf|mathrm|mbox)\s*\{")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "\\displaystyle")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_SIDE_BY_SIDE = re.compile(r"\d\s+\d")
_MAX_TEXT_WORDS = 3


def canonical_number(value: Decimal | int | float) -> str:
    """5 -> "5", 5.0 -> "5", Decimal("-3.50") -> "-3.5", 1e-05 -> "0.00001"."""
    if isinstance(value, float):
        value = Decimal(repr(value))
    value = Decimal(value)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _decimal(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def _strip_markup(text: str) -> str:
    """Rule 2: delimiters, wrappers, LaTeX spelling of %, $ and commas, a final period."""
    text = text.replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("{,}", ",").replace("\\%", "%").replace("\\$", "$")
    for spacing in _SPACING:
        text = text.replace(spacing, "")
    previous = None
    while previous != text:
        previous = text
        text = text.strip().rstrip(".").strip()
        for opening, closing in _DELIMITERS:
            if len(text) > len(opening) + len(closing) and text.startswith(opening) \
                    and text.endswith(closing):
                text = text[len(opening):-len(closing)]
                break
        wrapper = _WRAPPER.match(text)
        if wrapper:  # only a wrapper around the whole answer: "\\text{a}{b}" stays
            inner = balanced_content(text, wrapper.end() - 1)
            if inner is not None and wrapper.end() + len(inner) + 1 == len(text):
                text = inner
    return text


def _number_core(text: str) -> tuple[str, str] | None:
    """The number at the start of `text` in canonical form, and the rest; None if none."""
    for pattern, build in (
        (_LATEX_FRACTION, lambda m: f"{m[1] if m[1] == '-' else ''}{canonical_number(_decimal(m[2]))}"
                                    f"/{canonical_number(_decimal(m[3]))}"),
        (_MIXED, lambda m: _mixed(m)),
        (_FRACTION, lambda m: f"{m[1] if m[1] == '-' else ''}{canonical_number(_decimal(m[2]))}"
                              f"/{canonical_number(_decimal(m[3]))}"),
        (_NUMBER, lambda m: canonical_number(_decimal(m[0]))),
    ):
        match = pattern.match(text)
        if match:
            value = build(match)
            if value is not None:
                return value, text[match.end():]
    return None


def _mixed(match: re.Match) -> str | None:
    whole, num, den = (int(match[i].replace(",", "")) for i in (2, 3, 4))
    if den == 0 or num >= den:  # "1 234/5" is not a mixed number
        return None
    value = whole + Fraction(num, den)
    value = -value if match[1] == "-" else value
    return f"{value.numerator}/{value.denominator}"


def _number_with_units(text: str) -> str | None:
    """Rule 4: [currency] number [%] [units | (units)], the whole string; None if it is not."""
    text = _CURRENCY.sub("", text, count=1)
    core = _number_core(text)
    if core is None:
        return None
    number, rest = core
    rest = _PERCENT.sub("", rest, count=1) if _PERCENT.match(rest) else rest
    rest = rest.strip()
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1].strip()
    if rest and (not _UNITS.fullmatch(rest)
                 or _NOT_UNITS.intersection(re.findall(r"[^\W\d_]+", rest.lower()))):
        return None
    return number


def clean_answer(value: Any) -> str:
    """The gold answer `value` (a field of a data row) in the form the verifier compares.

    Raises UnreadableAnswer (a ValueError) with the reason when no rule reads it.
    """
    if isinstance(value, bool):
        raise UnreadableAnswer(f"a boolean ({value}) is not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnreadableAnswer(f"{value} is not a finite number")
        return canonical_number(value)
    if not isinstance(value, str):
        raise UnreadableAnswer(f"a {type(value).__name__} is not an answer (expected text or a number)")
    text = _VARIABLE.sub("", _strip_markup(value), count=1).strip()
    if not text:
        raise UnreadableAnswer("it is empty after removing markup")
    try:
        number = _number_with_units(text)
    except InvalidOperation:
        number = None
    if number is not None:
        return number
    if any(ch.isdigit() for ch in text):
        commands = re.sub(r"\\[A-Za-z]+", " ", text)
        prose = _PROSE_WORD.search(commands)
        if prose:
            raise UnreadableAnswer(f"it reads as prose, not as an answer (the word '{prose[0]}')")
        if _SIDE_BY_SIDE.search(commands):
            raise UnreadableAnswer("it holds two numbers side by side")
        return text
    if len(text.split()) > _MAX_TEXT_WORDS:
        raise UnreadableAnswer(f"it is {len(text.split())} words of text, not an answer")
    return text
