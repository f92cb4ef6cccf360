"""A vLLM worker extension that reloads the trainer's weights from safetensors files in place.

The filesystem weight route of `rollout.engine=vllm_server` (`pivotal.rollout.weight_sync`): the
trainer writes the policy's weights (LoRA merged in) as safetensors into a new directory both
machines can read, then asks every worker of every server to load them through vLLM's dev-mode
`/collective_rpc`. Start the server with

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --logprobs-mode processed_logprobs \\
        --worker-extension-cls pivotal.rollout.vllm_worker.WeightFileLoader

vLLM mixes this class into its worker class, so `self` is the worker. The module imports only
torch and safetensors: it runs inside vLLM's process, where pivotal's other dependencies need not
be installed (`pip install --no-deps pivotal` beside vLLM is enough).

Why a worker extension and not `reload_weights(weights_path=...)` over the RPC: the load is checked
(every tensor of the directory's index arrives, or the call fails), a failed load falls back to the
last directory that loaded, and the reply says what arrived (tensor count and bytes, per worker).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

INDEX_FILE = "pivotal_weights.json"  # names the shard files and the tensor count of a directory


def read_index(path: str) -> dict:
    """The index the trainer wrote last into a weight directory (`pivotal.rollout.weight_files`)."""
    with open(os.path.join(path, INDEX_FILE)) as f:
        return json.load(f)


def iter_weight_files(path: str, index: dict) -> Iterator[tuple[str, object]]:
    """(name, tensor) for every tensor in the directory's shard files, one at a time."""
    from safetensors import safe_open

    for shard in index["files"]:
        with safe_open(os.path.join(path, shard), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class WeightFileLoader:
    """Worker methods called by name over `/collective_rpc` (arguments arrive as strings)."""

    def pivotal_load_weights(self, path: str) -> dict:
        """Load every tensor of the weight directory `path` into the model in place.

        Returns {"path", "tensors", "bytes"} as this worker received them. On a failure the
        worker reloads the last directory that loaded (when there is one) and re-raises, so the
        server keeps serving the previous weights.
        """
        index = read_index(path)
        counted = {"tensors": 0, "bytes": 0}

        def counting(weights):
            for name, tensor in weights:
                counted["tensors"] += 1
                counted["bytes"] += tensor.numel() * tensor.element_size()
                yield name, tensor

        previous = getattr(self, "_pivotal_weights_path", None) or self._pivotal_served_dir()
        try:
            self.reload_weights(weights_iterator=counting(iter_weight_files(path, index)))
            if counted["tensors"] != index["tensors"]:
                raise RuntimeError(f"{path}: loaded {counted['tensors']} tensors, the index lists "
                                   f"{index['tensors']}")
        except Exception:
            if previous is not None:
                self.reload_weights(
                    weights_iterator=iter_weight_files(previous, read_index(previous)))
            raise
        self._pivotal_weights_path = path
        return {"path": path, **counted}

    def _pivotal_served_dir(self) -> str | None:
        """The directory the server started from, when pivotal wrote it (a local server)."""
        served = self.vllm_config.model_config.model
        return served if os.path.isfile(os.path.join(served, INDEX_FILE)) else None
