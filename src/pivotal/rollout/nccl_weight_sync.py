"""The `nccl` weight route (`rollout.server_weight_sync=nccl`): new weights go to the vLLM servers'
GPUs over NCCL, through vLLM's own weight-transfer API, the one TRL 1.16 and SkyRL call.

Docs: https://docs.vllm.ai/en/v0.32.0/training/weight_transfer/. The servers run with
`--weight-transfer-config '{"backend": "nccl"}'` and `VLLM_SERVER_DEV_MODE=1` (the RL routes). Per
server, on the first push, the trainer (rank 0, the only sender) asks `/get_world_size` how many
workers the server has, then builds vLLM's trainer engine
(`WeightTransferTrainerFactory.trainer_init` with an `NCCLTrainerInitInfo`): the trainer hosts
the rendezvous at `address:port` as NCCL rank 0 and the server's workers join as ranks 1..W
(`/init_weight_transfer_engine`). Each push is vLLM's `send_weights()` round
(`/start_weight_update`, `/update_weights` concurrent with the broadcast, `/finish_weight_update`)
followed by a prefix-cache reset, as on the filesystem route. Servers are fed one after another,
each over its own NCCL group.

What is sent: the policy's weights under plain Hugging Face names, LoRA merged in
(`pivotal.lora.merged_weights`, the tensors the filesystem route writes), from the device they
live on: NCCL needs the trainer on a CUDA GPU (`model.device=cuda`).

Failure: a push that fails mid-broadcast can leave a server with part of the new weights (vLLM
loads them as they arrive); the run stops with the server's URL, and that server needs a restart.
Not run on this project's CPU machines (NCCL needs GPUs): docs/scaling.md says what was tested.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
from urllib.parse import urlparse

from pivotal.errors import ConfigError, RolloutServerError
from pivotal.lora import base_weights, merged_weights
from pivotal.rollout.local_server import free_port
from pivotal.rollout.server_client import ServerClient

SERVE_ARGS = ["--weight-transfer-config", json.dumps({"backend": "nccl"})]


class HttpSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over pivotal's `ServerClient`, so that a failure
    names the server and the route. The calls that rendezvous over NCCL are never retried: a
    retry would join a group the trainer already left."""

    def __init__(self, client: ServerClient):
        self.client = client

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.client.post("/init_weight_transfer_engine", {"init_info": init_info}, retries=0)

    def start_weight_update(self) -> None:
        self.client.post("/start_weight_update")

    def update_weights(self, update_info) -> None:
        self.client.post("/update_weights", {"update_info": update_info}, retries=0)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        body = None if weight_version is None else {"weight_version": weight_version}
        self.client.post("/finish_weight_update", body)

    def shutdown_weight_transfer_engine(self) -> None:
        self.client.post("/shutdown_weight_transfer_engine", retries=0)


def policy_source(model):
    """vLLM's `WeightSource` over the policy: `metadata()` from the base weights' names, dtypes
    and shapes (no merge, no copy: a merged weight has its base's), iteration the merged weights,
    one tensor at a time."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class PolicyWeights(WeightSource):
        def metadata(self):
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in base_weights(model)]

        def __iter__(self):
            for name, tensor in merged_weights(model):
                yield name, tensor.contiguous()

    return PolicyWeights()


def _check_device(model) -> None:
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(f"rollout.server_weight_sync=nccl sends the weights over NCCL from the "
                          f"trainer's GPU, and the policy is on {device}: set model.device=cuda, "
                          f"or use server_weight_sync=filesystem")


def trainer_address(url: str) -> str:
    """The address of this machine that `url`'s server reaches it at: the interface the kernel
    would route to it through (a UDP socket's connect sends nothing)."""
    parsed = urlparse(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((parsed.hostname, parsed.port or 80))
        return s.getsockname()[0]


class NcclWeightTransfer:
    """Every weight, LoRA merged in, broadcast to each server's workers over NCCL."""

    name = "nccl"
    serve_env: dict[str, str] = {}  # VLLM_SERVER_DEV_MODE=1 is set for every local server
    push_after_start = False
    served_weights = staticmethod(merged_weights)

    def __init__(self, clients: list[ServerClient], root, rollout_cfg=None):
        self.clients = clients
        self.address = getattr(rollout_cfg, "server_nccl_address", "") or ""
        self.engines: list = []
        self.seconds: dict[str, list[float]] = {"connect": [], "send": []}
        self.current = None

    @staticmethod
    def serve_args(model) -> list[str]:
        return list(SERVE_ARGS)

    def request_model(self, client: ServerClient) -> str:
        return client.model_name()

    def push(self, model, version: int) -> int:
        """Broadcast `model`'s weights to every server. Returns the bytes sent."""
        _check_device(model)
        source = policy_source(model)
        if not self.engines:
            t0 = time.perf_counter()
            self.engines = [self._connect(client, source) for client in self.clients]
            self.seconds["connect"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for client, engine in zip(self.clients, self.engines):
            engine.source = source
            try:
                engine.send_weights()
            except Exception as e:
                raise RolloutServerError(
                    f"vLLM server {client.url}: the NCCL weight push of version {version} failed "
                    f"({type(e).__name__}: {e}); the server may hold part of the new weights: "
                    f"restart it before the next run") from e
            client.reset_prefix_cache(f"the NCCL weight push of version {version}")
        self.seconds["send"].append(time.perf_counter() - t0)
        self.current = version
        return len(self.clients) * sum(m.dtype.itemsize * math.prod(m.shape)
                                       for m in source.metadata())

    def _connect(self, client: ServerClient, source):
        """vLLM's trainer engine for one server, its NCCL group rendezvoused."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        workers = int(client.get("/get_world_size").get("world_size") or 0)
        if workers < 1:
            raise RolloutServerError(f"vLLM server {client.url}/get_world_size reported no "
                                     f"workers; is it a vLLM >= 0.30 server in dev mode?")
        init = NCCLTrainerInitInfo(master_address=self.address or trainer_address(client.url),
                                   master_port=free_port(), world_size=1 + workers, rank=0)
        try:
            return WeightTransferTrainerFactory.trainer_init(init, client=HttpSyncClient(client),
                                                             source=source)
        except Exception as e:
            raise RolloutServerError(
                f"vLLM server {client.url}: the NCCL weight-transfer group ({1 + workers} ranks, "
                f"rendezvous at {init.master_address}:{init.master_port}) could not be set up "
                f"({type(e).__name__}: {e}). Start the server with VLLM_SERVER_DEV_MODE=1 and "
                f"{' '.join(SERVE_ARGS[:1])} '{SERVE_ARGS[1]}', and let it reach this address "
                f"(rollout.server_nccl_address)") from e

    def close(self) -> None:
        """Leave every NCCL group; a server still up is told to drop its side."""
        for client, engine in zip(self.clients, self.engines):
            engine.shutdown()
            with contextlib.suppress(RolloutServerError):
                HttpSyncClient(client).shutdown_weight_transfer_engine()
        self.engines = []
