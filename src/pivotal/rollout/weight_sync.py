"""Routes that put the trainer's new weights on running vLLM servers (`rollout.server_weight_sync`).

`filesystem` (works everywhere, CPU included): the policy's weights, LoRA merged in, are written
as safetensors into a new version directory both sides can read (`pivotal.rollout.weight_files`);
every server's workers load it through the worker extension (`pivotal.rollout.vllm_worker`), then
each server's prefix cache is reset, because cached prompt KV blocks were computed with the old
weights (measured on the in-process engine: log-prob errors up to 2 nats without the reset).

`lora` (a LoRA policy, `model.lora.r > 0`): the servers hold the frozen base model and apply the
adapters themselves (vLLM's LoRA support, `--enable-lora`); each push writes only the adapters
as a peft directory and loads it in place under one adapter name
(`/v1/load_lora_adapter`, `load_inplace`), which the requests then name as their model. A new
directory per version keeps the prefix cache right without a reset: vLLM's block hashes include
the adapter's name and path. vLLM loads the new adapter before it drops the old one, so a failed
load leaves the previous version serving.

`nccl` (GPUs): every weight, LoRA merged in, broadcast over NCCL through vLLM's weight-transfer
API (`pivotal.rollout.nccl_weight_sync`).

A push either reaches every server or raises `RolloutServerError` naming the server; a server
whose load failed keeps the previous version, and the run stops rather than sample from stale
weights.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pivotal.errors import ConfigError, RolloutServerError
from pivotal.lora import ADAPTER_NAME, adapter_files, base_weights, has_adapters, merged_weights
from pivotal.rollout.local_server import WORKER_EXTENSION
from pivotal.rollout.nccl_weight_sync import NcclWeightTransfer
from pivotal.rollout.server_client import ServerClient
from pivotal.rollout.weight_files import prune_versions, write_adapter_dir, write_weight_dir

SERVER_FLAGS_HINT = (f"start it with VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls "
                     f"{WORKER_EXTENSION} (docs/scaling.md, 'Disaggregated rollouts')")


class DirectoryRoute:
    """What the routes share: versions written under `root` (absolute, readable by every
    server), what a server pivotal starts is given, and the model name requests carry."""

    serve_env: dict[str, str] = {}  # environment of a server pivotal starts
    # whether a server pivotal starts still needs a push before it serves the policy
    push_after_start = False

    def __init__(self, clients: list[ServerClient], root: Path, rollout_cfg=None):
        self.clients, self.root = clients, Path(root).resolve()
        self.current: Path | None = None
        self.seconds: dict[str, list[float]] = {"write": [], "load": []}  # per push

    def _push_dir(self, write, load) -> int:
        """`write()` -> (directory, bytes, extra) then `load(client, directory, extra)` on every
        server at once, each timed; the new directory becomes the only one kept."""
        t0 = time.perf_counter()
        path, nbytes, extra = write()
        t1 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            for future in [pool.submit(load, c, path, extra) for c in self.clients]:
                future.result()
        self.seconds["write"].append(t1 - t0)
        self.seconds["load"].append(time.perf_counter() - t1)
        self.current = path
        prune_versions(self.root, keep=[path])
        return nbytes

    @staticmethod
    def served_weights(model):
        """The weights a server pivotal starts is given: the policy's, LoRA merged in."""
        return merged_weights(model)

    @staticmethod
    def serve_args(model) -> list[str]:
        """Extra `vllm serve` flags the route needs."""
        return []

    def request_model(self, client: ServerClient) -> str:
        """The model name a request to `client` names."""
        return client.model_name()

    def close(self) -> None:
        prune_versions(self.root, keep=[])


class FilesystemWeightSync(DirectoryRoute):
    """Every weight through a shared directory, loaded by pivotal's worker extension."""

    name = "filesystem"

    def push(self, model, version: int) -> int:
        """Write `model`'s weights as `version` and load them on every server. Returns bytes."""
        return self._push_dir(lambda: write_weight_dir(merged_weights(model), self.root, version),
                              self._load)

    @staticmethod
    def _load(client: ServerClient, path: Path, count: int) -> None:
        try:
            reply = client.post("/collective_rpc", {"method": "pivotal_load_weights",
                                                    "args": [str(path)]}, retries=1)
        except RolloutServerError as e:
            raise RolloutServerError(f"{e}\nThe weight push of {path} failed; the server keeps its "
                                     f"previous weights. If it lacks the route or the method, "
                                     f"{SERVER_FLAGS_HINT}.") from e
        workers = reply.get("results") or []
        if not workers or any(not isinstance(w, dict) or w.get("tensors") != count for w in workers):
            raise RolloutServerError(f"vLLM server {client.url}: the weight push of {path} ({count} "
                                     f"tensors) was not confirmed by every worker: {workers}")
        client.reset_prefix_cache(f"loading {path}")


class LoraAdapterSync(DirectoryRoute):
    """Only the LoRA adapters through a shared directory; the servers apply them to their base."""

    name = "lora"
    adapter_name = "pivotal-policy-lora"
    push_after_start = True  # it starts on the base, with no adapter loaded
    serve_env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}

    @staticmethod
    def served_weights(model):
        """The frozen base weights: the server adds the adapters itself."""
        return base_weights(model)

    @staticmethod
    def serve_args(model) -> list[str]:
        """vLLM's LoRA flags for the policy's adapters: one adapter, of the policy's rank (vLLM
        takes only some maximum ranks: the smallest that holds it)."""
        rank = _adapter_config(model).r
        allowed = [r for r in VLLM_LORA_RANKS if r >= rank]
        if not allowed:
            raise ConfigError(f"model.lora.r={rank}: vLLM serves LoRA ranks up to "
                              f"{VLLM_LORA_RANKS[-1]}; use rollout.server_weight_sync=filesystem")
        return ["--enable-lora", "--max-loras", "1", "--max-lora-rank", str(allowed[0])]

    def request_model(self, client: ServerClient) -> str:
        return self.adapter_name

    def push(self, model, version: int) -> int:
        """Write `model`'s adapters as `version` and load them on every server. Returns bytes."""
        _adapter_config(model)

        def write():
            tensors, lora_config = adapter_files(model)
            return (*write_adapter_dir(tensors, lora_config, self.root, version), None)
        return self._push_dir(write, self._load_adapter)

    def _load_adapter(self, client: ServerClient, path: Path, _=None) -> None:
        try:
            client.post("/v1/load_lora_adapter", {"lora_name": self.adapter_name,
                                                  "lora_path": str(path), "load_inplace": True},
                        retries=1)
        except RolloutServerError as e:
            raise RolloutServerError(
                f"{e}\nThe adapter push of {path} failed; the server keeps its previous adapter. "
                f"If it lacks the route, start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and "
                f"--enable-lora --max-lora-rank R (R >= model.lora.r; docs/scaling.md, "
                f"'Disaggregated rollouts')") from e


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices


def _adapter_config(model):
    if not has_adapters(model):
        raise ConfigError("rollout.server_weight_sync=lora pushes LoRA adapters, and the policy "
                          "has none: set model.lora.r > 0, or use server_weight_sync=filesystem")
    return model.peft_config[ADAPTER_NAME]


WEIGHT_SYNC_ROUTES = {"filesystem": FilesystemWeightSync, "lora": LoraAdapterSync,
                      "nccl": NcclWeightTransfer}
