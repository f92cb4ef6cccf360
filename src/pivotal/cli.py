"""Command line: `pivotal train | eval | analyze | cross-sample | report | export | plot | config`.

    pivotal train                                   # the built-in demo (SmolLM2-135M, arithmetic)
    pivotal train configs/gsm8k.yaml optim.lr=2e-6  # a config file plus dotted overrides
    pivotal train configs/demo.yaml --resume        # continue from the last good checkpoint
    pivotal eval --model runs/demo/checkpoints/step_000020 --data $PIVOTAL_DATA_DIR/svamp_test.jsonl
    pivotal eval --model runs/demo/checkpoints/step_000030 --extrapolate-base smollm2-135m
    pivotal analyze --rl runs/demo/checkpoints/step_000030 --out runs/analyze   # per-token shift
    pivotal cross-sample --rl runs/demo/checkpoints/step_000030 --out runs/analyze
    pivotal report runs/analyze --cross-sampling runs/analyze/cross_sampling.json
    pivotal export runs/dp/checkpoints/step_000020  # a sharded or LoRA checkpoint as one HF dir
    pivotal plot runs/demo                          # training curves as runs/demo/curves.png
    pivotal config --keys                           # every key, its default and help text
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .analysis import cli_analyze, cli_cross_sample, cli_report
from .analysis.cli_cross_sample import add_extrapolation_args, extrapolation_engine_from_args
from .config import ConfigError, describe_keys, load_config
from .errors import PivotalError, RanksLost
from .interrupts import RunInterrupted, exit_status, in_main_thread
from .registry import UnknownNameError


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """First positional that is not 'k=v' is the config file; the rest are overrides."""
    path, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif path is None:
            path = item
        else:
            raise ConfigError(f"unexpected argument '{item}': overrides look like section.key=value")
    return path, overrides


def _launch_ranks(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun with `nproc` ranks on this machine, each running
    `pivotal train` with the same arguments (less --nproc). Signals then reach torchrun, which
    passes them to every rank."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "pivotal", *rest]
    print("pivotal: launching " + " ".join(command[1:]), flush=True)
    os.execv(sys.executable, command)


def cmd_train(args) -> int:
    from .trainer import Trainer

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_ranks(args.nproc, args.argv)
    path, overrides = _split_args(args.items)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(path, overrides)
    print(f"pivotal train: model {cfg.model.name} on {cfg.model.device} | task {cfg.task.name} | "
          f"{cfg.algo.advantage} + {cfg.algo.loss} ({cfg.algo.aggregation}), credit "
          f"{cfg.algo.credit} | rollout engine {cfg.rollout.engine} | {cfg.train.steps} steps of "
          f"{cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} | output {cfg.train.output_dir}",
          flush=True)
    trainer = Trainer(cfg, progress=not args.quiet)
    try:
        trainer.train(resume=args.resume)
    except RunInterrupted as stop:  # saved, and the line saying where was printed
        return exit_status(stop.signum)
    except (RuntimeError, OSError) as e:
        if not trainer.runtime.active or isinstance(e, PivotalError):
            raise
        raise RanksLost(trainer.runtime.rank, trainer.step, cfg.train.output_dir, e) from e
    finally:
        trainer.close()
    return 0


def cmd_eval(args) -> int:
    path, overrides = _split_args(args.items)
    summary = run_eval(args, load_config(path, overrides))
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    print(f"wrote {out / 'eval_summary.json'} and {out / 'generations.jsonl'}")
    if summary.get("interrupted"):  # the rows answered before the interrupt are kept
        print(f"pivotal: eval interrupted ({summary['interrupted']}) after "
              f"{summary['num_responses']} responses; kept them", file=sys.stderr)
        return exit_status(getattr(signal, summary["interrupted"]))
    return 0


def run_eval(args, cfg) -> dict:
    """`pivotal eval`'s work (also `pivotal.evaluate`): evaluate, write the outputs into
    args.out, return the summary. args.data: a file path, or rows (`pivotal.tasks.dataset`)."""
    from .evaluation import evaluate, write_eval_outputs
    from .models import load_model, tokenizer_fingerprint
    from .rollout import build_engine
    from .tasks import build_task
    from .tasks.files import load_problems, rows_to_problems

    if cfg.train.retain_freed_memory:
        from .allocator import retain_freed_memory
        retain_freed_memory()
    if args.model:
        cfg.model.name = args.model
    if isinstance(args.data, (str, os.PathLike)):  # a whole file: every row (up to --limit)
        problems = load_problems(args.data, args.question_field, args.answer_field,
                                 args.answer_format)[: args.limit]
    elif args.data is not None:  # rows from Python (a list of dicts, a datasets.Dataset)
        from .tasks.dataset import source_rows
        problems = rows_to_problems(source_rows(args.data, "data"), "data", args.question_field,
                                    args.answer_field, args.answer_format)[: args.limit]
    else:
        task = build_task(cfg.task.name, **cfg.task.options)
        problems = task.eval_problems()[: cfg.eval.size if args.limit is None else args.limit]
    model, tokenizer = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype,
                                  cfg.model.cache_dir)
    extrapolation = extrapolation_engine_from_args(args, model, tokenizer)  # None: plain decoding
    if extrapolation is not None and cfg.rollout.engine in ("vllm", "vllm_server"):
        print("note: extrapolated decoding combines two models' logits token by token, which only "
              f"the transformers engine does; rollout.engine={cfg.rollout.engine} is not used for it",
              file=sys.stderr)
    # A local vLLM server (rollout.engine=vllm_server) keeps its log and weights under --out, and
    # is stopped however the evaluation ends.
    engine = extrapolation or build_engine(model, tokenizer, cfg.rollout, cfg.train.seed,
                                           output_dir=args.out)
    try:
        summary, records = evaluate(model, tokenizer, problems, n_samples=cfg.eval.n_samples,
                                    temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                    max_new_tokens=cfg.eval.max_new_tokens,
                                    batch_size=cfg.eval.batch_size,
                                    instruction=cfg.task.instruction,
                                    system_prompt=cfg.task.system_prompt, seed=cfg.train.seed,
                                    engine=engine, keep_partial=True)
    finally:
        close_engine = getattr(engine, "close", None)
        if close_engine is not None:
            close_engine()
    if extrapolation is not None:
        summary["extrapolation"] = {"base": args.extrapolate_base, "gamma": args.gamma,
                                    "tau": args.tau, "where": args.extrapolate_where,
                                    "propose": args.extrapolate_from, "top_p": cfg.eval.top_p,
                                    "top_n": args.extrapolate_top_n,
                                    "extrapolated_positions": extrapolation.replaced,
                                    "changed_positions": extrapolation.changed,
                                    "positions": extrapolation.positions,
                                    "budget": extrapolation.budget}
    summary["model"] = cfg.model.name
    summary["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    summary["num_responses"] = len(records)
    for record in records:  # so that `pivotal analyze` can tell which model wrote them
        record["model"] = cfg.model.name
    write_eval_outputs(Path(args.out), summary, records)
    return summary


def cmd_export(args) -> int:
    from .checkpoint import latest_checkpoint
    from .export import export_checkpoint, exportable

    path = Path(args.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if not exportable(path):  # a run directory or its checkpoints/: the newest one
        for root in (path / "checkpoints", path):
            found = latest_checkpoint(root)
            if found is not None and exportable(found):
                path = found
                break
    out = export_checkpoint(path, args.out)
    print(f"wrote the consolidated policy of {path} to {out} (from_pretrained and "
          f"`pivotal eval --model {out}` load it)")
    return 0


def cmd_plot(args) -> int:
    from .plots import plot_run
    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_config(args) -> int:
    if args.keys:
        print(describe_keys())
        return 0
    path, overrides = _split_args(args.items)
    import yaml
    print(yaml.safe_dump(load_config(path, overrides).to_dict(), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pivotal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train with RLVR (no arguments: the built-in demo)")
    t.add_argument("items", nargs="*", help="[config.yaml] [section.key=value ...]")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--output-dir", help="shorthand for train.output_dir=...")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--nproc", type=int, help="train with N data-parallel ranks on this machine "
                   "(launches torchrun --standalone --nproc-per-node N)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="greedy / avg@n / pass@k / maj@n on held-out problems")
    e.add_argument("items", nargs="*", help="[config.yaml] [section.key=value ...]")
    e.add_argument("--model", help="model spec or checkpoint directory (model.name)")
    e.add_argument("--data", help="a JSONL/parquet file: evaluate on all of its rows")
    e.add_argument("--question-field", default="question")
    e.add_argument("--answer-field", default="answer")
    e.add_argument("--answer-format", default="plain",
                   help="plain | gsm8k ('#### N') | text (the field as written, no cleaning)")
    e.add_argument("--limit", type=int, help="evaluate the first N problems (default eval.size)")
    e.add_argument("--out", default="runs/eval", help="output directory")
    e.set_defaults(fn=cmd_eval)

    add_extrapolation_args(e)

    # token-level diagnostics (pivotal.analysis): each module registers its own subcommand
    for module in (cli_analyze, cli_cross_sample, cli_report):
        module.add_parser(sub)

    x = sub.add_parser("export", help="a sharded (data-parallel) or LoRA checkpoint as one plain "
                       "Hugging Face model directory")
    x.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    x.add_argument("--out", help="output directory (default: into a sharded checkpoint itself; "
                   "<checkpoint>/merged for LoRA)")
    x.set_defaults(fn=cmd_export)

    pl = sub.add_parser("plot", help="training curves of a run as a PNG")
    pl.add_argument("run_dir", help="a training output directory (with metrics.jsonl)")
    pl.add_argument("--out", help="PNG path (default <run_dir>/curves.png)")
    pl.set_defaults(fn=cmd_plot)

    c = sub.add_parser("config", help="print the resolved config, or every key with --keys")
    c.add_argument("items", nargs="*")
    c.add_argument("--keys", action="store_true")
    c.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # outside training (which saves first) SIGTERM ends a command like Ctrl-C: one line, no traceback
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread() else None
    try:
        return args.fn(args)
    except _Terminated:
        print("pivotal: terminated", file=sys.stderr)
        return exit_status(signal.SIGTERM)
    except KeyboardInterrupt:
        print("pivotal: interrupted", file=sys.stderr)
        return exit_status(signal.SIGINT)
    except ConfigError as e:
        if args.debug:
            raise
        print(f"pivotal: config error: {e}", file=sys.stderr)
        return 2
    except RanksLost as e:  # another rank died or hung: no traceback, say what and where
        print(f"pivotal: {e}", file=sys.stderr)
        return 1
    except (PivotalError, UnknownNameError, FileNotFoundError, ValueError, ImportError) as e:
        # bad input (a file, a row, a name): the message says which; --debug shows the traceback
        if args.debug:
            raise
        print(f"pivotal: error: {e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside training: handled like Ctrl-C (work stops cleanly), reported as SIGTERM."""

    signal_name = "SIGTERM"


def _terminate(signum, frame):
    raise _Terminated()


if __name__ == "__main__":
    sys.exit(main())
