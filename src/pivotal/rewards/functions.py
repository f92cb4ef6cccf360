"""Reward functions a Python caller passes (`pivotal.Trainer(reward_funcs=[...])`), in either of
two calling conventions, each detected from the function's signature:

  TRL's, once per batch:   f(completions, **kwargs) -> list[float | None]
      called as f(prompts=[...], completions=[...], **columns), where `columns` are the
      dataset's columns (each a list over the batch, one entry per completion; a task without
      columns gives `question` and `answer`). None means "not applicable to this sample".
      Detected when the first parameter is named `completions`, or when the function takes
      **kwargs and has no parameter named `completion`.
  pivotal's, per sample:   f(completion: str, problem: Problem) -> float | None
      (`problem.question`, `problem.answer`, `problem.meta["columns"]`); anything else with two
      positional parameters. Registered names ("math", "format") and "module:function" specs
      are of this kind.

`async def` functions (or ones returning awaitables) run concurrently: every async call of a
batch, over all functions (and over samples for per-sample ones), is awaited together on one
event loop in a background thread, so it also works where a loop is already running (Jupyter).

The reward of a sample is sum_i w_i * r_i over the functions that returned a number for it; one
for which all returned None scores 0 (with a warning for the batch). As with
configured components, a function that raises or overruns `reward.timeout_s` (per call: one batch,
or one sample) scores 0 with a logged warning; one that returns the wrong number of values or a
non-number raises RewardError naming it: that is a bug to fix, not a sample to skip.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pivotal.errors import RewardError
from pivotal.rewards.scorer import RewardScorer, _call_with_timeout
from pivotal.rewards.verifiers import load_reward

logger = logging.getLogger("pivotal.rewards")

BATCH, SAMPLE = "batch", "sample"


def calling_convention(fn: Callable) -> str:
    """BATCH (TRL: f(completions, **kwargs)) or SAMPLE (pivotal: f(completion, problem))."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise RewardError(f"reward function {function_name(fn)}: its signature cannot be read; "
                          "wrap it in a def") from None
    names = [p.name for p in params]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional and positional[0].name == "completions":
        return BATCH
    if "completion" in names:
        return SAMPLE
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return BATCH
    if len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params):
        return SAMPLE
    raise RewardError(f"reward function {function_name(fn)}{inspect.signature(fn)}: neither "
                      "f(completions, **kwargs) (TRL's, once per batch) nor f(completion, "
                      "problem) (one sample)")


def function_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _is_async(fn: Callable) -> bool:
    """An async def function, or an object whose __call__ is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass
class RewardFunction:
    fn: Callable
    weight: float
    name: str
    convention: str
    is_async: bool


class _BackgroundLoop:
    """One event loop in a daemon thread, started on first use, that runs every async call."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def gather(self, awaitables: list, timeout_s: float | None) -> list:
        """Each awaitable's result or exception; a TimeoutError for each one still running."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="pivotal-async-rewards",
                                 daemon=True).start()
        tasks: list = []

        async def run_all():
            tasks.extend(asyncio.ensure_future(a) for a in awaitables)
            await asyncio.wait(tasks, timeout=timeout_s if timeout_s and timeout_s > 0 else None)
            out = []
            for t in tasks:
                if not t.done():
                    t.cancel()
                    out.append(TimeoutError(f"did not finish within {timeout_s} s"))
                else:
                    out.append(t.exception() or t.result())
            return out

        return asyncio.run_coroutine_threadsafe(run_all(), self._loop).result()


class FunctionRewards:
    """The scorer of a Trainer given reward functions: same `score(completions, problems)` as
    RewardScorer. `correct` stays the task's ground-truth verdict (`truth`), as the step's
    accuracy and the held-out evaluation report it."""

    def __init__(self, funcs: Sequence, truth: RewardScorer, timeout_s: float | None = 10.0):
        if not funcs:
            raise RewardError("reward_funcs is empty: give at least one function")
        self.functions: list[RewardFunction] = []
        for item in funcs:
            fn, weight = item if isinstance(item, tuple) else (item, 1.0)
            if isinstance(fn, str):  # a registered reward or "module:function"
                fn = load_reward(fn)
            if not callable(fn):
                raise RewardError(f"reward_funcs: {fn!r} is not callable")
            name = function_name(fn)
            taken = [f.name for f in self.functions]
            if name in taken:
                name = f"{name}_{taken.count(name) + 1}"
            self.functions.append(RewardFunction(fn, float(weight), name, calling_convention(fn),
                                                 _is_async(fn)))
        self.truth, self.timeout_s = truth, timeout_s
        self._loop = _BackgroundLoop()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]

    def score(self, completions: list[str], problems: list) -> list[dict[str, Any]]:
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        raw: dict[str, list] = {}
        pending: list[tuple[str, int | None, Any]] = []  # (function, sample or None, awaitable)
        for f in self.functions:
            if f.convention == BATCH:
                value = self._call(f, lambda f=f: f.fn(**batch_kwargs(completions, problems)))
                if inspect.isawaitable(value):
                    pending.append((f.name, None, value))
                else:
                    raw[f.name] = self._batch_values(f, value, len(completions))
            else:
                raw[f.name] = [None] * len(completions)
                for i, (c, p) in enumerate(zip(completions, problems)):
                    value = (f.fn(c, p) if f.is_async
                             else self._call(f, lambda f=f, c=c, p=p: f.fn(c, p)))
                    if inspect.isawaitable(value):
                        pending.append((f.name, i, value))
                    else:
                        raw[f.name][i] = self._number(f, value)
        if pending:
            results = self._loop.gather([a for _, _, a in pending], self.timeout_s)
            for (name, i, _), value in zip(pending, results):
                f = next(g for g in self.functions if g.name == name)
                if isinstance(value, BaseException):
                    value = self._failed(f, value)
                if i is None:
                    raw[name] = self._batch_values(f, value, len(completions))
                else:
                    raw[name][i] = self._number(f, value)
        truth = self.truth.score(completions, problems)
        out, unscored = [], 0
        for i, verdict in enumerate(truth):
            values = {f.name: raw[f.name][i] for f in self.functions}
            scored = [(f.weight, values[f.name]) for f in self.functions if values[f.name] is not None]
            unscored += not scored
            out.append({"reward": sum(w * v for w, v in scored), "correct": verdict["correct"],
                        "components": values})
        if unscored:
            logger.warning("%d of %d completions: every reward function returned None (not "
                           "applicable); they score 0", unscored, len(completions))
        return out

    def _call(self, f: RewardFunction, thunk: Callable):
        """A sync call under the timeout; an async function's call returns its awaitable."""
        if f.is_async:
            return thunk()
        try:
            return _call_with_timeout(lambda _c, _p: thunk(), None, None, self.timeout_s)
        except Exception as e:  # noqa: BLE001 - a reward bug must not kill training
            return self._failed(f, e)

    def _failed(self, f: RewardFunction, error: BaseException):
        logger.warning("reward function '%s' failed: %s: %s", f.name, type(error).__name__, error,
                       exc_info=not isinstance(error, TimeoutError))
        return _FAILED

    def _batch_values(self, f: RewardFunction, values, n: int) -> list:
        if values is _FAILED:
            return [0.0] * n
        if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
            raise RewardError(f"reward function '{f.name}' (TRL convention) must return a list of "
                              f"{n} floats or None, got {type(values).__name__}")
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        if len(values) != n:
            raise RewardError(f"reward function '{f.name}' returned {len(values)} values for "
                              f"{n} completions")
        return [self._number(f, v) for v in values]

    def _number(self, f: RewardFunction, value) -> float | None:
        if value is _FAILED:
            return 0.0
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RewardError(f"reward function '{f.name}' returned {value!r}, not a number or "
                              "None") from None
        if math.isnan(number):
            return None  # TRL's reading: NaN is "not applicable"
        return number


_FAILED = object()  # a call that raised or timed out: its values score 0


def batch_kwargs(completions: list[str], problems: list) -> dict[str, list]:
    """TRL's keyword arguments for one batch: prompts, completions and the dataset's columns."""
    rows = [p.meta.get("columns") for p in problems]
    if any(r is None for r in rows):  # a task without columns (arithmetic, countdown)
        rows = [{"question": p.question, "answer": p.answer} for p in problems]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns = {k: [r.get(k) for r in rows] for k in keys}
    return {**columns, "prompts": [p.question for p in problems], "completions": list(completions)}
