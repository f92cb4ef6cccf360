"""Routes that put the trainer's new weights on running vLLM servers (`rollout.server_weight_sync`).

`filesystem` (works everywhere, CPU included): the policy's weights, LoRA merged in, are written
as safetensors into a new version directory both sides can read (`pivotal.rollout.weight_files`);
every server's workers load it through the worker extension (`pivotal.rollout.vllm_worker`), then
each server's prefix cache is reset, because cached prompt KV blocks were computed with the old
weights (measured on the in-process engine: log-prob errors up to 2 nats without the reset).

A push either reaches every server or raises `RolloutServerError` naming the server; a worker
whose load failed has reloaded the previous version, and the run stops rather than sample from
stale weights.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pivotal.errors import RolloutServerError
from pivotal.lora import merged_weights
from pivotal.rollout.local_server import WORKER_EXTENSION
from pivotal.rollout.server_client import ServerClient
from pivotal.rollout.weight_files import prune_versions, write_weight_dir

SERVER_FLAGS_HINT = (f"start it with VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls "
                     f"{WORKER_EXTENSION} (docs/scaling.md, 'Disaggregated rollouts')")


class FilesystemWeightSync:
    """Weights through a shared directory, `root` (absolute, readable by every server)."""

    name = "filesystem"

    def __init__(self, clients: list[ServerClient], root: Path):
        self.clients, self.root = clients, Path(root).resolve()
        self.current: Path | None = None

    def push(self, model, version: int) -> int:
        """Write `model`'s weights as `version` and load them on every server. Returns bytes."""
        path, nbytes, count = write_weight_dir(merged_weights(model), self.root,
                                               version)
        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            for future in [pool.submit(self._load, c, path, count) for c in self.clients]:
                future.result()
        self.current = path
        prune_versions(self.root, keep=[path])
        return nbytes

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
        for _ in range(5):  # the reset fails while a request still holds cache blocks
            if client.post("/reset_prefix_cache").get("success"):
                return
        raise RolloutServerError(f"vLLM server {client.url}/reset_prefix_cache kept failing after "
                                 f"loading {path}: requests still running on it?")

    def close(self) -> None:
        prune_versions(self.root, keep=[])


WEIGHT_SYNC_ROUTES = {"filesystem": FilesystemWeightSync}
