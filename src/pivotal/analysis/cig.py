"""Causal Information Gain of each response token, for `pivotal analyze --cig-hint`: which tokens
a hint makes more or less likely under the analysed (RL) model.

    CIG_t = log p_rl(y_t | x, hint, y<t) - log p_rl(y_t | x, y<t)

the quantity AMR-SD's credit gates (`pivotal.algos.self_distill`), with the hint in the prompt
after the question exactly as training puts it (`pivotal.hints`). Hints: `solution` (the
reference answer, the raw-solution teacher's context) or `template` (this response's own verdict
and answer, as the template hint source writes it for one attempt). The policy's own reflection
hints need a group of answers, which an analysis of one response per problem does not have.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..hints import solution_hint, template_hint
from ..logprobs import logprobs_no_grad
from ..rewards import extracted
from ..tasks import format_prompt
from .shift import Response, build_batch

CIG_HINTS = ("solution", "template")


def hinted_prompt_ids(problems: list, responses: list[Response], hint: str, tokenizer) -> list[list[int]]:
    """The token ids of each response's prompt with its hint after the question (problems and
    responses in the same order, formatted as `pivotal eval` formats them)."""
    if hint not in CIG_HINTS:
        raise ValueError(f"--cig-hint must be one of {', '.join(CIG_HINTS)}, got {hint!r}")
    out = []
    for problem, response in zip(problems, responses, strict=True):
        text = (solution_hint(problem) if hint == "solution" else template_hint(
            [extracted(response.text)], [bool(response.correct)], 1))
        prompt = format_prompt(replace(problem, question=f"{problem.question.strip()}\n\nHint: {text}"),
                               tokenizer)
        out.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return out


def cig_values(rl, responses: list[Response], hinted: list[list[int]], pad_id: int,
               micro_batch: int) -> np.ndarray:
    """(N,) CIG of every response token, row-major over the responses' tokens (the order of the
    tokens.parquet rows)."""
    plain = build_batch(responses, pad_id)
    with_hint = build_batch([replace(r, prompt_ids=list(h)) for r, h in zip(responses, hinted)], pad_id)
    mask = plain.response_mask.bool()
    logp = logprobs_no_grad(rl, plain, 1.0, False, micro_batch)
    logp_hint = logprobs_no_grad(rl, with_hint, 1.0, False, micro_batch)
    return (logp_hint - logp)[mask].double().numpy()
