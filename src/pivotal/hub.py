"""Is the Hugging Face hub reachable? Asked quickly, so an offline machine fails fast, not late.

Shared by model loading and hub datasets: both try the local cache first and go online only when
no offline flag is set and the hub answers within a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


def env_offline() -> bool:
    """Whether an HF offline flag (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE) is set."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v.strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within timeout seconds (DNS included)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:  # in a thread, since name resolution itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])
