"""Rollouts on vLLM servers (`rollout.engine=vllm_server`): stock `vllm serve` processes, started
by the user (`rollout.server_urls`) or, for a local run, by pivotal; weights pushed after every
optimizer step through `pivotal.rollout.weight_sync`.

Same interface and batch fields as the in-process engines. Each prompt is one /v1/completions
request for its `n` samples, carrying the sampling parameters and a per-prompt seed; requests go
out concurrently, prompt i of rank r to server (r * prompts + i) mod servers. Replies return the
sampled token ids and their log-probs under the server's `--logprobs-mode processed_logprobs`
(log-softmax of the temperature-scaled logits, the convention of the other engines and of the
trainer's recomputation), so the gap metric and TIS work unchanged.

Requests also pin what a server's generation config could otherwise change (repetition, presence
and frequency penalties, min-p): the trainer recomputes log-probs of plain temperature sampling.

Data parallelism: every rank sends its own prompts; rank 0 alone writes and pushes weights, and
all ranks wait for its result, so none samples before the new weights are live and a failed push
stops every rank.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pivotal.batch import RolloutBatch
from pivotal.distributed import SINGLE, Runtime
from pivotal.errors import ConfigError, RolloutServerError
from pivotal.models import eos_token_ids
from pivotal.rollout.base import SamplingParams, assemble_batch
from pivotal.rollout.local_server import LocalServer, free_port, serve_command
from pivotal.rollout.server_client import ServerClient
from pivotal.rollout.weight_files import write_weight_dir
from pivotal.rollout.weight_sync import WEIGHT_SYNC_ROUTES

MAX_CONCURRENT_REQUESTS = 64


class VLLMServerEngine:
    """Sampling on vLLM servers, whose weights `sync_weights` replaces."""

    def __init__(self, model, tokenizer, rollout_cfg, output_dir: str | Path, seed: int = 0,
                 runtime: Runtime = SINGLE):
        if rollout_cfg.server_weight_sync not in WEIGHT_SYNC_ROUTES:
            raise ConfigError(f"rollout.server_weight_sync={rollout_cfg.server_weight_sync!r}: "
                              f"choose one of {sorted(WEIGHT_SYNC_ROUTES)}")
        self.tokenizer, self.runtime = tokenizer, runtime
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.sync_seconds: list[float] = []
        self.sync_bytes: list[int] = []
        self.local: LocalServer | None = None
        self.version = 0
        weight_root = Path(rollout_cfg.server_weight_dir or Path(output_dir) / "vllm_weights")
        route = WEIGHT_SYNC_ROUTES[rollout_cfg.server_weight_sync]
        urls = list(rollout_cfg.server_urls)
        if not urls:  # a local run: rank 0 starts a server on the policy as it is now
            url = self._start_local(model, tokenizer, rollout_cfg, route, weight_root,
                                    Path(output_dir), seed) if runtime.is_main else None
            urls = [runtime.broadcast(url)]
        self.clients = [ServerClient(u, rollout_cfg.server_timeout_s, rollout_cfg.server_retries)
                        for u in urls]
        self.route = route(self.clients, weight_root, rollout_cfg)
        self.pool = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_REQUESTS)
        for client in self.clients:
            client.model_name()  # fails now, naming the URL, if a server is unreachable
        if rollout_cfg.server_urls or self.route.push_after_start:
            # servers the user started hold whatever weights they loaded, and a local server of
            # the lora route the base alone (on every rank: all wait for rank 0's push)
            self.sync_weights(model)

    def _start_local(self, model, tokenizer, cfg, route, weight_root: Path, output_dir: Path,
                     seed: int) -> str:
        from pivotal.rollout.vllm_engine import _drop_quantization

        path, _, _ = write_weight_dir(route.served_weights(model), weight_root, 0)
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        _drop_quantization(str(path))
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        command = serve_command(cfg.server_python or sys.executable, str(path.resolve()), free_port(),
                                dtype, cfg.vllm_max_model_len, cfg.vllm_kv_cache_gb, seed,
                                route.serve_args(model) + list(cfg.server_args))
        self.local = LocalServer(command, output_dir / "vllm_server.log",
                                 startup_timeout_s=cfg.server_startup_timeout_s,
                                 env=route.serve_env)
        return self.local.url

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model) -> None:
        """Push the policy's weights (LoRA merged in, or the adapters alone on the lora route) to
        every server; every rank returns only once they are live, and raises if the push failed."""
        t0 = time.perf_counter()
        self.version += 1
        failure, nbytes = None, 0
        if self.runtime.is_main:
            try:
                nbytes = self.route.push(model, self.version)
            except Exception as e:  # reported on every rank below
                failure = e
        failed, nbytes = self.runtime.sum_floats(float(failure is not None), float(nbytes))
        if failed:
            if failure is not None:
                raise failure
            raise RolloutServerError("rank 0 could not push the new weights to the vLLM servers; "
                                     "its error says why")
        self.sync_seconds.append(time.perf_counter() - t0)
        self.sync_bytes.append(int(nbytes))  # the same on every rank

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None) -> tuple[RolloutBatch, list[str]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = [row[mask.bool()].tolist() for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
        spread = self.runtime.rank * len(prompts)
        futures = []
        for i, prompt_ids in enumerate(ids):
            # one seed per prompt, as the in-process engine; vLLM derives the n samples' seeds
            prompt_seed = None if seed is None else (seed + i * num_samples) % (2**31)
            client = self.clients[(spread + i) % len(self.clients)]
            futures.append(self.pool.submit(self._complete, client, prompt_ids, num_samples,
                                            params, prompt_seed))
        tokens, logps = [], []
        for future in futures:
            for sample_tokens, sample_logps in future.result():
                tokens.append(sample_tokens)
                logps.append(sample_logps)
        return assemble_batch(self.tokenizer, enc["input_ids"], enc["attention_mask"], tokens,
                              logps, num_samples, self.eos_ids)

    def _complete(self, client: ServerClient, prompt_ids: list[int], n: int,
                  params: SamplingParams, seed: int | None) -> list[tuple[list[int], list[float]]]:
        greedy = params.temperature <= 0
        payload = {
            "model": self.route.request_model(client), "prompt": prompt_ids, "n": n,
            "max_tokens": params.max_new_tokens, "temperature": 0.0 if greedy else params.temperature,
            "top_p": params.top_p, "top_k": params.top_k if params.top_k > 0 else -1,
            "seed": seed, "logprobs": 0, "return_token_ids": True,
            "stop_token_ids": self.eos_ids, "skip_special_tokens": True,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "min_p": 0.0,
        }
        reply = client.post("/v1/completions", payload)
        choices = sorted(reply.get("choices") or [], key=lambda c: c["index"])
        if len(choices) != n:
            raise RolloutServerError(f"vLLM server {client.url}/v1/completions returned "
                                     f"{len(choices)} samples, not {n}")
        out = []
        for choice in choices:
            sample = list(choice.get("token_ids") or [])
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
            if len(logprobs) != len(sample):
                raise RolloutServerError(f"vLLM server {client.url}: {len(sample)} tokens but "
                                         f"{len(logprobs)} log-probs in a reply")
            out.append((sample, [float(x) for x in logprobs]))
        return out

    def score(self, sequences: list[list[int]], temperature: float = 1.0) -> list[list[float]]:
        """Each sequence's per-token log-probs under the server's current weights (the first
        token has none and is left out): len(seq) - 1 values per sequence. For checking that a
        push arrived."""
        def one(i: int, seq: list[int]) -> list[float]:
            client = self.clients[i % len(self.clients)]
            reply = client.post("/v1/completions", {
                "model": self.route.request_model(client), "prompt": seq, "max_tokens": 1,
                "temperature": temperature, "prompt_logprobs": 0})
            positions = reply["choices"][0]["prompt_logprobs"][1:]
            return [float(pos[str(tok)]["logprob"]) for pos, tok in zip(positions, seq[1:])]
        return list(self.pool.map(one, range(len(sequences)), sequences))

    def close(self) -> None:
        """Stop a server pivotal started and remove the weight versions written for it."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.local is not None:
            self.local.stop()
            self.local = None
        if self.runtime.is_main:
            self.route.close()
