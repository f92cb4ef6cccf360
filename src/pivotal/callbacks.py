"""Callbacks: user code the training loop calls at its boundaries (`pivotal.Trainer(callbacks=)`).

    class StopAtAccuracy(pivotal.Callback):
        def on_step_end(self, step, metrics):
            return metrics["accuracy"] >= 0.5      # True: stop after this step

A callback subclasses `Callback` (or is any object with some of these methods):
  on_step_end(step, metrics) -> bool | None   after every step, with the step's logged metrics
  on_evaluate(tag, summary)  -> bool | None   after a held-out evaluation ("before", "step10", ...)
  on_checkpoint(path)                          after a checkpoint is complete on disk
  on_train_end(summary)                        when train() returns
A true return value asks the run to stop: it ends after the current step as if `train.steps` had
been reached there (a checkpoint is saved, the final evaluation runs, train() returns). With
several ranks every rank calls its callbacks, and the run stops when any rank asks.
"""

from __future__ import annotations

import logging

log = logging.getLogger("pivotal.callbacks")

HOOKS = ("on_step_end", "on_evaluate", "on_checkpoint", "on_train_end")


class Callback:
    """Base class with every hook doing nothing; override the ones you need."""

    def on_step_end(self, step: int, metrics: dict) -> bool | None:
        return None

    def on_evaluate(self, tag: str, summary: dict) -> bool | None:
        return None

    def on_checkpoint(self, path) -> None:
        return None

    def on_train_end(self, summary: dict) -> None:
        return None


class CallbackList:
    """The run's callbacks; `stop_requested` names the first one that asked to stop."""

    def __init__(self, callbacks=()):
        callbacks = list(callbacks or ())
        for cb in callbacks:
            if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
                raise TypeError(f"callback {cb!r} has none of the hooks {', '.join(HOOKS)}")
        self.callbacks = callbacks
        self.stop_requested: str | None = None

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None and method(*args) and self.stop_requested is None:
                self.stop_requested = f"{type(cb).__name__}.{hook}"
                log.info("%s asked the run to stop", self.stop_requested)

    def step_end(self, step: int, metrics: dict) -> None:
        self._call("on_step_end", step, metrics)

    def evaluate(self, tag: str, summary: dict) -> None:
        self._call("on_evaluate", tag, summary)

    def checkpoint(self, path) -> None:
        self._call("on_checkpoint", path)

    def train_end(self, summary: dict) -> None:
        self._call("on_train_end", summary)
