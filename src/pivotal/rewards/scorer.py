"""The scorer: weighted reward components with per-call timeouts; a failing or slow component
scores 0 and is logged, never crashes training."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pivotal.errors import RewardError
from pivotal.registry import suggest

if TYPE_CHECKING:  # only for annotations; keeps rewards importable from tasks without a cycle
    from pivotal.tasks.base import Problem

from pivotal.rewards.extraction import DEFAULT_METHODS, extract_answer, normalize_answer
from pivotal.rewards.verifiers import REWARDS, RewardFn, accepted_options, load_reward, load_user_function

logger = logging.getLogger("pivotal.rewards")

# ----------------------------------------------------------------------------------------------
# Combination with timeouts
# ----------------------------------------------------------------------------------------------

@dataclass
class RewardComponent:
    fn: RewardFn
    weight: float
    name: str


class _TaskReward:
    """The "task" spec: each problem is scored by the reward its own `problem.reward` names.

    Options go only to the rewards that accept them, so {"extract": [...]} works on a mixed
    math + countdown set; an option that no registered reward accepts is a typo and fails early.
    """

    def __init__(self, options: dict[str, Any]):
        known = set().union(*((accepted_options(REWARDS.get(n)) or set()) for n in REWARDS.names()))
        unknown = sorted(set(options) - known)
        if unknown:
            raise RewardError(f"reward 'task': no registered reward accepts option(s) "
                              f"{', '.join(map(repr, unknown))}.{suggest(unknown[0], sorted(known))}")
        self.options = options
        self._cache: dict[str, RewardFn] = {}

    def resolve(self, problem: Problem) -> RewardFn:
        spec = problem.reward
        if spec not in self._cache:
            target = load_user_function(spec) if ":" in spec else REWARDS.get(spec)
            accepted = accepted_options(target)
            options = {k: v for k, v in self.options.items() if accepted is not None and k in accepted}
            self._cache[spec] = load_reward(spec, **options)
        return self._cache[spec]

    def __call__(self, completion: str, problem: Problem) -> float:
        return self.resolve(problem)(completion, problem)


def _call_with_timeout(fn: RewardFn, completion: str, problem: Problem, timeout_s: float | None) -> Any:
    """fn(completion, problem), raising TimeoutError if it takes longer than timeout_s.

    The call runs in a fresh daemon thread and we wait on a concurrent.futures.Future. A Python
    thread cannot be killed: on timeout it is abandoned and keeps running (and holding CPU) until
    it finishes on its own. Daemon threads rather than a ThreadPoolExecutor on purpose: the
    executor's workers are joined at interpreter exit, so one stuck reward would hang the process
    at shutdown, and a stuck worker would also occupy a pool slot for good.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn(completion, problem)
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(completion, problem))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, not swallowed
            future.set_exception(e)

    threading.Thread(target=run, name="pivotal-reward", daemon=True).start()
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise TimeoutError(f"reward did not finish within {timeout_s} s") from None


# str | (spec, weight[, options]) | {"name", "weight", "options", "label"} | RewardComponent
ComponentSpec = Any


class RewardScorer:
    """Weighted sum of reward components; a failing or slow component scores 0, never crashes.

    components: list of specs, each one of
        "math"                                        weight 1.0, no options
        ("math", 1.0) or ("math", 1.0, {"extract": ["boxed"]})
        {"name": "math", "weight": 1.0, "options": {...}, "label": "math_boxed"}
        RewardComponent(fn, weight, name)
    The spec "task" (the default, alone, when components is None) uses each problem's own
    `problem.reward`. Component names must be unique; "label" renames one.

    score() returns per sample {"reward": sum(weight * raw), "correct": bool, "components": {name: raw}}.
    "correct" is the FIRST component's raw score >= 1: list the correctness check first and
    shaping terms (format, length...) after it.

    timeout_s bounds each call of a component on one sample (see _call_with_timeout). Our own
    rewards run inline when score() is called from the main thread, where math-verify's SIGALRM
    timeout can interrupt sympy; user rewards, or any call off the main thread, go to a thread.
    """

    _DICT_KEYS = {"name", "weight", "options", "label"}

    def __init__(self, components: Sequence[ComponentSpec] | None = None, timeout_s: float | None = 10.0):
        specs = list(components) if components is not None else ["task"]
        if not specs:
            raise ValueError("RewardScorer needs at least one component")
        self.components = [self._build(s) for s in specs]
        names = [c.name for c in self.components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate reward component name(s) {dupes}; give each a 'label'")
        self.timeout_s = timeout_s

    @classmethod
    def _build(cls, spec: ComponentSpec) -> RewardComponent:
        if isinstance(spec, RewardComponent):
            return spec
        label = None
        if isinstance(spec, str):
            name, weight, options = spec, 1.0, {}
        elif isinstance(spec, dict):
            unknown = set(spec) - cls._DICT_KEYS
            if unknown or "name" not in spec:
                raise ValueError(
                    f"reward component {spec!r}: needs 'name'; allowed keys {sorted(cls._DICT_KEYS)}"
                )
            name, weight = spec["name"], spec.get("weight", 1.0)
            options, label = dict(spec.get("options") or {}), spec.get("label")
        elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
            name, weight = spec[0], spec[1]
            options = dict(spec[2]) if len(spec) == 3 and spec[2] else {}
        else:
            raise ValueError(f"cannot build a reward component from {spec!r}")
        fn: RewardFn = _TaskReward(options) if name == "task" else load_reward(name, **options)
        return RewardComponent(fn=fn, weight=float(weight), name=label or name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def _raw(self, component: RewardComponent, completion: str, problem: Problem) -> float:
        """One component on one sample, every failure mapped to 0.0 (and logged)."""
        try:
            fn = component.fn.resolve(problem) if isinstance(component.fn, _TaskReward) else component.fn
            inline = getattr(fn, "__pivotal_builtin__", False) and (
                threading.current_thread() is threading.main_thread()
            )
            value = fn(completion, problem) if inline else _call_with_timeout(
                fn, completion, problem, self.timeout_s
            )
            value = float(value)
            if math.isnan(value):
                raise ValueError("reward returned NaN")
            return value
        except Exception as e:  # noqa: BLE001 - a reward bug must not kill training
            logger.warning("reward component '%s' failed on problem %r: %s: %s",
                           component.name, getattr(problem, "id", "?"), type(e).__name__, e,
                           exc_info=not isinstance(e, TimeoutError))
            return 0.0

    def score(self, completions: list[str], problems: list[Problem]) -> list[dict[str, Any]]:
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        results = []
        for completion, problem in zip(completions, problems):
            raws = {c.name: self._raw(c, completion, problem) for c in self.components}
            total = sum(c.weight * raws[c.name] for c in self.components)
            results.append({
                "reward": total,
                "correct": raws[self.components[0].name] >= 1.0,
                "components": raws,
            })
        return results


def build_scorer(components: Sequence[dict], extract: Sequence[str],
                 timeout_s: float | None = 10.0) -> RewardScorer:
    """The scorer of `reward.components`, with `reward.extract` given to every built-in component
    that takes an `extract` option (the task's own verifier too) and did not set its own."""
    def takes_extract(name: str) -> bool:
        if name == "task":
            return True  # _TaskReward passes it on to the rewards that take it
        if ":" in name or name not in REWARDS:
            return False  # a user's function gets only the options it was given
        return "extract" in (accepted_options(REWARDS.get(name)) or set())

    specs = []
    for comp in components:
        options = comp.get("options") or {}
        if takes_extract(comp["name"]) and "extract" not in options:
            comp = {**comp, "options": {**options, "extract": tuple(extract)}}
        specs.append(comp)
    return RewardScorer(specs, timeout_s=timeout_s)


# ----------------------------------------------------------------------------------------------
# Evaluation helpers
# ----------------------------------------------------------------------------------------------

def is_correct(completion: str, problem: Problem, extract: str | Sequence[str] | None = None,
               timeout_s: float = 5.0) -> bool:
    """Whether `problem.reward`'s check gives full marks. `extract`/`timeout_s` are passed only
    to rewards that take them (so a mixed math/countdown eval set works with one call)."""
    spec = problem.reward
    target = load_user_function(spec) if ":" in spec else REWARDS.get(spec)
    accepted = accepted_options(target)
    wanted = {"timeout_s": timeout_s}
    if extract is not None:
        wanted["extract"] = extract
    options = {k: v for k, v in wanted.items() if accepted is None or k in accepted}
    if ":" in spec and accepted is None:
        options = {}  # a **kwargs user function gets no surprise options
    return load_reward(spec, **options)(completion, problem) >= 1.0


def extracted(completion: str, methods: str | Sequence[str] = DEFAULT_METHODS) -> str | None:
    """Normalised extracted answer (a majority-vote key: "1,000" and "1000" vote together)."""
    answer, _ = extract_answer(completion, methods)
    if answer is None:
        return None
    return normalize_answer(answer) or None

