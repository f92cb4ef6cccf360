"""Auxiliary losses trained beside the policy loss, each a registry entry that owns its modules.

The trainer sees only a list of `AuxiliaryLoss` objects (empty by default): their parameters join
the optimizer, their state dicts join the checkpoint, and each contributes a per-token term to the
objective (`pivotal.algos.objective`). Importing this package registers the built-in ones.
"""

from pivotal.auxiliary import occ  # noqa: F401,E402  (registers "occ")
from pivotal.auxiliary.base import AUXILIARY_LOSSES, AuxiliaryLoss, build_auxiliary_losses, register_auxiliary

__all__ = ["AUXILIARY_LOSSES", "AuxiliaryLoss", "build_auxiliary_losses", "register_auxiliary"]
