"""Procedurally generated integer arithmetic ("What is 23 + 45 * 3?").

Difficulty knobs, per level:
  ops:    which operators may appear, a subset of "+", "-", "*" (a list, or a string like "+-").
  digits: how many digits each operand has: an int (exactly that many), a (min, max) pair (each
          operand draws its digit count uniformly from the range), or a per-operand list with one
          entry per operand, each an int or a (min, max) pair, e.g. [1, (2, 3)]. A list of two plain
          ints is always read as a (min, max) range; write [(1, 1), (2, 2)] for per-operand digits.
  steps:  number of operators in the chain; "3 + 4 * 2" is steps=2 and is evaluated with the usual
          precedence (* before + and -), so its answer is 11.
  allow_negative: whether the final answer may be negative (operands are always non-negative).

A task may mix several levels (``levels=[{"ops": ["+"], "digits": 1, "weight": 2}, ...]`` or
``ArithmeticTask.mix([...])``); a training index picks its level with its own RNG, the eval set is
stratified over the levels, and ``Problem.meta["level"]`` records the level index.

Determinism: problem i is drawn from ``random.Random(f"{seed}:{i}")``, so any index is reproducible
on its own. Held-out split: the question space is partitioned by a stable hash (sha256) of the
question text; a question is an eval question iff ``hash % round(1 / eval_fraction) == 0``. Training
draws redraw until they land outside the eval partition, so no seed's training stream can ever
produce an eval question of any seed. The partition helpers here are shared with the countdown task.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pivotal.tasks.base import Problem

OPS = ("+", "-", "*")
MAX_TRAIN_ATTEMPTS = 10_000

DigitSpec = int | Sequence[Any]


# ----------------------------------------------------------------------------------------------
# Held-out partition by stable hash (shared by the generated tasks)
# ----------------------------------------------------------------------------------------------

def stable_hash(text: str) -> int:
    """A process-independent 64-bit hash of text (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def partition_modulus(eval_fraction: float) -> int | None:
    """round(1 / eval_fraction), the modulus of the eval partition; None when eval_fraction is 0."""
    if eval_fraction == 0:
        return None
    if not 0 < eval_fraction <= 0.5:
        raise ValueError(f"eval_fraction must be in (0, 0.5] (or 0 for no eval set), got {eval_fraction}")
    return max(2, round(1 / eval_fraction))


def in_eval_partition(key: str, modulus: int | None) -> bool:
    """Whether the question (or canonical problem key) belongs to the held-out partition."""
    return modulus is not None and stable_hash(key) % modulus == 0


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split total into integer counts proportional to weights (largest remainder, each >= 1 if possible)."""
    norm = sum(weights)
    shares = [total * w / norm for w in weights]
    counts = [int(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):  # give starved levels one slot, taken from the largest
        if counts[i] == 0 and total >= len(counts):
            counts[counts.index(max(counts))] -= 1
            counts[i] += 1
    return counts


# ----------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------

def evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """Value of operands[0] ops[0] operands[1] ... with * binding tighter than + and -."""
    total, sign, term = 0, 1, operands[0]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            term *= value
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), value
    return total + sign * term


def render(operands: Sequence[int], ops: Sequence[str]) -> str:
    """'3 + 4 * 2' for operands [3, 4, 2] and ops ['+', '*']."""
    parts = [str(operands[0])]
    for op, value in zip(ops, operands[1:]):
        parts += [op, str(value)]
    return " ".join(parts)


def digit_range(digits: int) -> tuple[int, int]:
    """Smallest and largest non-negative integer with that many digits (1 digit: 0..9)."""
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def _pair(spec: Any, what: str) -> tuple[int, int]:
    """An int or (min, max) digit spec as a validated (min, max) pair."""
    if isinstance(spec, bool):
        raise ValueError(f"{what}: digits must be an int or a (min, max) pair, got {spec!r}")
    if isinstance(spec, int):
        lo = hi = spec
    elif isinstance(spec, Sequence) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        lo, hi = spec
    else:
        raise ValueError(f"{what}: digits must be an int or a (min, max) pair, got {spec!r}")
    if not 1 <= lo <= hi:
        raise ValueError(f"{what}: digits need 1 <= min <= max, got {spec!r}")
    return lo, hi


def operand_digits(digits: DigitSpec, steps: int) -> tuple[tuple[int, int], ...]:
    """Normalize a digits spec to one (min, max) digit-count range per operand."""
    n = steps + 1
    is_range = isinstance(digits, Sequence) and len(digits) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in digits)
    if isinstance(digits, int) or is_range:
        return (_pair(digits, "digits"),) * n
    if isinstance(digits, Sequence) and not isinstance(digits, str):
        if len(digits) != n:
            raise ValueError(f"per-operand digits need {n} entries (steps={steps}), got {len(digits)}: {digits!r}")
        return tuple(_pair(d, f"digits[{i}]") for i, d in enumerate(digits))
    raise ValueError(f"digits must be an int, a (min, max) pair or a per-operand list, got {digits!r}")


# ----------------------------------------------------------------------------------------------
# Levels
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArithmeticLevel:
    """One difficulty setting; a task draws from one or a weighted mix of these."""

    ops: tuple[str, ...] = OPS
    digits: DigitSpec = (1, 2)
    steps: int = 1
    allow_negative: bool = False
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        ops = tuple(self.ops.replace(" ", "")) if isinstance(self.ops, str) else tuple(self.ops)
        bad = [op for op in ops if op not in OPS]
        if not ops or bad:
            raise ValueError(f"ops must be a non-empty subset of {list(OPS)}, got {list(ops)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps (number of operators) must be an int >= 1, got {self.steps!r}")
        if not self.weight > 0:
            raise ValueError(f"level weight must be > 0, got {self.weight!r}")
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "_ranges", operand_digits(self.digits, self.steps))

    @property
    def label(self) -> str:
        """The level's name, or a description of its settings."""
        if self.name:
            return self.name
        spans = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in self._ranges]
        ranges = spans[0] if len(set(spans)) == 1 else ",".join(spans)
        return f"ops={''.join(self.ops)} digits={ranges} steps={self.steps}"

    def sample(self, rng: random.Random) -> tuple[list[int], list[str]]:
        """One random expression (operands, operators), not yet checked for sign or partition."""
        operands = [rng.randint(*digit_range(rng.randint(lo, hi))) for lo, hi in self._ranges]
        ops = [rng.choice(self.ops) for _ in range(self.steps)]
        return operands, ops

    def draw(self, rng: random.Random, modulus: int | None, want_eval: bool,
             attempts: int) -> tuple[list[int], list[str], int, str] | None:
        """Redraw until the expression is valid and on the wanted side of the partition."""
        for _ in range(attempts):
            operands, ops = self.sample(rng)
            value = evaluate(operands, ops)
            if value < 0 and not self.allow_negative:
                continue
            question = f"What is {render(operands, ops)}?"
            if in_eval_partition(question, modulus) == want_eval:
                return operands, ops, value, question
        return None


LEVEL_KEYS = tuple(f.name for f in fields(ArithmeticLevel))


def make_level(spec: ArithmeticLevel | Mapping[str, Any], defaults: Mapping[str, Any]) -> ArithmeticLevel:
    """A level from a dict (missing keys fall back to the task's own settings) or a level object."""
    if isinstance(spec, ArithmeticLevel):
        return spec
    unknown = sorted(set(spec) - set(LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown arithmetic level key(s) {unknown}; valid keys: {list(LEVEL_KEYS)}")
    return ArithmeticLevel(**{**defaults, **spec})


# ----------------------------------------------------------------------------------------------
# Task
# ----------------------------------------------------------------------------------------------

class ArithmeticTask:
    """Integer arithmetic problems with exact answers, from one or a weighted mix of levels."""

    def __init__(self, ops: Iterable[str] = OPS, digits: DigitSpec = (1, 2), steps: int = 1,
                 allow_negative: bool = False, seed: int = 0, eval_size: int = 200,
                 eval_fraction: float = 0.1,
                 levels: Sequence[ArithmeticLevel | Mapping[str, Any]] | None = None,
                 eval_seed: int | None = None, name: str = "arithmetic"):
        """levels: a list of level dicts (keys: ops, digits, steps, allow_negative, weight, name);
        a key a level leaves out takes this constructor's value. Without levels, the task is the
        single level (ops, digits, steps, allow_negative).
        eval_seed: seed of the eval stream (default: seed); fix it to compare runs of different
        seeds on one eval set. Any seed's training problems are disjoint from any eval set.
        """
        defaults = {"ops": ops, "digits": digits, "steps": steps, "allow_negative": allow_negative}
        specs = list(levels) if levels is not None else [defaults]
        if not specs:
            raise ValueError("levels must not be empty")
        self.levels: list[ArithmeticLevel] = [make_level(s, defaults) for s in specs]
        self.name = name
        self.seed = seed
        self.eval_seed = seed if eval_seed is None else eval_seed
        self.eval_size = eval_size
        self.modulus = partition_modulus(eval_fraction)
        self._weights = [level.weight for level in self.levels]
        self._eval: list[Problem] | None = None

    @classmethod
    def mix(cls, levels: Sequence[ArithmeticLevel | Mapping[str, Any]], **options: Any) -> ArithmeticTask:
        """A task drawing from several difficulty levels, each a dict with an optional weight."""
        return cls(levels=levels, **options)

    def _problem(self, pid: str, level_index: int, drawn: tuple[list[int], list[str], int, str]) -> Problem:
        operands, ops, value, question = drawn
        meta = {"level": level_index, "level_name": self.levels[level_index].label,
                "operands": operands, "ops": ops}
        return Problem(id=pid, question=question, answer=str(value), reward="math", meta=meta)

    def train_problem(self, index: int) -> Problem:
        """The index-th training problem, reproducible from (seed, index) alone."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = random.Random(f"{self.seed}:{index}")
        level_index = rng.choices(range(len(self.levels)), weights=self._weights)[0] if len(self.levels) > 1 else 0
        drawn = self.levels[level_index].draw(rng, self.modulus, want_eval=False, attempts=MAX_TRAIN_ATTEMPTS)
        if drawn is None:
            raise RuntimeError(
                f"{self.name}: no valid training problem after {MAX_TRAIN_ATTEMPTS} draws for level "
                f"'{self.levels[level_index].label}'; its problem space is too small or too constrained")
        return self._problem(f"{self.name}-train-{index}", level_index, drawn)

    def eval_problems(self) -> list[Problem]:
        """The held-out set: up to eval_size distinct eval-partition questions, stratified by level."""
        if self._eval is None:
            self._eval = self._build_eval()
        return list(self._eval)

    def _build_eval(self) -> list[Problem]:
        if self.modulus is None or self.eval_size <= 0:
            return []
        problems: list[Problem] = []
        seen: set[str] = set()
        for level_index, quota in enumerate(allocate(self.eval_size, self._weights)):
            rng = random.Random(f"{self.eval_seed}:eval:{level_index}")
            level, found = self.levels[level_index], 0
            for _ in range(quota * self.modulus * 20 + 1000):  # a small space runs dry, no endless loop
                if found == quota:
                    break
                drawn = level.draw(rng, self.modulus, want_eval=True, attempts=1)
                if drawn is None or drawn[3] in seen:
                    continue
                seen.add(drawn[3])
                problems.append(self._problem(f"{self.name}-eval-{len(problems)}", level_index, drawn))
                found += 1
        return problems
