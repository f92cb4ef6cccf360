"""Evaluation: greedy accuracy (strict and lenient), avg@n, unbiased pass@k, maj@n, lengths.

Two accuracies are reported because they answer different questions:
  strict   the answer inside the last \\boxed{} (or the task's own verifier) must be right;
  lenient  the last number in the response counts when there is no \\boxed{} (format-agnostic).
A gain in strict accuracy alone may only mean the model learned to write \\boxed{}; a gain in lenient
accuracy means it computes better.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from .rewards import extract_answer, load_reward, normalize_answer
from .rollout import SamplingParams, TransformersEngine
from .tasks.base import DEFAULT_INSTRUCTION, Problem, format_prompt

STRICT_EXTRACT = ("boxed",)
LENIENT_EXTRACT = ("boxed", "hash", "last_number")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv:2107.03374).

    1 - C(n-c, k) / C(n, k), as the running product prod_{i=n-c+1}^{n} (1 - k/i): no factorials.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


class Judge:
    """Scores one response to one problem, strictly and leniently."""

    def __init__(self, timeout_s: float = 5.0):
        self._strict = load_reward("math", extract=STRICT_EXTRACT, timeout_s=timeout_s)
        self._lenient = load_reward("math", extract=LENIENT_EXTRACT, timeout_s=timeout_s)
        self._other: dict[str, object] = {}

    def __call__(self, response: str, problem: Problem) -> tuple[bool, bool]:
        if problem.reward == "math":
            return (self._strict(response, problem) >= 1.0,
                    self._lenient(response, problem) >= 1.0)
        fn = self._other.setdefault(problem.reward, load_reward(problem.reward))
        ok = fn(response, problem) >= 1.0
        return ok, ok


def _generate_all(engine, prompts, n, params, batch_size, seed, desc, progress, keep_partial):
    """Responses grouped per prompt: list of lists (n) of (text, length), and whether an
    interrupt (Ctrl-C, or the CLI's SIGTERM) stopped it early: then the list covers the prompts
    of the chunks already generated, and the interrupt's name is returned instead of None."""
    out = []
    per_batch = max(1, batch_size // n) if n > 1 else batch_size
    chunks = range(0, len(prompts), per_batch)
    try:
        for i in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            batch, texts = engine.generate(prompts[i:i + per_batch], n, params, seed=seed + i)
            lengths = batch.response_lengths.tolist()
            for j in range(0, len(texts), n):
                out.append(list(zip(texts[j:j + n], lengths[j:j + n])))
    except KeyboardInterrupt as stop:  # keep what is done; the caller reports and exits
        if not keep_partial:
            raise
        return out, getattr(stop, "signal_name", "SIGINT")
    return out, None


def evaluate(model, tokenizer, problems: list[Problem], *, n_samples: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64,
             batch_size: int = 32,
             instruction: str = DEFAULT_INSTRUCTION, system_prompt: str | None = None,
             seed: int = 0, progress: bool = True, engine=None,
             keep_partial: bool = False) -> tuple[dict, list[dict]]:
    """Greedy accuracy, and with n_samples > 1 avg@n, pass@k (k = 1, 2, 4, .. <= n) and maj@n.

    Returns (summary, records): one record per response (greedy and sampled), ready for JSONL.
    With `keep_partial`, an interrupt stops it early instead of propagating: the summary covers
    the problems answered so far and says
    `"interrupted": <signal name>` (sampled metrics only when sampling finished).
    """
    if not problems:
        raise ValueError("nothing to evaluate: the problem list is empty")
    engine = engine or TransformersEngine(model, tokenizer)
    judge = Judge()
    prompts = [format_prompt(p, tokenizer, instruction, system_prompt) for p in problems]
    records: list[dict] = []

    greedy, stopped = _generate_all(engine, prompts, 1,
                                    SamplingParams(max_new_tokens, temperature=0.0), batch_size,
                                    seed, "eval greedy", progress, keep_partial)
    if stopped and not greedy:
        return {"num_problems": 0, "interrupted": stopped}, []
    strict_ok = lenient_ok = 0
    greedy_lengths = []
    for problem, prompt, [(text, length)] in zip(problems, prompts, greedy):
        ok_strict, ok_lenient = judge(text, problem)
        strict_ok += ok_strict
        lenient_ok += ok_lenient
        greedy_lengths.append(length)
        records.append(_record(problem, prompt, text, length, "greedy", 0, ok_strict, ok_lenient))
    N = len(greedy)
    summary = {"num_problems": N, "greedy_strict": strict_ok / N, "greedy_lenient": lenient_ok / N,
               "greedy_mean_length": sum(greedy_lengths) / N,
               "boxed_rate": sum(extract_answer(r["response"], STRICT_EXTRACT)[0] is not None
                                 for r in records) / N}

    if stopped:
        summary["interrupted"] = stopped
    if n_samples > 1 and not stopped:
        params = SamplingParams(max_new_tokens, temperature=temperature, top_p=top_p)
        sampled, stopped = _generate_all(engine, prompts, n_samples, params, batch_size, seed + 1,
                                         f"eval {n_samples} samples", progress, keep_partial)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n_samples]
        pass_sums = {k: 0.0 for k in ks}
        avg_strict = avg_lenient = maj_ok = total_len = 0.0
        for problem, prompt, group in zip(problems, prompts, sampled):
            verdicts = []
            for j, (text, length) in enumerate(group):
                ok_strict, ok_lenient = judge(text, problem)
                verdicts.append(ok_lenient)
                avg_strict += ok_strict
                avg_lenient += ok_lenient
                total_len += length
                records.append(_record(problem, prompt, text, length, "sample", j, ok_strict, ok_lenient))
            c = sum(verdicts)
            for k in ks:
                pass_sums[k] += pass_at_k(n_samples, c, k)
            maj_ok += _majority_correct(group, problem, judge)
        if stopped:  # the greedy metrics are whole; sampled rows are kept, their metrics not
            summary["interrupted"] = stopped
            return summary, records
        M = N * n_samples
        summary.update({f"avg@{n_samples}_strict": avg_strict / M,
                        f"avg@{n_samples}_lenient": avg_lenient / M,
                        f"maj@{n_samples}_lenient": maj_ok / N,
                        "sample_mean_length": total_len / M,
                        **{f"pass@{k}_lenient": v / N for k, v in pass_sums.items()}})
    return summary, records


def merge_eval_summaries(summaries: list[dict]) -> dict:
    """Summaries of disjoint problem subsets (one per data-parallel rank) -> the summary of all of
    them. Every metric is a mean over problems (or over an equal number of samples per problem),
    so each is weighted by its part's `num_problems`; an interruption anywhere is reported."""
    total = sum(s.get("num_problems", 0) for s in summaries)
    merged: dict = {"num_problems": total}
    for key in dict.fromkeys(k for s in summaries for k in s):
        if key == "num_problems":
            continue
        parts = [s for s in summaries if key in s and s.get("num_problems")]
        if key == "interrupted" or not parts:
            merged[key] = next((s[key] for s in summaries if key in s), None)
            continue
        weight = sum(s["num_problems"] for s in parts)
        merged[key] = sum(s[key] * s["num_problems"] for s in parts) / weight
    return merged


def _majority_correct(group, problem: Problem, judge: Judge) -> bool:
    """Is the most common extracted answer right? (ties: the first seen wins.)"""
    answers = []
    for text, _ in group:
        ans, _ = extract_answer(text, LENIENT_EXTRACT)
        if ans is not None:
            answers.append((normalize_answer(ans), text))
    if not answers:
        return False
    top, _ = Counter(a for a, _ in answers).most_common(1)[0]
    representative = next(text for a, text in answers if a == top)
    return judge(representative, problem)[1]


def _record(problem, prompt, text, length, kind, index, strict, lenient) -> dict:
    return {"problem_id": problem.id, "question": problem.question, "answer": problem.answer,
            "prompt": prompt, "kind": kind, "sample_index": index, "response": text,
            "length": int(length), "correct_strict": bool(strict), "correct_lenient": bool(lenient)}


def write_eval_outputs(output_dir: str | Path, summary: dict, records: list[dict]) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "generations.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
