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

Modules: `extraction` (answer extraction and normalisation), `verifiers` (the registered rewards
and loading by spec), `scorer` (weighted components with timeouts).

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

from pivotal.registry import UnknownNameError
from pivotal.rewards.extraction import (
    DEFAULT_METHODS,
    EXTRACTION_METHODS,
    answers_match,
    extract_answer,
    extract_boxed,
    extract_hash,
    extract_last_number,
    normalize_answer,
)
from pivotal.rewards.scorer import RewardComponent, RewardScorer, build_scorer, extracted, is_correct
from pivotal.rewards.verifiers import (
    REWARDS,
    RewardFactory,
    RewardFn,
    evaluate_arithmetic,
    extract_countdown_expression,
    load_reward,
    register_reward,
)

__all__ = [
    "RewardFn", "RewardFactory", "REWARDS", "register_reward", "EXTRACTION_METHODS",
    "DEFAULT_METHODS", "extract_boxed", "extract_hash", "extract_last_number", "extract_answer",
    "normalize_answer", "answers_match", "extract_countdown_expression", "evaluate_arithmetic",
    "load_reward", "RewardComponent", "RewardScorer", "build_scorer", "is_correct", "extracted", "UnknownNameError",
]
