"""`pivotal cross-sample`: accuracy against replacement budget when two models share decoding.

    pivotal cross-sample --rl runs/demo/checkpoints/step_000020 --task arithmetic --limit 100
    pivotal cross-sample --base smollm2-135m --rl ckpt --data $PIVOTAL_DATA_DIR/svamp_test.jsonl \
        --criteria dlogp random --taus-dlogp -1 -0.3 --out runs/xs

Writes <out>/cross_sampling.json (schema: pivotal.analysis.decoding.cross_sampling_sweep) and
<out>/cross_sampling.png (accuracy vs realised budget, a panel per direction, a line per
criterion, horizontal lines for base alone and rl alone).

Also home to the `pivotal eval` test-time-extrapolation options (`add_extrapolation_args`,
`extrapolation_engine_from_args`), which the lead wires into cli.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from .decoding import CRITERIA, DEFAULT_TAUS, DIRECTIONS, PROPOSERS, WHERE

DEFAULT_BASE = "smollm2-135m"


def check_same_tokenizer(tokenizer_base, tokenizer_rl, base_name: str, rl_name: str) -> str:
    """The shared tokenizer fingerprint; ValueError naming both models when the vocabularies
    differ (token-level comparison of two models needs identical token ids)."""
    from ..models import tokenizer_fingerprint

    fb, fr = tokenizer_fingerprint(tokenizer_base), tokenizer_fingerprint(tokenizer_rl)
    if fb != fr:
        raise ValueError(f"the base model '{base_name}' and the rl model '{rl_name}' have "
                         f"different tokenizers (vocabulary fingerprints {fb} vs {fr}); "
                         f"two-model decoding needs the same tokenizer")
    return fb


def _parse_task_options(text: str | dict | None) -> dict:
    if not text:
        return {}
    if isinstance(text, dict):  # from the Python API
        return text
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"--task-options is not valid YAML: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--task-options must be a YAML mapping like '{{digits: 2}}', got {text!r}")
    return value


def load_problems_from_args(args) -> list:
    """Problems from --data FILE (every row) or --task NAME (its held-out set), first --limit."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.data:
        from ..tasks.files import load_problems

        if not Path(args.data).exists():
            raise FileNotFoundError(f"--data file '{args.data}' does not exist")
        problems = load_problems(args.data, args.question_field, args.answer_field,
                                 args.answer_format)
    else:
        from ..tasks import build_task

        try:
            task = build_task(args.task, **_parse_task_options(args.task_options))
        except TypeError as e:  # unknown / missing task option: bad input, not a crash
            raise ValueError(str(e)) from None
        problems = task.eval_problems()
    problems = problems[: args.limit] if args.limit else problems
    if not problems:
        raise ValueError(f"no problems to evaluate from {args.data or 'task ' + args.task}")
    return problems


def _taus_from_args(args) -> dict:
    taus = {}
    for criterion in args.criteria:
        override = getattr(args, f"taus_{criterion}")
        taus[criterion] = list(override) if override else None
    return taus


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_cross_sampling(result: dict, out: str | Path) -> Path:
    """Accuracy vs realised budget: a panel per direction, a line per criterion, horizontal
    lines for base and rl alone. Writes a PNG and returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directions = [d for d in DIRECTIONS if any(p["direction"] == d for p in result["points"])]
    directions = directions or list(DIRECTIONS)
    fig, axes = plt.subplots(1, len(directions), figsize=(6 * len(directions), 4.5), squeeze=False)
    for ax, direction in zip(axes[0], directions):
        for criterion in CRITERIA:
            pts = sorted((p["budget"], p["accuracy"]) for p in result["points"]
                         if p["direction"] == direction and p["criterion"] == criterion)
            if pts:
                ax.plot([b for b, _ in pts], [a for _, a in pts], marker="o", label=criterion)
        ax.axhline(result["accuracy_base"], color="grey", linestyle="--",
                   label=f"base alone ({result['accuracy_base']:.2f})")
        ax.axhline(result["accuracy_rl"], color="black", linestyle=":",
                   label=f"rl alone ({result['accuracy_rl']:.2f})")
        decoder, source = ("base", "rl") if direction == "forward" else ("rl", "base")
        ax.set_title(f"{direction}: decode with {decoder}, replace from {source}", fontsize=10)
        budgets = [p["budget"] for p in result["points"] if p["direction"] == direction]
        ax.set_xlim(0.0, max(budgets + [0.05]) * 1.05)  # budget 0 = the decoder alone
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("budget (fraction of positions replaced)")
        ax.set_ylabel("greedy accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"cross-sampling: base {result['base']} | rl {result['rl']} | "
                 f"{result['n_problems']} problems", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def run(args) -> int:
    result, paths = cross_sample_from_args(args, announce=True)
    print(f"base alone {result['accuracy_base']:.3f}, rl alone {result['accuracy_rl']:.3f}")
    print(f"wrote {' and '.join(map(str, paths))}")
    return 0


def cross_sample_from_args(args, announce: bool = False) -> tuple[dict, list[Path]]:
    """The sweep `pivotal cross-sample` (and `pivotal.cross_sample`) runs: (result, files)."""
    from ..models import load_model
    from .decoding import cross_sampling_sweep

    problems = load_problems_from_args(args)
    base, tok_base = load_model(args.base, args.device, args.dtype)
    rl, tok_rl = load_model(args.rl, args.device, args.dtype)
    check_same_tokenizer(tok_base, tok_rl, args.base, args.rl)
    if announce:
        print(f"pivotal cross-sample: base {args.base} | rl {args.rl} | {len(problems)} problems "
              f"| criteria {' '.join(args.criteria)} | directions {' '.join(args.directions)}",
              flush=True)
    result = cross_sampling_sweep(base, rl, tok_base, problems, _taus_from_args(args),
                                  args.directions, args.max_new_tokens, args.batch_size,
                                  progress=not args.quiet, base_name=args.base, rl_name=args.rl,
                                  seed=args.seed)
    out = Path(args.out)
    write_json_atomic(out / "cross_sampling.json", result)
    return result, [out / "cross_sampling.json", plot_cross_sampling(result, out / "cross_sampling.png")]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cross-sample", help="accuracy vs budget when one model decodes and the other "
                             "replaces chosen tokens (forward / reverse)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=DEFAULT_BASE, help="the model before RL (default %(default)s)")
    p.add_argument("--rl", required=True, help="the model after RL (spec or checkpoint directory)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--task", default="arithmetic",
                        help="task whose held-out set is used (default %(default)s)")
    source.add_argument("--data", help="a JSONL/parquet file: use its rows instead of a task")
    p.add_argument("--task-options", help="YAML mapping of task options, e.g. '{digits: 2}'")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--answer-format", default="plain",
                   help="plain | gsm8k ('#### N') | text (the field as written, no cleaning)")
    p.add_argument("--limit", type=int, default=100, help="first N problems (default 100)")
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA))
    p.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    for criterion in CRITERIA:
        default = (DEFAULT_TAUS.get(criterion)
                   or "the realised budgets of the dlogp points (a matched budget)")
        p.add_argument(f"--taus-{criterion}", type=float, nargs="+", metavar="TAU",
                       help=f"thresholds for {criterion} (default: {default})")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion")
    p.add_argument("--out", default="runs/cross_sample", help="output directory")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=run)
    return p


# ----------------------------------------------------------------------------------------------
# `pivotal eval --extrapolate-base ...`
# ----------------------------------------------------------------------------------------------

def add_extrapolation_args(parser: argparse.ArgumentParser) -> None:
    """Options for test-time extrapolation [Δlog p paper, arXiv:2603.22117] in `pivotal eval`."""
    g = parser.add_argument_group(
        "test-time extrapolation (the evaluated model is the rl model; Δlog p paper). The "
        "released settings: --gamma 0.05 --tau -0.3, or --gamma 0.1 --tau -0.4, with "
        "eval.top_p=0.7")
    g.add_argument("--extrapolate-base", metavar="SPEC",
                   help="base model spec: at selected positions draw the token from "
                        "z = (1+gamma) log p_rl - gamma log p_base")
    g.add_argument("--extrapolate-from", choices=PROPOSERS, default="base",
                   help="which model proposes each token and has its token tested: 'base' (the "
                        "released rule) or 'rl' (the RL model's own token; rarely fires)")
    g.add_argument("--gamma", type=float, default=0.05, help="extrapolation strength (0.05-0.1)")
    g.add_argument("--tau", type=float, default=-0.3,
                   help="select positions whose proposed token has Δlog p <= tau (-0.3 to -0.4)")
    g.add_argument("--extrapolate-where", choices=WHERE, default="selected",
                   help="'selected' (Δlog p <= tau) or 'all' positions")
    g.add_argument("--extrapolate-top-n", type=int, default=50,
                   help="candidates: the base model's top-n tokens (0 = whole vocabulary)")


def extrapolation_engine_from_args(args, rl_model, tokenizer):
    """An ExtrapolationEngine when --extrapolate-base was given, else None.

    The base model is loaded with pivotal.models.load_model on the rl model's device and dtype;
    ValueError when its tokenizer differs from the rl model's."""
    spec = getattr(args, "extrapolate_base", None)
    if not spec:
        return None
    from ..models import load_model
    from .decoding import ExtrapolationEngine

    param = next(rl_model.parameters())
    dtype = str(param.dtype).removeprefix("torch.")
    base, tok_base = load_model(spec, str(param.device), dtype)
    check_same_tokenizer(tok_base, tokenizer, spec, getattr(args, "model", None) or "rl")
    return ExtrapolationEngine(base, rl_model, tokenizer, gamma=args.gamma, tau=args.tau,
                               where=args.extrapolate_where, top_n=args.extrapolate_top_n,
                               propose=args.extrapolate_from)
