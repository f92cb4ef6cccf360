"""A train.plugins module for the interrupt tests: it makes a real `pivotal train` subprocess send
itself real signals at chosen moments, so the tests need no timing guesses.

PIVOTAL_TEST_SIGNAL_AFTER_STEP=N   after step N is logged (an optimizer step has just finished)
PIVOTAL_TEST_SIGNAL_AT_ROLLOUT=N   at the start of the N-th rollout (inside it: abandoned)
PIVOTAL_TEST_SIGNAL_IN_SAVE=N      twice, in the middle of the N-th checkpoint write
PIVOTAL_TEST_SIGNAL=SIGINT|SIGTERM which signal (default SIGINT)
PIVOTAL_TEST_KILL_AFTER_STEP=N     SIGKILL (no handler runs) after step N is logged: in a
                                   data-parallel run that is rank 0, after its checkpoint
"""

import os
import signal

import torch

import pivotal.checkpoint
import pivotal.metrics
import pivotal.rollout.transformers_engine as engine_module

SIGNAL = getattr(signal, os.environ.get("PIVOTAL_TEST_SIGNAL", "SIGINT"))
counts = {"rollout": 0, "save": 0}


def _send():
    os.kill(os.getpid(), SIGNAL)


if "PIVOTAL_TEST_SIGNAL_AFTER_STEP" in os.environ:
    after = int(os.environ["PIVOTAL_TEST_SIGNAL_AFTER_STEP"])
    log = pivotal.metrics.MetricsLogger.log

    def logging_then_signal(self, step, metrics):
        log(self, step, metrics)
        if step == after:
            _send()

    pivotal.metrics.MetricsLogger.log = logging_then_signal

if "PIVOTAL_TEST_KILL_AFTER_STEP" in os.environ:
    kill_after = int(os.environ["PIVOTAL_TEST_KILL_AFTER_STEP"])
    log_step = pivotal.metrics.MetricsLogger.log

    def logging_then_kill(self, step, metrics):
        log_step(self, step, metrics)
        if step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    pivotal.metrics.MetricsLogger.log = logging_then_kill

if "PIVOTAL_TEST_SIGNAL_AT_ROLLOUT" in os.environ:
    at = int(os.environ["PIVOTAL_TEST_SIGNAL_AT_ROLLOUT"])
    generate = engine_module.TransformersEngine.generate

    def signal_then_generate(self, *args, **kwargs):
        counts["rollout"] += 1
        if counts["rollout"] == at:
            _send()
        return generate(self, *args, **kwargs)

    engine_module.TransformersEngine.generate = signal_then_generate

if "PIVOTAL_TEST_SIGNAL_IN_SAVE" in os.environ:
    nth = int(os.environ["PIVOTAL_TEST_SIGNAL_IN_SAVE"])
    save = torch.save

    def save_with_two_signals(obj, f, *args, **kwargs):
        counts["save"] += 1
        if counts["save"] == nth:  # the model is written, the trainer state is not
            _send()
            _send()
        return save(obj, f, *args, **kwargs)

    pivotal.checkpoint.torch.save = save_with_two_signals
