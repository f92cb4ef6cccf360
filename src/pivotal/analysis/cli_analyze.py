"""`pivotal analyze`: per-token shift between a base model and an RL model on a set of responses.

    pivotal analyze --rl runs/demo/checkpoints/step_000020 --task arithmetic --limit 100
    pivotal analyze --base smollm2-135m --rl ckpt --generations runs/eval/generations.jsonl
    pivotal analyze --rl ckpt --data $PIVOTAL_DATA_DIR/svamp_test.jsonl --sampler base --out runs/an

Writes into --out: tokens.parquet (one row per response token), responses.jsonl (one line per
response) and summary.json (sparsity, position histogram, entropy bins, top tokens, mass moved);
schemas in pivotal.analysis.shift.

Where the responses come from:
  --generations FILE  the responses of a `pivotal eval` generations.jsonl (its first --limit
                      records). Each record's "prompt" and "response" texts are re-tokenised
                      (add_special_tokens=False) and the response tokens are analysed as
                      re-tokenised; no EOS token is appended (eval stores the text without it).
                      Records whose "model" is neither --base nor --rl are refused unless
                      --allow-other-model is given.
  --task NAME / --data FILE
                      the first --limit problems; greedy responses of the --sampler model
                      (default rl), prompts formatted as `pivotal eval` formats them, judged with
                      eval's Judge (correct = lenient accuracy). The sampled token ids are analysed
                      exactly, EOS included when the model emitted it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .shift import (
    JS_THRESHOLDS,
    SHIFT_THRESHOLD,
    TOP_K,
    Response,
    summary,
    token_table,
    write_outputs,
)

DEFAULT_BASE = "smollm2-135m"
DEFAULT_TASK = "arithmetic"
REQUIRED_FIELDS = ("prompt", "response")


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def check_same_tokenizer(tokenizer_base, tokenizer_rl, base_name: str, rl_name: str) -> str:
    """The shared vocabulary fingerprint (`pivotal.models.tokenizer_fingerprint`); ValueError naming
    both models and the first difference when they differ (per-token comparison needs equal ids)."""
    from ..models import tokenizer_fingerprint

    fb, fr = tokenizer_fingerprint(tokenizer_base), tokenizer_fingerprint(tokenizer_rl)
    if fb == fr:
        return fb
    vb, vr = tokenizer_base.get_vocab(), tokenizer_rl.get_vocab()
    if len(vb) != len(vr):
        what = f"vocabulary sizes differ: {len(vb)} (base) vs {len(vr)} (rl)"
    else:
        by_id_b = {i: t for t, i in vb.items()}
        by_id_r = {i: t for t, i in vr.items()}
        differ = sorted(i for i in set(by_id_b) | set(by_id_r) if by_id_b.get(i) != by_id_r.get(i))
        what = (f"token id {differ[0]} is {by_id_b.get(differ[0])!r} for base but "
                f"{by_id_r.get(differ[0])!r} for rl" if differ else
                "the token -> id maps differ")
    only_b = sorted(set(vb) - set(vr))[:3]
    only_r = sorted(set(vr) - set(vb))[:3]
    extra = "".join([f"; only in base: {only_b}" if only_b else "",
                     f"; only in rl: {only_r}" if only_r else ""])
    raise ValueError(f"the base model '{base_name}' and the rl model '{rl_name}' have different "
                     f"tokenizers (vocabulary fingerprints {fb} vs {fr}): {what}{extra}. "
                     f"Per-token analysis needs both models to share one tokenizer.")


def _same_model(name: str, spec: str) -> bool:
    """Is a generations record's "model" the model spec given on the command line? Paths compare
    by the file they point to (runs/x/ and ./runs/x are the same checkpoint)."""
    if name == spec:
        return True
    a, b = Path(name).expanduser(), Path(spec).expanduser()
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# Response sources
# ----------------------------------------------------------------------------------------------

def read_generation_records(path: str | Path, base: str, rl: str, *,
                            allow_other_model: bool = False,
                            limit: int | None = None) -> list[dict]:
    """The first `limit` records of a `pivotal eval` generations.jsonl, checked.

    Each record needs "prompt" and "response" strings; a record's "model" (when present) must be
    `base` or `rl` unless allow_other_model. Raises FileNotFoundError for a missing file and
    ValueError (naming the file, and the line where one is at fault) for an empty file, a line
    that is not a JSON object, a missing field, or a record of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--generations file '{path}' does not exist")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object (an eval "
                                 f"generations record), got {type(record).__name__}")
            missing = [k for k in REQUIRED_FIELDS if not isinstance(record.get(k), str)]
            if missing:
                raise ValueError(f"{path}, line {lineno}: the record has no "
                                 f"{' or '.join(repr(k) for k in missing)} text; a generations "
                                 f"file of `pivotal eval` has both")
            model = record.get("model")
            if model is not None and not allow_other_model and not (
                    _same_model(str(model), base) or _same_model(str(model), rl)):
                raise ValueError(
                    f"{path}, line {lineno}: the response was generated by model '{model}', which "
                    f"is neither --base '{base}' nor --rl '{rl}'; pass --allow-other-model to "
                    f"analyse another model's responses anyway")
            record["_line"] = lineno
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"--generations file '{path}' has no records")
    return records


def responses_from_records(records: list[dict], tokenizer, path: str | Path = "") -> list[Response]:
    """Re-tokenise the records' prompt and response texts (add_special_tokens=False, no EOS
    appended). Records whose response has no tokens are skipped; ValueError naming the file when
    none is left."""
    out = []
    for r in records:
        prompt_ids = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(r["response"], add_special_tokens=False)["input_ids"]
        if not response_ids or not prompt_ids:
            continue
        correct = r.get("correct_lenient", r.get("correct"))
        extra = {k: r[k] for k in ("kind", "sample_index", "correct_strict", "model") if k in r}
        extra["line"] = r.get("_line")
        out.append(Response(problem_id=str(r.get("problem_id", f"line{r.get('_line')}")),
                            prompt=r["prompt"], prompt_ids=list(prompt_ids),
                            response_ids=list(response_ids), text=r["response"],
                            correct=None if correct is None else bool(correct), extra=extra))
    if not out:
        raise ValueError(f"--generations file '{path}' has no usable rows: every record has an "
                         f"empty prompt or response")
    return out


def generate_responses(sampler, tokenizer, problems, *, max_new_tokens: int = 48,
                       batch_size: int = 32, progress: bool = True) -> list[Response]:
    """Greedy responses of `sampler` to the problems, formatted and judged as `pivotal eval` does
    (format_prompt with the default instruction; Judge, correct = lenient)."""
    from tqdm.auto import tqdm

    from ..evaluation import Judge
    from ..rollout import SamplingParams, TransformersEngine
    from ..tasks import format_prompt

    engine = TransformersEngine(sampler, tokenizer)
    judge = Judge()
    params = SamplingParams(max_new_tokens, temperature=0.0)
    out = []
    for start in tqdm(range(0, len(problems), batch_size), desc="generate", disable=not progress,
                      leave=False):
        chunk = problems[start:start + batch_size]
        prompts = [format_prompt(p, tokenizer) for p in chunk]
        batch, texts = engine.generate(prompts, 1, params, seed=start)
        for i, (problem, prompt, text) in enumerate(zip(chunk, prompts, texts)):
            prompt_ids = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
            response_ids = batch.response_ids[i][batch.response_mask[i].bool()].tolist()
            strict, lenient = judge(text, problem)
            out.append(Response(problem_id=str(problem.id), prompt=prompt, prompt_ids=prompt_ids,
                                response_ids=response_ids, text=text, correct=bool(lenient),
                                extra={"correct_strict": bool(strict),
                                       "truncated": bool(batch.truncated[i])}))
    return out


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------

def _check_args(args) -> None:
    for name in ("chunk_tokens", "micro_batch", "max_new_tokens", "batch_size", "top_k"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.shift_threshold < 0:
        raise ValueError(f"--shift-threshold must be >= 0, got {args.shift_threshold}")
    if getattr(args, "cig_hint", None) and args.generations:
        raise ValueError("--cig-hint needs --task or --data: the hint goes after the problem's "
                         "question, which a generations file does not keep apart")


def _print_summary(s: dict, paths: dict) -> None:
    curve = ", ".join(f"{p['threshold']:g}: {p['fraction']:.3f}" for p in s["sparsity"]["js"])
    print(f"{s['n_responses']} responses, {s['n_tokens']} tokens | source: {s['source']}")
    if s.get("accuracy") is not None:
        print(f"accuracy of the analysed responses: {s['accuracy']:.3f}")
    print(f"fraction of positions with js >= t: {curve}")
    d = s["shift_definition"]
    print(f"shifted ({d['metric']} >= {d['threshold']:g}): {s['shifted_fraction']:.3f} "
          f"of positions")
    hist = s["position_histogram"]
    print("shifted fraction by relative position (10 bins): " + " ".join(
        f"{sh / a:.2f}" if a else "-" for sh, a in zip(hist["shifted"], hist["all"])))
    if s["top_tokens_by_count"]:
        print("most often shifted: " + ", ".join(
            f"{t['token']!r} x{t['count']}" for t in s["top_tokens_by_count"][:8]))
    ends = s["top_tokens_by_dlogp"]          # ascending mean dlogp
    for label, side in (("lowest", [t for t in ends[:5] if t["mean_dlogp"] < 0]),
                        ("highest", [t for t in ends[::-1][:5] if t["mean_dlogp"] > 0])):
        if side:
            print(f"{label} mean dlogp: " + ", ".join(f"{t['token']!r} {t['mean_dlogp']:+.2f}"
                                                      for t in side))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def run(args) -> int:
    result, paths = analyze_from_args(args)
    _print_summary(result, paths)
    return 0


def analyze_from_args(args) -> tuple[dict, dict]:
    """The analysis `pivotal analyze` (and `pivotal.analyze`) runs: (summary, paths written)."""
    from ..models import load_model

    _check_args(args)
    records = problems = None
    if args.generations:  # check the file before spending time on loading models
        records = read_generation_records(args.generations, args.base, args.rl,
                                          allow_other_model=args.allow_other_model,
                                          limit=args.limit)
    else:
        from .cli_cross_sample import load_problems_from_args
        if not args.data:
            args.task = args.task or DEFAULT_TASK
        problems = load_problems_from_args(args)
    base, tok_base = load_model(args.base, args.device, args.dtype)
    rl, tok_rl = load_model(args.rl, args.device, args.dtype)
    check_same_tokenizer(tok_base, tok_rl, args.base, args.rl)
    progress = not args.quiet

    extra: dict = {"top_k": args.top_k}
    if records is not None:
        responses = responses_from_records(records, tok_base, args.generations)
        models = {r.extra.get("model") for r in responses}
        extra["sampler"] = next(iter(models)) if len(models) == 1 else None
        extra["skipped_records"] = len(records) - len(responses)
        source = f"generations {args.generations}"
    else:
        sampler = rl if args.sampler == "rl" else base
        responses = generate_responses(sampler, tok_base, problems,
                                       max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size, progress=progress)
        extra["sampler"] = args.sampler
        extra["max_new_tokens"] = args.max_new_tokens
        where = f"data {args.data}" if args.data else f"task {args.task}"
        source = f"{where}: greedy responses of the {args.sampler} model"

    df = token_table(base, rl, tok_base, responses, chunk_tokens=args.chunk_tokens,
                     micro_batch=args.micro_batch, top_k=args.top_k, progress=progress)
    if args.cig_hint:  # which tokens the hint makes more or less likely under the RL model
        from .cig import cig_values, hinted_prompt_ids
        hinted = hinted_prompt_ids(problems, responses, args.cig_hint, tok_base)
        df["cig"] = cig_values(rl, responses, hinted, tok_base.pad_token_id or 0, args.micro_batch)
        extra.update({"cig_hint": args.cig_hint, "cig_mean": float(df["cig"].mean()),
                      "cig_abs_mean": float(df["cig"].abs().mean())})
    result = summary(df, responses, base=args.base, rl=args.rl, source=source,
                     shift_threshold=args.shift_threshold, extra=extra)
    return result, write_outputs(args.out, df, responses, result)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="per-token divergence / Δlog p / rank shift between a base and an RL model",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=DEFAULT_BASE, help="the model before RL (default %(default)s)")
    p.add_argument("--rl", required=True, help="the model after RL (spec or checkpoint directory)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--generations", metavar="FILE",
                        help="analyse the responses of a `pivotal eval` generations.jsonl")
    # default None, not the task name: argparse cannot tell an explicit default from an absent one
    source.add_argument("--task", help=f"generate responses to this task's held-out set "
                                       f"(default {DEFAULT_TASK})")
    source.add_argument("--data", metavar="FILE",
                        help="generate responses to the rows of a JSONL/parquet file")
    p.add_argument("--task-options", help="YAML mapping of task options, e.g. '{digits: 2}'")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--answer-format", default="plain",
                   help="plain | gsm8k ('#### N') | text (the field as written, no cleaning)")
    p.add_argument("--limit", type=int, default=100,
                   help="first N problems (or generations records) (default %(default)s)")
    p.add_argument("--allow-other-model", action="store_true",
                   help="accept generations records written by a model other than --base/--rl")
    p.add_argument("--sampler", choices=("base", "rl"), default="rl",
                   help="which model generates the responses for --task/--data "
                        "(default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--micro-batch", type=int, default=16,
                   help="responses per analysis forward pass (default %(default)s)")
    p.add_argument("--chunk-tokens", type=int, default=256,
                   help="positions whose (chunk, vocab) logits are held at once per model "
                        "(default %(default)s)")
    p.add_argument("--top-k", type=int, default=TOP_K,
                   help="k of the top-k mass and top-token columns (default %(default)s)")
    p.add_argument("--shift-threshold", type=float, default=SHIFT_THRESHOLD,
                   help=f"a position counts as shifted when js >= this (default %(default)s; "
                        f"sparsity is reported at {', '.join(map(str, JS_THRESHOLDS))})")
    p.add_argument("--cig-hint", choices=("solution", "template"),
                   help="also score each token's Causal Information Gain under the RL model with "
                        "this hint in the prompt (column 'cig'; `pivotal report --color-by cig`)")
    p.add_argument("--out", default="runs/analyze", help="output directory (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=run)
    return p
