"""The parts of `rollout.engine=vllm_server` that need no vLLM: the HTTP client's bounded retry and
named errors (against a real HTTP server on 127.0.0.1), weight directories, the worker extension's
fallback, and config checks. The engine itself runs on a real server in test_vllm_server.py."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import load_file

from pivotal.config import load_config
from pivotal.errors import ConfigError, RolloutServerError
from pivotal.rollout.local_server import free_port
from pivotal.rollout.server_client import ServerClient
from pivotal.rollout.vllm_worker import INDEX_FILE, WeightFileLoader, read_index
from pivotal.rollout.weight_files import prune_versions, version_dir, write_weight_dir


@pytest.fixture
def http_server():
    """A server answering each request with the next (status, body) of `replies`, then 200 with
    `by_path`'s body for the path (or {"ok": true})."""
    state = {"replies": [], "requests": [], "by_path": {}}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            state["requests"].append((self.command, self.path, self.rfile.read(length)))
            status, body = (state["replies"].pop(0) if state["replies"] else
                            (200, state["by_path"].get(self.path, {"ok": True})))
            data = body if isinstance(body, bytes) else json.dumps(body).encode()  # bytes: as is
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def test_a_server_error_is_retried_then_succeeds(http_server):
    http_server["replies"] = [(503, {"error": "busy"})]
    client = ServerClient(http_server["url"], retries=2, backoff_s=0.01)
    assert client.post("/v1/completions", {"n": 1}) == {"ok": True}
    assert len(http_server["requests"]) == 2
    assert json.loads(http_server["requests"][0][2]) == {"n": 1}


def test_a_server_that_keeps_failing_is_named_after_a_bounded_retry(http_server):
    http_server["replies"] = [(500, {"error": "boom"})] * 5
    client = ServerClient(http_server["url"], retries=2, backoff_s=0.01)
    with pytest.raises(RolloutServerError, match=rf"{http_server['url']}/v1/completions failed "
                                                 r"after 3 attempts: HTTP 500.*boom"):
        client.post("/v1/completions", {})
    assert len(http_server["requests"]) == 3


def test_a_refused_request_is_not_retried(http_server):
    http_server["replies"] = [(404, {"detail": "Not Found"})]
    client = ServerClient(http_server["url"], retries=3, backoff_s=0.01)
    with pytest.raises(RolloutServerError, match="collective_rpc refused the request: HTTP 404"):
        client.post("/collective_rpc", {})
    assert len(http_server["requests"]) == 1


def test_a_server_that_is_down_is_named():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = ServerClient(url, retries=1, backoff_s=0.01)
    with pytest.raises(RolloutServerError, match=rf"{url}/v1/models failed after 2 attempts: "
                                                 r"cannot connect"):
        client.model_name()
    assert not client.healthy()


def _weights():
    embed = torch.randn(10, 4)
    return {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(4),
            "lm_head.weight": embed}  # tied: the same storage


def test_weight_directories_hold_every_tensor_in_bounded_shards(tmp_path):
    weights = _weights()
    path, nbytes, count = write_weight_dir(weights.items(), tmp_path, 3, shard_bytes=100)
    assert path == version_dir(tmp_path, 3) and count == 3
    index = read_index(str(path))
    assert index["tensors"] == 3 and index["bytes"] == nbytes == (40 + 4 + 40) * 4
    # a shard closes once it reaches 100 bytes: [embed (160 B)], [norm (16 B), head (160 B)]
    assert len(index["files"]) == 2
    loaded = {}
    for name in index["files"]:
        loaded.update(load_file(path / name))
    assert set(loaded) == set(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    # in one shard, the tied head is written as its own copy (safetensors refuses shared storage)
    path, _, count = write_weight_dir(weights.items(), tmp_path, 4)
    assert count == 3 and len(read_index(str(path))["files"]) == 1
    assert torch.equal(load_file(path / "model-00001.safetensors")["lm_head.weight"],
                       weights["lm_head.weight"])
    prune_versions(tmp_path, keep=[path])
    assert [p.name for p in tmp_path.iterdir()] == ["v000004"]


def test_a_failed_write_leaves_no_version_behind(tmp_path):
    def broken():
        yield "a", torch.ones(3)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_weight_dir(broken(), tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


class _Worker(WeightFileLoader):
    """vLLM's worker as the extension sees it: `reload_weights` and the served model's path."""

    def __init__(self, served: str):
        self.loads: list[dict] = []
        self.vllm_config = type("C", (), {"model_config": type("M", (), {"model": served})})

    def reload_weights(self, weights_iterator):
        self.loads.append(dict(weights_iterator))


def test_the_worker_extension_loads_a_version_and_falls_back_when_one_is_bad(tmp_path):
    good, _, _ = write_weight_dir(_weights().items(), tmp_path, 0)
    worker = _Worker(served=str(good))
    bad, _, count = write_weight_dir({"x": torch.zeros(2)}.items(), tmp_path, 1)
    index = json.loads((bad / INDEX_FILE).read_text())
    (bad / INDEX_FILE).write_text(json.dumps({**index, "tensors": count + 1}))
    with pytest.raises(RuntimeError, match="loaded 1 tensors, the index lists 2"):
        worker.pivotal_load_weights(str(bad))
    assert set(worker.loads[-1]) == set(_weights())  # back on the served version
    newer, _, _ = write_weight_dir({"x": torch.ones(2)}.items(), tmp_path, 2)
    reply = worker.pivotal_load_weights(str(newer))
    assert reply == {"path": str(newer), "tensors": 1, "bytes": 8}
    assert worker._pivotal_weights_path == str(newer)


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm_server", "rollout.server_urls=['10.0.0.5:8000']"], "not an http"),
    (["rollout.server_urls=['http://10.0.0.5:8000']"], "set rollout.engine=vllm_server"),
    (["rollout.engine=vllm_server", "rollout.server_weight_sync=rsync"], "not one of: filesystem"),
    (["rollout.engine=vllm_server", "rollout.server_retries=-1"], "server_retries"),
    (["rollout.engine=vllm_server", "rollout.server_weight_sync=lora"], "model.lora.r is 0"),
    (["rollout.engine=vllm_server", "rollout.server_weight_sync=nccl"], "model.device is cpu"),
])
def test_bad_server_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_lora_route_asks_the_server_for_the_policy_s_rank():
    from pivotal.config import LoraConfig
    from pivotal.lora import apply_lora
    from pivotal.models import load_model
    from pivotal.rollout.weight_sync import LoraAdapterSync
    model, _ = load_model("tiny-random", seed=0)
    with pytest.raises(ConfigError, match="has none"):
        LoraAdapterSync.serve_args(model)
    apply_lora(model, LoraConfig(r=12))
    assert LoraAdapterSync.serve_args(model) == ["--enable-lora", "--max-loras", "1",
                                                 "--max-lora-rank", "16"]


def test_a_plain_text_reply_is_not_a_json_error(http_server):
    """vLLM's /v1/load_lora_adapter answers 200 with plain text."""
    http_server["replies"].append((200, b"Success: LoRA adapter loaded"))
    reply = ServerClient(http_server["url"]).post("/v1/load_lora_adapter", {})
    assert reply == {"text": "Success: LoRA adapter loaded"}


def test_the_nccl_route_refuses_a_policy_off_the_gpu(tiny, tmp_path):
    from pivotal.rollout.nccl_weight_sync import NcclWeightTransfer
    with pytest.raises(ConfigError, match="set model.device=cuda"):
        NcclWeightTransfer([ServerClient("http://127.0.0.1:9")], tmp_path).push(tiny[0], 1)


@pytest.mark.vllm
def test_the_nccl_route_sends_what_vllm_s_receiver_rebuilds_into_the_policy(http_server, tmp_path,
                                                                            monkeypatch):
    """vLLM's own trainer engine and receiver code on both ends of pivotal's route, the NCCL
    communicator and CUDA streams replaced by a recording wire (no GPU here): the HTTP handshake
    reaches the server in protocol order, and the bytes broadcast, unpacked with the update info
    the server was sent, are the policy's merged weights, LoRA deltas included."""
    pytest.importorskip("vllm")
    import contextlib

    from vllm.distributed.weight_transfer import nccl_engine, packed_tensor

    from pivotal.config import LoraConfig
    from pivotal.lora import apply_lora, merged_weights
    from pivotal.models import load_model
    from pivotal.rollout import nccl_weight_sync

    model, _ = load_model("tiny-random", seed=0)
    apply_lora(model, LoraConfig(r=4))
    with torch.no_grad():  # adapters that act, so merged weights differ from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    wire: list[torch.Tensor] = []

    class Sender:
        def broadcast(self, tensor, src):
            wire.append(tensor.clone())

        def destroy(self):
            pass

    class NoStream:
        def synchronize(self):
            pass

    monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", lambda info: Sender())
    monkeypatch.setattr(packed_tensor, "_get_streams", lambda d, n: tuple(NoStream() for _ in range(n)))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    monkeypatch.setattr(nccl_weight_sync, "_check_device", lambda m: None)
    http_server["by_path"] = {"/get_world_size": {"world_size": 2},
                              "/reset_prefix_cache": {"success": True}}
    route = nccl_weight_sync.NcclWeightTransfer([ServerClient(http_server["url"])], tmp_path)
    nbytes = route.push(model, 1)

    sent = [(path, json.loads(body) if body else None) for _, path, body in http_server["requests"]]
    assert [path for path, _ in sent] == ["/get_world_size", "/init_weight_transfer_engine",
                                          "/start_weight_update", "/update_weights",
                                          "/finish_weight_update", "/reset_prefix_cache"]
    init, update = sent[1][1]["init_info"], sent[3][1]["update_info"]
    assert init["world_size"] == 3 and init["rank_offset"] == 1 and init["packed"] is True
    assert init["master_address"] == "127.0.0.1"

    received: dict[str, torch.Tensor] = {}
    chunks = iter(wire)

    class Receiver:
        def broadcast(self, tensor, src):
            tensor.copy_(next(chunks))

    meta = iter([(n, (shape, getattr(torch, dtype))) for n, dtype, shape
                 in zip(update["names"], update["dtype_names"], update["shapes"])])
    packed_tensor.packed_nccl_broadcast_consumer(
        meta, Receiver(), 0, lambda pairs: received.update((n, t.clone()) for n, t in pairs),
        buffer_size_bytes=init["packed_buffer_size_bytes"],
        num_buffers=init["packed_num_buffers"], device="cpu")
    expected = dict(merged_weights(model))
    assert received.keys() == expected.keys() and len(expected) > 10
    lora_weight = next(n for n in expected if "q_proj.weight" in n)
    base = dict(nccl_weight_sync.base_weights(model))
    assert not torch.equal(expected[lora_weight], base[lora_weight])
    for name, tensor in expected.items():
        assert torch.equal(received[name], tensor), name
    assert nbytes == sum(t.numel() * t.element_size() for t in expected.values())

    http_server["requests"].clear()  # a second push reuses the group: no new rendezvous
    route.push(model, 2)
    assert [p for _, p, _ in http_server["requests"]] == [
        "/start_weight_update", "/update_weights", "/finish_weight_update", "/reset_prefix_cache"]
    route.close()
    assert http_server["requests"][-1][1] == "/shutdown_weight_transfer_engine"
