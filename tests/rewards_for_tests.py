"""User-style reward functions for the trainer tests (a 'module:function' reward spec).

A randomly initialised model never answers arithmetic correctly, so its rewards would all be 0 and
no gradient would flow; these rewards vary across samples so the updates are real.
"""


def digit_fraction(completion: str, problem) -> float:
    """Fraction of characters that are digits (0 for an empty response)."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def short_is_good(completion: str, problem) -> float:
    return 1.0 if len(completion) < 20 else 0.0


def ascii_fraction(completion: str, problem) -> float:
    """Fraction of ASCII letters: varies a lot across a random model's samples."""
    return sum(c.isascii() and c.isalpha() for c in completion) / max(len(completion), 1)
