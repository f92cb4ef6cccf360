"""HTTP calls to one vLLM server, with a bounded retry and errors that name the URL.

A connection failure, a timeout or a 5xx reply is retried `retries` times with exponential
backoff (1 s, 2 s, 4 s, ...); a 4xx reply is the request's fault and is not retried. Either way
the final error is a `RolloutServerError` naming the server, the route and the last reason.
"""

from __future__ import annotations

import time

import requests

from pivotal.errors import RolloutServerError


class ServerClient:
    """One server (`url`, e.g. http://10.0.0.5:8000)."""

    def __init__(self, url: str, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 1.0):
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._model: str | None = None

    def call(self, method: str, route: str, payload: dict | None = None,
             timeout_s: float | None = None, retries: int | None = None) -> dict:
        """`method` (GET/POST) `route` with a JSON body; the reply's JSON ({} when empty,
        {"text": ...} when it is not JSON, as /v1/load_lora_adapter's plain-text success)."""
        retries = self.retries if retries is None else retries
        where = f"vLLM server {self.url}{route}"
        reason = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                reply = requests.request(method, self.url + route, json=payload,
                                         timeout=timeout_s or self.timeout_s)
            except requests.Timeout:
                reason = f"no reply within {timeout_s or self.timeout_s:g} s"
                continue
            except requests.ConnectionError as e:
                reason = f"cannot connect ({type(e).__name__}: is the server running?)"
                continue
            if reply.status_code >= 500:
                reason = f"HTTP {reply.status_code}: {reply.text[:500]}"
                continue
            if reply.status_code >= 400:
                raise RolloutServerError(f"{where} refused the request: HTTP {reply.status_code}: "
                                         f"{reply.text[:500]}")
            if not reply.content:
                return {}
            try:
                return reply.json()
            except ValueError:
                return {"text": reply.text}
        tries = f"{retries + 1} attempt" + ("s" if retries else "")
        raise RolloutServerError(f"{where} failed after {tries}: {reason}")

    def post(self, route: str, payload: dict | None = None, **kwargs) -> dict:
        return self.call("POST", route, payload, **kwargs)

    def get(self, route: str, **kwargs) -> dict:
        return self.call("GET", route, **kwargs)

    def model_name(self) -> str:
        """The name the server serves its model under (its first entry in /v1/models)."""
        if self._model is None:
            models = self.get("/v1/models").get("data") or []
            if not models:
                raise RolloutServerError(f"vLLM server {self.url}/v1/models lists no model")
            self._model = models[0]["id"]
        return self._model

    def reset_prefix_cache(self, after: str) -> None:
        """Drop the server's cached prompt KV blocks, computed with the weights `after` replaced.
        The reset fails while a request still holds blocks: a few tries."""
        for _ in range(5):
            if self.post("/reset_prefix_cache").get("success"):
                return
        raise RolloutServerError(f"vLLM server {self.url}/reset_prefix_cache kept failing after "
                                 f"{after}: requests still running on it?")

    def healthy(self) -> bool:
        """One quick /health probe, no retry."""
        try:
            return requests.get(self.url + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False
