"""Atomic checkpoints and resume.

Layout under `<output_dir>/checkpoints/`:
  step_000010/        model.safetensors + config (plain `from_pretrained` loads it), tokenizer,
                      trainer_state.pt (optimizer, scheduler, RNG states, step, data cursor)
  latest              a text file naming the newest complete checkpoint
A checkpoint is written into a hidden temporary directory, fsynced, and renamed into place; only
then is `latest` replaced (write-to-temp + os.replace). A crash or kill at any point leaves the
previous checkpoint and `latest` untouched; stale temporary directories are removed on the next save.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, ModelLoadError
from .safe_load import load_state_file

STATE_FILE = "trainer_state.pt"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(root: str | Path, step: int, model, tokenizer, trainer_state: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`. Returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crashed save
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as e:  # disk full, permissions, a vanished directory: say where and how much
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {e.strerror or e} "
                              f"({_free_space(root)} free there); the previous checkpoint and "
                              f"'latest' are untouched") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _write_text_atomic(root / LATEST, final.name)
    except OSError as e:  # the new checkpoint is complete; `latest` still names the previous one
        raise CheckpointError(f"wrote {final} but could not update {root / LATEST}: "
                              f"{e.strerror or e} ({_free_space(root)} free there)") from e
    _prune(root, keep)
    return final


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 1e9:.2f} GB"
    except OSError:
        return "unknown space"


def directory_bytes(path: Path) -> int:
    """Total size of the files in a checkpoint directory."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    latest = latest_checkpoint(root)
    for old in done[:-keep] if keep > 0 else []:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).exists():
            return candidate
    # `latest` missing or pointing at something gone: fall back to the newest complete directory
    complete = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return complete[-1] if complete else None


def load_trainer_state(checkpoint: Path) -> dict:
    return load_state_file(checkpoint / STATE_FILE)


def load_model_weights(checkpoint: Path, model, model_name: str) -> None:
    """Load a checkpoint's model.safetensors into `model` in place.

    A model with tied embeddings saves the shared matrix once (no lm_head entry), so a missing
    lm_head is expected; any other missing or unexpected key means another model, and raises.
    """
    from safetensors.torch import load_file

    if not (checkpoint / "model.safetensors").exists():
        what = ("holds LoRA adapters only: resume it with the run's model.lora settings"
                if (checkpoint / "adapter_config.json").exists() else "has no model.safetensors")
        raise CheckpointError(f"checkpoint {checkpoint} {what}")
    device = next(model.parameters()).device
    weights = load_file(checkpoint / "model.safetensors", device=str(device))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise ModelLoadError(f"checkpoint {checkpoint} does not match model '{model_name}'")
