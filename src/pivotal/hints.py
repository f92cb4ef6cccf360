"""The self-teacher's context: one hint per group, and the prompts with it (AMR-SD, self_distill).

A credit that requires "context_logprobs" (`pivotal.algos.self_distill`) scores each response
under the policy with a hint added to its prompt. This stage writes the hints after scoring and
stores each row's hinted prompt as token ids in batch.extras["context_prompt_ids"];
`context_batch` turns them into a batch whose log-probs `pivotal.step_inputs` computes like the
reference's (micro-batched, no (B, T, V) tensor). The credit's options choose the hint:

  reflection  the policy writes it (one batched call of the rollout engine per step, greedy, at
              most `hint_tokens` tokens) from a reflection prompt showing the question and up to
              `hint_answers` of the group's answers with the verifier's verdict on each; never
              the reference solution or answer
  solution    the raw reference: problem.meta["solution"] when the task has one, else "The final
              answer is <answer>." (the over-conditioned baseline AMR-SD improves on)
  template    a fixed text of the same verdicts, no generation (tests, tiny models)

The hinted prompt is the task's prompt with "\\n\\nHint: <hint>" after the question, through the
same chat template. One sample per step goes to <output_dir>/hints.jsonl (rank 0), so a user can
read what the teacher saw.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path

import torch

from .algos import CREDITS, credit_requirements
from .batch import RolloutBatch
from .rewards import extracted
from .rollout import SamplingParams
from .tasks import format_prompt

CONTEXT_IDS_KEY = "context_prompt_ids"
REFLECTION_REQUEST = ("Write one short hint (at most two sentences) that would help a student "
                      "solve this problem correctly. Do not state the final answer.")


def outcome_lines(answers: list[str | None], accepted: list[bool], shown: int) -> list[str]:
    """'answer 12: accepted' lines for the first `shown` answers of a group."""
    return [f"- answer {a if a is not None else '(none)'}: {'accepted' if ok else 'rejected'}"
            for a, ok in list(zip(answers, accepted))[:shown]]


def template_hint(answers: list[str | None], accepted: list[bool], shown: int) -> str:
    right = sorted({a for a, ok in zip(answers, accepted) if ok and a is not None})
    wrong = sorted({a for a, ok in zip(answers, accepted) if not ok and a is not None})[:shown]
    return (f"{sum(accepted)} of {len(accepted)} attempts were accepted. "
            + (f"Accepted answers: {', '.join(right)}. " if right else "")
            + (f"Rejected answers: {', '.join(wrong)}." if wrong else "")).strip()


def solution_hint(problem) -> str:
    solution = problem.meta.get("solution") if problem.meta else None
    return str(solution) if solution else f"The final answer is {problem.answer}."


def reflection_question(problem, answers: list[str | None], accepted: list[bool], shown: int) -> str:
    lines = outcome_lines(answers, accepted, shown)
    return (f"Problem: {problem.question.strip()}\n\nSome attempts and whether a checker accepted "
            f"them:\n" + "\n".join(lines) + f"\n\n{REFLECTION_REQUEST}")


def hint_options(credit_name: str, options: dict) -> dict:
    """The credit's hint_source / hint_tokens / hint_answers: configured, else its defaults."""
    params = inspect.signature(CREDITS.get(credit_name)).parameters
    return {k: options.get(k, params[k].default) for k in ("hint_source", "hint_tokens", "hint_answers")}


class HintStage:
    """Writes each group's hint and the rows' hinted prompt ids (`CONTEXT_IDS_KEY`)."""

    def __init__(self, cfg, engine, tokenizer, out_dir: Path | None, write_log: bool):
        opts = hint_options(cfg.algo.credit, cfg.algo.credit_options)
        self.source, self.max_tokens, self.shown = opts["hint_source"], opts["hint_tokens"], opts["hint_answers"]
        self.cfg, self.engine, self.tokenizer = cfg, engine, tokenizer
        self.log_path = out_dir / "hints.jsonl" if out_dir is not None and write_log else None

    def hints(self, problems: list, answers: list[list], accepted: list[list[bool]],
              seed: int) -> list[str]:
        """One hint per group: problems (N,), answers and verdicts (N, G)."""
        if self.source == "solution":
            return [solution_hint(p) for p in problems]
        if self.source == "template":
            return [template_hint(a, ok, self.shown) for a, ok in zip(answers, accepted)]
        prompts = [format_prompt(replace(p, question=reflection_question(p, a, ok, self.shown)),
                                 self.tokenizer, "", self.cfg.task.system_prompt)
                   for p, a, ok in zip(problems, answers, accepted)]
        _, texts = self.engine.generate(prompts, 1, SamplingParams(self.max_tokens, 0.0), seed=seed)
        return [t.strip() or "(no hint)" for t in texts]

    def __call__(self, batch: RolloutBatch, problems: list, texts: list[str], step: int,
                 seed: int) -> dict:
        """Fill batch.extras[CONTEXT_IDS_KEY] (B lists of ids); returns the hint metrics.
        problems: (B,) the rows' problems (G consecutive rows per group)."""
        G = self.cfg.rollout.group_size
        firsts = list(range(0, batch.size, G))
        answers = [extracted(t, tuple(self.cfg.reward.extract)) for t in texts]
        correct = batch.correct.tolist()
        group_hints = self.hints([problems[i] for i in firsts], [answers[i:i + G] for i in firsts],
                                 [correct[i:i + G] for i in firsts], seed)
        hinted = [format_prompt(replace(problems[i], question=f"{problems[i].question.strip()}\n\n"
                                                                f"Hint: {h}"),
                                self.tokenizer, self.cfg.task.instruction, self.cfg.task.system_prompt)
                  for i, h in zip(firsts, group_hints)]
        ids = self.tokenizer(hinted, add_special_tokens=False)["input_ids"]
        batch.extras[CONTEXT_IDS_KEY] = [list(ids[r // G]) for r in range(batch.size)]
        if self.log_path is not None and group_hints:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)  # a step run outside train()
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "problem_id": problems[0].id,
                                    "source": self.source, "hint": group_hints[0]}) + "\n")
        lengths = [len(self.tokenizer(h, add_special_tokens=False)["input_ids"]) for h in group_hints]
        return {"hint_tokens": sum(lengths) / max(1, len(lengths))}


def context_batch(batch: RolloutBatch, pad_token_id: int) -> RolloutBatch:
    """The batch with each row's prompt replaced by its hinted prompt (left-padded): the same
    responses, so its log-probs are log pi(y_t | x, hint, y<t)."""
    rows = batch.extras[CONTEXT_IDS_KEY]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    view = batch.select(torch.arange(batch.size))
    view.prompt_ids, view.prompt_mask = ids.to(batch.prompt_ids.device), mask.to(batch.prompt_mask.device)
    return view


def build_hint_stage(cfg, engine, tokenizer, out_dir: Path | None, write_log: bool) -> HintStage | None:
    """The stage when the configured credit reads context log-probs, else None."""
    if "context_logprobs" not in credit_requirements(CREDITS.get(cfg.algo.credit), cfg.algo.credit_options):
        return None
    return HintStage(cfg, engine, tokenizer, out_dir, write_log)
