"""The Task protocol: where problems come from, and how a problem becomes a prompt.

A task hands out training problems by integer index (deterministic for a given seed, so a resumed run
continues at its data cursor) and a fixed held-out evaluation set that never overlaps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

DEFAULT_INSTRUCTION = "Put the final answer in \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    question: the problem text shown to the model (without the answer-format instruction).
    answer:   the ground-truth final answer as a string ("42", "-3.5", "1/2").
    reward:   name of the registered reward function that verifies it ("math", "countdown").
    meta:     task-specific data a verifier may need (e.g. countdown's numbers and target).
    """

    id: str
    question: str
    answer: str
    reward: str = "math"
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    name: str

    def train_problem(self, index: int) -> Problem:
        """The index-th training problem; same index and seed -> same problem."""
        ...

    def eval_problems(self) -> list[Problem]:
        """The fixed held-out set; disjoint (by question text) from every training problem."""
        ...


def format_prompt(problem: Problem, tokenizer, instruction: str = DEFAULT_INSTRUCTION,
                  system_prompt: str | None = None) -> str:
    """Render the problem through the tokenizer's chat template, ready for generation.

    Falls back to plain 'question + instruction' text when the tokenizer has no chat template.
    """
    user = f"{problem.question.strip()} {instruction}".strip()
    if getattr(tokenizer, "chat_template", None):
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {user}\nAnswer:"
