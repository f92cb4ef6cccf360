"""Countdown: combine a few numbers with + - * / to hit a target.

Each problem's target is built by combining all of its numbers with random operations (every
intermediate value a positive integer, divisions exact), so a solution always exists; the verifier
("countdown" reward) accepts any expression that uses each number at most once and equals the target.

Determinism and held-out split work as in the arithmetic task: problem i comes from
``random.Random(f"{seed}:{i}")``; the eval partition is a stable hash of a canonical key of the
problem (the sorted numbers and the target), so a training problem is never an eval problem, not
even with its numbers listed in another order.
"""

from __future__ import annotations

import random

from pivotal.tasks.arithmetic import in_eval_partition, partition_modulus
from pivotal.tasks.base import Problem

MAX_TRAIN_ATTEMPTS = 10_000


def combine(a: int, b: int, rng: random.Random) -> tuple[int, str]:
    """A random valid operation on a and b as (value, operator), keeping results positive integers.

    Subtraction and division put the larger operand first; returns (value, op) where op is written
    between (larger, smaller) for - and /, and between (a, b) for + and *.
    """
    big, small = max(a, b), min(a, b)
    choices = [(a + b, "+"), (a * b, "*")]
    if big > small:
        choices.append((big - small, "-"))
    if small > 1 and big % small == 0:
        choices.append((big // small, "/"))
    return rng.choice(choices)


def build_target(numbers: list[int], rng: random.Random) -> tuple[int, str]:
    """Combine all numbers in a random order and shape; returns (target, solution expression)."""
    pool = [(n, str(n)) for n in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (a, ea), (b, eb) = pool[i], pool[j]
        value, op = combine(a, b, rng)
        if op in "-/" and b > a:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, f"({ea} {op} {eb})")]
    value, expr = pool[0]
    return value, expr[1:-1] if expr.startswith("(") else expr


def canonical_key(numbers: list[int], target: int) -> str:
    """The problem independent of the order its numbers are listed in."""
    return f"{sorted(numbers)}->{target}"


class CountdownTask:
    """Countdown problems: num_count numbers in [min_number, max_number], a reachable target."""

    def __init__(self, num_count: int = 3, max_number: int = 20, seed: int = 0, eval_size: int = 200,
                 eval_fraction: float = 0.1, min_number: int = 1, max_target: int = 100,
                 eval_seed: int | None = None, name: str = "countdown"):
        """max_target: targets are in [1, max_target] and never equal one of the given numbers.
        eval_seed: seed of the eval stream (default: seed)."""
        if not 2 <= num_count <= 6:
            raise ValueError(f"num_count must be between 2 and 6, got {num_count}")
        if not 1 <= min_number <= max_number:
            raise ValueError(f"need 1 <= min_number <= max_number, got {min_number}, {max_number}")
        if max_target < 1:
            raise ValueError(f"max_target must be >= 1, got {max_target}")
        self.name = name
        self.num_count = num_count
        self.min_number, self.max_number, self.max_target = min_number, max_number, max_target
        self.seed = seed
        self.eval_seed = seed if eval_seed is None else eval_seed
        self.eval_size = eval_size
        self.modulus = partition_modulus(eval_fraction)
        self._eval: list[Problem] | None = None

    def _draw(self, rng: random.Random, want_eval: bool) -> tuple[list[int], int, str] | None:
        """One candidate (numbers, target, solution), or None if it fails a constraint."""
        numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.num_count)]
        target, solution = build_target(numbers, rng)
        if target > self.max_target or target in numbers:
            return None
        if in_eval_partition(canonical_key(numbers, target), self.modulus) != want_eval:
            return None
        return numbers, target, solution

    def _problem(self, pid: str, numbers: list[int], target: int, solution: str) -> Problem:
        question = (f"Using the numbers {numbers}, make {target}. You may use + - * / and each "
                    f"number at most once. Write the expression.")
        meta = {"numbers": numbers, "target": target, "solution": solution}
        return Problem(id=pid, question=question, answer=str(target), reward="countdown", meta=meta)

    def train_problem(self, index: int) -> Problem:
        """The index-th training problem, reproducible from (seed, index) alone."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = random.Random(f"{self.seed}:{index}")
        for _ in range(MAX_TRAIN_ATTEMPTS):
            drawn = self._draw(rng, want_eval=False)
            if drawn is not None:
                return self._problem(f"{self.name}-train-{index}", *drawn)
        raise RuntimeError(f"{self.name}: no valid training problem after {MAX_TRAIN_ATTEMPTS} draws; "
                           f"raise max_target or lower max_number/num_count")

    def eval_problems(self) -> list[Problem]:
        """The held-out set: up to eval_size distinct eval-partition problems."""
        if self._eval is None:
            self._eval = self._build_eval()
        return list(self._eval)

    def _build_eval(self) -> list[Problem]:
        if self.modulus is None or self.eval_size <= 0:
            return []
        rng = random.Random(f"{self.eval_seed}:eval")
        problems: list[Problem] = []
        seen: set[str] = set()
        for _ in range(self.eval_size * self.modulus * 50 + 1000):  # a small space runs dry
            if len(problems) == self.eval_size:
                break
            drawn = self._draw(rng, want_eval=True)
            if drawn is None or canonical_key(drawn[0], drawn[1]) in seen:
                continue
            seen.add(canonical_key(drawn[0], drawn[1]))
            problems.append(self._problem(f"{self.name}-eval-{len(problems)}", *drawn))
        return problems
