"""Weight directories for the routes of `rollout.engine=vllm_server`.

The filesystem route: the trainer writes each version of the policy's weights as safetensors
shards plus an index (`pivotal_weights.json`: the shard files and the tensor count) into
`<root>/v<version>`, which the servers' worker extension (`pivotal.rollout.vllm_worker`) loads.
The lora route: each version is a peft adapter directory (adapter_model.safetensors +
adapter_config.json), which the server loads as a LoRA adapter. A version is staged in a hidden
directory and renamed into place when complete, so a server never reads half a version; the
previous version stays on disk until every server has loaded the new one (a failed load falls
back to it), and older ones are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from pivotal.rollout.vllm_worker import INDEX_FILE

SHARD_BYTES = 2**30  # tensors are written in files of about this size: memory stays bounded


def version_dir(root: Path, version: int) -> Path:
    return Path(root) / f"v{version:06d}"


@contextlib.contextmanager
def _staged(root: Path, version: int) -> Iterator[Path]:
    """A hidden staging directory for `version`, renamed to its final name if the block
    completes and removed if it raises. Yields the staging directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, version)
    staging = root / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_weight_dir(weights: Iterable[tuple[str, torch.Tensor]], root: Path, version: int,
                     shard_bytes: int = SHARD_BYTES) -> tuple[Path, int, int]:
    """Write `weights` (name, tensor) as version `version` under `root`, atomically.

    Tied tensors (an lm_head sharing the embedding's storage) are written as separate copies:
    vLLM's CPU backend keeps its own repacked lm_head, so leaving the tied name out left it on the
    old weights (measured: a 1.7e-3 nat mean gap after one step instead of 1e-5). Returns
    (directory, bytes written, tensors written).
    """
    from safetensors.torch import save_file

    files: list[str] = []
    shard: dict[str, torch.Tensor] = {}
    shard_size, total_bytes, count = 0, 0, 0
    shard_storages: set = set()  # of the tensors held in `shard`, all alive until the flush

    with _staged(root, version) as staging:
        def flush():
            nonlocal shard, shard_size
            if shard:
                name = f"model-{len(files) + 1:05d}.safetensors"
                save_file(shard, str(staging / name))
                files.append(name)
                shard, shard_size = {}, 0
                shard_storages.clear()

        for name, tensor in weights:
            tensor = tensor.detach().to("cpu").contiguous()
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if key in shard_storages:  # safetensors refuses shared storage within a file
                tensor = tensor.clone()
            shard_storages.add(key)
            shard[name] = tensor
            size = tensor.numel() * tensor.element_size()
            shard_size += size
            total_bytes += size
            count += 1
            if shard_size >= shard_bytes:
                flush()
        flush()
        with open(staging / INDEX_FILE, "w") as f:
            json.dump({"version": version, "files": files, "tensors": count, "bytes": total_bytes}, f)
    return version_dir(root, version), total_bytes, count


def write_adapter_dir(tensors: dict[str, torch.Tensor], lora_config, root: Path,
                      version: int) -> tuple[Path, int]:
    """Write a peft adapter (`pivotal.lora.adapter_files`) as version `version` under `root`,
    atomically. Returns (directory, bytes of the adapter tensors)."""
    from safetensors.torch import save_file

    from pivotal.lora import ADAPTER_WEIGHTS
    with _staged(root, version) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS))
        lora_config.save_pretrained(str(staging))
    return version_dir(root, version), sum(t.numel() * t.element_size() for t in tensors.values())


def prune_versions(root: Path, keep: Iterable[Path]) -> None:
    """Remove the version directories under `root` other than `keep`."""
    keep = {Path(p).resolve() for p in keep}
    for entry in Path(root).glob("v[0-9]*"):
        if entry.is_dir() and entry.resolve() not in keep:
            shutil.rmtree(entry, ignore_errors=True)
