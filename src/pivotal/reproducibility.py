"""`train.deterministic`: PyTorch's deterministic-kernel mode for the whole process.

Two runs of the same config and seed on this CPU already agree bit for bit (rewards, losses,
grad norms; docs/scaling.md). On GPUs they do not: cuBLAS picks split-K reductions by workspace,
and the backward of embedding lookups, `index_add_` and `scatter_add_` accumulates with atomics.
`torch.use_deterministic_algorithms(True)` makes those ops take their deterministic kernels, or
raise where none exists (naming the op), instead of varying in the last bits from run to run.
https://pytorch.org/docs/stable/notes/randomness.html
"""

from __future__ import annotations

import os

import torch


def use_deterministic_kernels() -> None:
    """Switch this process to deterministic kernels (it stays on: the setting is global).

    cuBLAS needs a fixed workspace for it, set before its first use (CUBLAS_WORKSPACE_CONFIG,
    kept when the user set it); cuDNN's autotuner, which picks kernels by timing, is turned off.
    PyTorch then also fills uninitialised memory (`torch.empty`) with NaN, so a read of it shows.
    vLLM's sampling is outside this switch (its own batch-invariance settings govern it).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
