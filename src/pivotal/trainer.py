"""The RLVR training loop: rollout -> reward -> advantage -> credit inputs -> policy update.

One training step samples `prompts_per_step x group_size` responses and scores them (the sampling
rounds, `pivotal.sampling`), gathers what the configured methods read (reference log-probs,
divergences), computes (B, T) advantages, then runs the optimizer steps of
`pivotal.update.PolicyUpdate`, whose loss is the one pure objective of `pivotal.algos.objective`.
Every method is a registry entry resolved at start-up; this file names none of them.

The transformers engine shares the policy's weights (no copy, sync is free); the vLLM engine holds
its own copy, refreshed in place before the next rollout after every update (`time_sync`). The
sampler's own log-probs stay in `batch.sampler_logprobs` for the sampler/trainer gap metric and
truncated importance sampling (`algo.tis_cap`).

Data parallelism (`torchrun`, `pivotal.distributed`): every rank samples and scores its share of
each step's prompts (a rank-disjoint slice of the stream) with its own colocated engine; the update
reduces every normaliser over ranks. Under FSDP2 the engine and the no-grad policy passes read a
whole replica of the policy, refreshed from the shards one tensor at a time after every update.
Rank 0 alone prints and writes; the ranks agree on every stop and save at step boundaries.

The models themselves (policy, LoRA adapters, wrapper, replica, reference) come from
`pivotal.policy`; with LoRA, checkpoints hold the adapters and the end of a run writes the merged
model (`pivotal.export`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import checkpoint_sharded as sharded
from .allocator import retain_freed_memory
from .batch import RolloutBatch
from .callbacks import CallbackList
from .config import Config, resolve_config, save_config
from .distributed import (
    check_same_config,
    copy_full_parameters,
    init_runtime,
    is_sharded,
    rank_device,
    shutdown,
    unwrapped,
)
from .errors import CheckpointError, NonFiniteError
from .evaluation import evaluate, merge_eval_summaries
from .export import export_checkpoint
from .frozen import frozen_module, frozen_state_dict, load_frozen_state_dict
from .hints import build_hint_stage
from .interrupts import GracefulInterrupts, RunInterrupted
from .labeling import build_active_labels
from .metrics import (
    MetricsLogger,
    StepState,
    format_before_after,
    format_eval,
    format_step,
    gap_warning,
    merge_rank_metrics,
)
from .plots import plot_run
from .policy import build_policy_models, reference_ratchets
from .reproducibility import use_deterministic_kernels
from .rewards import build_scorer
from .rollout import build_engine
from .safety import CheckpointClock, StepChecks, check_finite_weights
from .sampling import SamplingRounds
from .step_inputs import StepInputs
from .tasks import build_task
from .update import PolicyUpdate, seed_for, trainable_parameters
from .validation import validate_config

log = logging.getLogger("pivotal.trainer")


class Trainer(SamplingRounds):
    """The loop. `task`, `scorer`, `model`/`tokenizer` and `callbacks` are what the Python API
    (`pivotal.api.Trainer`) passes in place of what the config names; the CLI passes none."""

    def __init__(self, cfg: Config, progress: bool = True, *, task=None, scorer=None, model=None,
                 tokenizer=None, callbacks=()):
        resolve_config(cfg)
        validate_config(cfg)  # a no-op for a config load_config already checked, unchanged since
        self.cfg, self.progress = cfg, progress
        self.runtime = rt = init_runtime(cfg.model.device, cfg.dist.timeout_s)
        check_same_config(rt, cfg.to_dict())
        self.progress = progress and rt.is_main
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        if cfg.train.retain_freed_memory:
            retain_freed_memory()
        if cfg.train.deterministic:
            use_deterministic_kernels()
        torch.manual_seed(cfg.train.seed)
        self.task = task if task is not None else build_task(cfg.task.name, **cfg.task.options)
        self.scorer = scorer if scorer is not None else build_scorer(
            cfg.reward.components, cfg.reward.extract, cfg.reward.timeout_s)
        self.callbacks = CallbackList(callbacks)
        models = build_policy_models(cfg, rt, rank_device(cfg.model.device, rt), model, tokenizer)
        self.model, self.tokenizer, self.adapters = models.model, models.tokenizer, models.adapters
        self.auxiliary, self.trained, self.whole_policy = models.auxiliary, models.trained, models.whole_policy
        self.ref_model, self.shift_monitor = models.ref_model, models.shift_monitor
        self.device = next(self.model.parameters()).device
        self.active_labels = build_active_labels(cfg, self.scorer, self.whole_policy)
        self.engine = build_engine(self.whole_policy, self.tokenizer, cfg.rollout,
                                   seed_for(cfg.train.seed, rt.rank) if rt.active else cfg.train.seed,
                                   output_dir=str(self.out_dir), runtime=rt)
        self.engine_stale = False  # the policy changed since the engine last took its weights
        self.hints = build_hint_stage(cfg, self.engine, self.tokenizer, self.out_dir, rt.is_main)
        self.optimizer = torch.optim.AdamW(trainable_parameters(self.trained),
                                           lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay,
                                           fused=cfg.optim.fused_adamw or None)
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.step_inputs = StepInputs(cfg, self.whole_policy, self.ref_model, self.shift_monitor, rt)
        self.update = PolicyUpdate(cfg, self.model, self.optimizer, self.scheduler, self.auxiliary,
                                   trained=self.trained, runtime=rt)
        self.step = 0
        self.cursor = 0  # index of the next training problem
        self.labels_queried = 0  # true labels read for training (active labels)
        self.history: dict = {}  # before/after evaluations
        self.eval_problems = self.task.eval_problems()[: cfg.eval.size]
        self._interrupts: GracefulInterrupts | None = None  # set while train() runs

    def close(self) -> None:
        """Stop what the engine started (a local vLLM server) and leave the process group."""
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:
            close_engine()
        shutdown(self.runtime)

    # ------------------------------------------------------------------ one step
    def prepare(self, batch: RolloutBatch) -> dict:
        """Add what the update reads to a scored batch, in place (`pivotal.step_inputs`)."""
        return self.step_inputs(batch)

    def train_step(self) -> dict:
        """One step; its metrics over every rank's rows."""
        metrics, rows = self._train_step()
        if self.runtime.active:
            metrics = merge_rank_metrics(self.runtime.gather_objects((metrics, rows)))
        if self.runtime.is_main and (warning := gap_warning(self.cfg.rollout, metrics, self.step + 1)):
            log.warning(warning)
        return metrics

    def _train_step(self) -> tuple[dict, int]:
        state = StepState()
        rt = self.runtime
        self.model.eval()
        t_start = time.perf_counter()
        with self._abandonable():  # nothing has changed yet that the last step's state lacks
            batch, metrics = self.rollout(state)
        if not rt.all_true(batch.size > 0):  # on any rank: no update anywhere
            log.warning("step %d: every group's rewards agree%s; no update", self.step,
                        " on some rank" if rt.active else "")
            return {**metrics, "skipped": 1, **state.timing_metrics()}, batch.size
        t_train = time.perf_counter()
        metrics.update(self.prepare(batch))
        batch, share = self.step_inputs.trained_rows(batch)  # e.g. PSR: the correct rows only
        metrics.update(share)
        if not rt.all_true(batch.size > 0):
            log.warning("step %d: the advantage estimator trains on none of the rows%s; no update",
                        self.step, " on some rank" if rt.active else "")
            return {**metrics, "skipped": 1, **state.timing_metrics()}, batch.size
        self.last_batch = batch  # kept for inspection and the benchmarks
        if not rt.all_true(bool(torch.isfinite(batch.rewards).all()
                                and torch.isfinite(batch.advantages).all())):
            log.warning("step %d: non-finite rewards or advantages; no update", self.step)
            return {**metrics, "skipped": 1, "nonfinite": "reward", "optimizer_steps": 0,
                    **state.timing_metrics()}, batch.size
        metrics.update(self.update(batch, self.step))
        if not metrics["optimizer_steps"]:
            metrics["skipped"] = 1
        self.engine_stale = True
        state.seconds["train"] += time.perf_counter() - t_train
        total = time.perf_counter() - t_start
        n_tokens = batch.response_mask.sum().item()
        metrics.update({"lr": self.scheduler.get_last_lr()[0], "tokens": n_tokens,
                        "tokens_per_s": n_tokens / max(total, 1e-9), "time_step": total,
                        **state.timing_metrics(), **state.sync_metrics})
        return metrics, batch.size

    def ratchet_reference(self) -> int:
        """Make the frozen reference the current policy (OWPO's ratchet), copying weights in place
        (no second model, nothing leaks across ratchets). Returns 1 if done, 0 without one."""
        if self.ref_model is None:
            return 0
        copy_full_parameters(self.model, frozen_module(self.ref_model))
        return 1

    def evaluate(self, tag: str = "eval") -> dict:
        """Greedy held-out accuracy; with data parallelism each rank answers every world-th
        problem and rank 0 writes all records (in rank order)."""
        e, rt = self.cfg.eval, self.runtime
        self.sync_engine()
        mine = self.eval_problems[rt.rank::rt.world]
        summary, records = evaluate(
            self.whole_policy, self.tokenizer, mine, n_samples=1,
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
            instruction=self.cfg.task.instruction, system_prompt=self.cfg.task.system_prompt,
            seed=self.cfg.train.seed, progress=self.progress,
            engine=self.engine) if mine else ({"num_problems": 0}, [])
        if rt.active:
            parts = rt.gather_objects((summary, records))
            summary = merge_eval_summaries([part[0] for part in parts])
            records = [r for _, rank_records in parts for r in rank_records]
        if rt.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / f"eval_{tag}.jsonl", "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
        self.callbacks.evaluate(tag, summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Checkpoint the current step atomically (never from non-finite weights): one directory
        a plain `from_pretrained` loads in one process (with LoRA: peft's adapter directory), DCP
        shards from every rank with several (with LoRA: of the trainable tensors only)."""
        rt = self.runtime
        if not rt.active:
            check_finite_weights([self.model, *self.auxiliary], self.step)
        else:  # every rank checks its shards; all refuse if one finds a non-finite value
            try:
                check_finite_weights([self.model, *self.auxiliary], self.step)
                problem = None
            except NonFiniteError as e:
                problem = f"rank {rt.rank}: {e}"
            problems = [p for p in rt.gather_objects(problem) if p]
            if problems:
                raise NonFiniteError(problems[0])
        state = {"step": self.step, "cursor": self.cursor, "scheduler": self.scheduler.state_dict(),
                 "history": self.history, "config": self.cfg.to_dict(),
                 "labels_queried": self.labels_queried}
        if self.active_labels is not None:  # a stateful selector's state (CARE's probes)
            state["label_selector"] = self.active_labels.state_dict()
        if self.ref_model is not None and reference_ratchets(self.cfg):  # the reference moved: keep it
            state["reference"] = frozen_state_dict(self.ref_model)  # sharded: all ranks gather
        if rt.active:  # the auxiliary heads are in the DCP shards with the policy
            return sharded.save_sharded(self.ckpt_dir, self.step, unwrapped(self.trained),
                                        self.optimizer, state, {"rng": ckpt.rng_state()},
                                        self.tokenizer, rt, keep=self.cfg.train.keep_checkpoints,
                                        trainable_only=self.adapters is not None)
        state.update({"optimizer": self.optimizer.state_dict(), "rng": ckpt.rng_state()})
        for aux in self.auxiliary:
            state[aux.checkpoint_key] = aux.checkpoint_state()
        # with LoRA the adapters alone (peft's adapter directory); else the whole policy
        saved = self.adapters.peft_model if self.adapters is not None else self.model
        return ckpt.save_checkpoint(self.ckpt_dir, self.step, saved, self.tokenizer, state,
                                    keep=self.cfg.train.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns whether one was found. A sharded
        checkpoint loads at any world size (DCP reshards); a rank the checkpoint has no state for
        starts a new sampling stream."""
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        rt = self.runtime
        if sharded.is_sharded_checkpoint(path):
            state, own = sharded.load_sharded(path, unwrapped(self.trained), self.optimizer, rt,
                                              trainable_only=self.adapters is not None)
            if own is not None:
                ckpt.set_rng_state(own["rng"])
            else:
                log.warning("%s was written by fewer ranks: rank %d starts a new sampling stream",
                            path, rt.rank)
        else:
            if is_sharded(self.trained):
                raise CheckpointError(f"{path} is a single-process checkpoint; resume it in one "
                                      f"process or with dist.strategy=ddp")
            state = ckpt.load_trainer_state(path)
            if self.adapters is not None:
                self.adapters.load(path)
            else:
                ckpt.load_model_weights(path, self.model, self.cfg.model.name)
            for aux in self.auxiliary:
                aux.load_checkpoint_state(state.get(aux.checkpoint_key), path)
            self.optimizer.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"])
        if "reference" in state and self.ref_model is not None:
            load_frozen_state_dict(self.ref_model, state["reference"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.cursor = state["step"], state["cursor"]
        self.history = state.get("history", {})
        self.labels_queried = state.get("labels_queried", 0)
        if self.active_labels is not None:
            self.active_labels.load_state_dict(state.get("label_selector", {}))
        self.engine_stale = True
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    # ------------------------------------------------------------------ the loop
    def _after_step(self, metrics: dict) -> None:
        """Held-out evaluation and reference ratchets due after step `self.step`."""
        cfg = self.cfg
        if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
            ev = self.evaluate(f"step{self.step}")
            metrics.update({f"eval_{k}": v for k, v in ev.items()})
            if ev["greedy_lenient"] > self.history.get("best_eval", -1.0):
                self.history["best_eval"] = ev["greedy_lenient"]
                if cfg.algo.reference_ratchet_on_eval:
                    metrics["reference_ratchet"] = self.ratchet_reference()
        if cfg.algo.reference_ratchet_every and self.step % cfg.algo.reference_ratchet_every == 0:
            metrics["reference_ratchet"] = self.ratchet_reference()

    def _abandonable(self):
        """Where an interrupt may abandon work at once. With several ranks, nowhere: a rank that
        left a rollout early would break the pairing of collectives; they stop at the next step
        boundary, where they agree (`_stop_signal`)."""
        if self._interrupts is None or self.runtime.active:
            return contextlib.nullcontext()
        return self._interrupts.abandonable()

    def _stop_signal(self, interrupts: GracefulInterrupts) -> int | None:
        """The signal that stops the run, as every rank agrees (the highest any rank received)."""
        if not self.runtime.active:
            return interrupts.requested
        return self.runtime.max_int(interrupts.requested or 0) or None

    def _timed_save(self, metrics: dict | None = None) -> Path:
        """Save, and report the checkpoint's cost (seconds, GB) in `metrics` and in one line."""
        t0 = time.perf_counter()
        path = self.save_checkpoint()
        seconds, gb = time.perf_counter() - t0, ckpt.directory_bytes(path) / 1e9
        if metrics is not None:
            metrics.update({"checkpoint_seconds": seconds, "checkpoint_gb": gb})
        if self.runtime.is_main:
            log.info("checkpoint %s: %.2f GB in %.1f s", path, gb, seconds)
        self._saved_step = self.step
        self._clock.saved()
        self.callbacks.checkpoint(path)
        return path

    def train(self, resume: bool = False) -> dict:
        """Train to `train.steps`. On SIGINT / SIGTERM (`pivotal.interrupts`) it saves the last
        completed step and raises RunInterrupted, whose `signum` gives the exit status."""
        cfg, rt = self.cfg, self.runtime
        resumed = self.resume() if resume else False
        if rt.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        logger = (MetricsLogger(self.out_dir, cfg.train.tensorboard, cfg.train.wandb,
                                resume_step=self.step if resumed else None, run_config=cfg.to_dict())
                  if rt.is_main else None)
        say = (tqdm.write if self.progress else log.info) if rt.is_main else (lambda *_: None)
        interrupts = GracefulInterrupts(tuple(cfg.train.interrupt_signals))
        checks = StepChecks(cfg.train.max_bad_steps, cfg.train.warn_zero_variance_steps, say)
        self._clock = CheckpointClock(cfg.train.save_every, cfg.train.save_every_minutes)
        self._saved_step = self.step if resumed else None
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress)
        stop = None
        with interrupts.installed():
            self._interrupts = interrupts
            try:
                if cfg.train.eval_before_after and "before" not in self.history:
                    with self._abandonable():
                        self.history["before"] = self.evaluate("before")
                    say(format_eval("before", self.history["before"]))
                while (self.step < cfg.train.steps and not rt.max_int(int(bool(self.callbacks.stop_requested)))
                       and (stop := self._stop_signal(interrupts)) is None):
                    point = (self.cursor, self.labels_queried, ckpt.rng_state())
                    try:
                        metrics = self.train_step()
                    except RunInterrupted:  # mid-rollout: back to the end of the last step
                        self.cursor, self.labels_queried = point[0], point[1]
                        ckpt.set_rng_state(point[2])
                        stop = interrupts.requested
                        break
                    self.step += 1
                    self._after_step(metrics)
                    checks.after_step(self.step, metrics)
                    stop = self._stop_signal(interrupts)
                    if rt.max_int(int(self._clock.due(self.step))) or stop is not None:
                        self._timed_save(metrics)
                    if logger is not None:
                        logger.log(self.step, metrics)
                    say(format_step(self.step, cfg.train.steps, metrics))
                    bar.update(1)
                    self.callbacks.step_end(self.step, metrics)
                if stop is None and cfg.train.eval_before_after and "after" not in self.history:
                    with self._abandonable():
                        self.history["after"] = self.evaluate("after")
                    say(format_eval("after", self.history["after"]))
            except RunInterrupted:
                stop = interrupts.requested  # an evaluation was abandoned: the save below is left
            finally:
                bar.close()
                if logger is not None:
                    logger.close()
                self._interrupts = None
            if self.step > 0 and self._saved_step != self.step:
                self._timed_save()
            if stop is not None:
                where = ckpt.latest_checkpoint(self.ckpt_dir)
                say(f"pivotal: stopped after step {self.step}/{cfg.train.steps}; checkpoint "
                    f"{where or 'none (no step completed)'}; resume with: pivotal train "
                    f"{shlex.quote(str(self.out_dir / 'config.yaml'))} --resume")
                raise RunInterrupted(stop)
        final = ckpt.latest_checkpoint(self.ckpt_dir)
        summary = {"steps": self.step, "final_checkpoint": str(final), **self.history,
                   **({"stopped_by": self.callbacks.stop_requested} if self.callbacks.stop_requested else {})}
        self.callbacks.train_end(summary)
        if rt.active or self.adapters is not None:  # the final policy as one plain HF directory
            if rt.is_main and final is not None:
                say(f"consolidated export: {export_checkpoint(final)}")
            rt.barrier()
        if not rt.is_main:
            return summary
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            say(f"training curves: {plot_run(self.out_dir)}")
        except ImportError:
            log.warning("matplotlib is not installed; no curves.png")
        except ValueError as e:  # e.g. every step was skipped: nothing to plot, the run still ends
            log.warning("no curves.png: %s", e)
        if "before" in self.history and "after" in self.history:
            say(format_before_after(self.history["before"], self.history["after"],
                                    len(self.eval_problems)))
        return summary
