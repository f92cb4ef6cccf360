"""pivotal: reinforcement learning with verifiable rewards, with per-token credit assignment.

The Python API (docs/python_api.md):

    import pivotal
    trainer = pivotal.Trainer(pivotal.Config.build(train={"steps": 20}),
                              train_dataset=rows, reward_funcs=[my_reward])
    trainer.train()

`Config`, `Trainer`, `Callback`, `evaluate`, `analyze`, `cross_sample` and `report` are imported on
first use, so that `import pivotal` (and the CLI's start) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Config", "Trainer", "Callback", "evaluate", "analyze", "cross_sample", "report",
           "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports them
    from .api import Callback, Config, Trainer, analyze, cross_sample, evaluate, report


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'pivotal' has no attribute '{name}'")
