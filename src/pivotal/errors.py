"""One error hierarchy: every mistake pivotal can name is a `PivotalError`, caught once by the CLI,
which prints its one-line message (naming the file, row, key or model at fault) without a traceback.
Each subclass also derives from the built-in error a caller would have caught before.
"""

from __future__ import annotations


class PivotalError(Exception):
    """Base of pivotal's own errors; the message names the culprit."""


class ConfigError(PivotalError, ValueError):
    """Bad configuration; the message names the key (or file and line) at fault."""


class DataError(PivotalError, ValueError):
    """A data file or row cannot be used; the message names the file and row."""


class ModelLoadError(PivotalError, RuntimeError):
    """A model or tokenizer cannot be loaded; the message names the model spec."""


class RewardError(PivotalError, ValueError):
    """A reward function cannot be built; the message names the component and option."""


class CheckpointError(PivotalError, OSError):
    """A checkpoint could not be written or read; the message names the path (and the free space)."""


class NonFiniteError(PivotalError, FloatingPointError):
    """Training produced non-finite values too often (or weights to save are non-finite); the
    message names the first bad quantity and its step."""


class RanksLost(PivotalError):
    """A collective failed under data parallelism: another rank died, hung past dist.timeout_s,
    or lost its network. The message says which rank saw it, at what step, and how to resume."""

    def __init__(self, rank: int, step: int, output_dir: str, cause: BaseException):
        self.rank, self.step = rank, step
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"rank {rank} lost the other ranks during step {step + 1} ({first_line[:300]}); the "
            f"launcher's report names the rank that failed first (torchrun: 'Root Cause'). "
            f"Resume from the last "
            f"checkpoint with: pivotal train {output_dir}/config.yaml --resume")


class RolloutServerError(PivotalError, RuntimeError):
    """A vLLM rollout server is down, too slow or refused a request (after a bounded retry), or a
    weight push failed; the message names the URL and what was asked of it."""
