"""The trained policy of a checkpoint as one plain Hugging Face model directory.

Checkpoints that `from_pretrained` cannot load by itself:
  * sharded (data-parallel) ones, `dcp/` beside the config: the consolidated policy is written
    into the checkpoint itself (`model.safetensors`), beside its shards;
  * LoRA ones (adapters only, single-process or sharded): the base model (`model.name` of the
    run's config) with the adapters merged in by peft's `merge_and_unload`, written to
    `<checkpoint>/merged/` by default. A separate directory because transformers, when peft is
    installed, treats a directory holding adapter_config.json as an adapter to load on top of
    the base it names, which would shadow merged weights beside it.
Runs in one process; the files appear atomically (weights last, by rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .checkpoint import STATE_FILE, _fsync_dir
from .checkpoint_sharded import CONSOLIDATED, is_sharded_checkpoint, load_policy_weights
from .config import config_from_dict
from .errors import CheckpointError
from .lora import apply_lora, is_adapter_checkpoint, lora_enabled, merged_model
from .safe_load import load_state_file

MERGED_DIR = "merged"


def run_config(checkpoint: Path):
    """The Config of the run that wrote `checkpoint` (from its trainer_state.pt)."""
    path = Path(checkpoint) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{checkpoint} is not a pivotal checkpoint (no {STATE_FILE})")
    return config_from_dict(load_state_file(path)["config"], where=str(path))


def default_export_dir(checkpoint: Path) -> Path:
    return Path(checkpoint) / MERGED_DIR if is_lora_checkpoint(checkpoint) else Path(checkpoint)


def is_lora_checkpoint(checkpoint: Path) -> bool:
    checkpoint = Path(checkpoint)
    if is_adapter_checkpoint(checkpoint):
        return True
    return is_sharded_checkpoint(checkpoint) and lora_enabled(run_config(checkpoint).model.lora)


def exportable(checkpoint: Path) -> bool:
    """Whether `checkpoint` needs an export before `from_pretrained` loads it."""
    return is_sharded_checkpoint(checkpoint) or is_adapter_checkpoint(checkpoint)


def export_checkpoint(checkpoint: Path, out_dir: Path | None = None) -> Path:
    """Write the policy of a sharded or LoRA checkpoint as one Hugging Face model directory
    (`from_pretrained` and `pivotal eval --model` load it). Returns the directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    checkpoint = Path(checkpoint)
    if not exportable(checkpoint):
        if (checkpoint / CONSOLIDATED).exists():
            raise CheckpointError(f"{checkpoint} is already a consolidated (single-process) "
                                  f"checkpoint: load it directly")
        raise CheckpointError(f"{checkpoint} is not a sharded or LoRA pivotal checkpoint (no dcp/ "
                              f"directory, no adapter_config.json)")
    if is_lora_checkpoint(checkpoint):
        policy = _merged_lora_policy(checkpoint)
    else:
        config = AutoConfig.from_pretrained(checkpoint)
        policy = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None))
        load_policy_weights(checkpoint, policy)
    out = Path(out_dir) if out_dir is not None else default_export_dir(checkpoint)
    write_model_dir(policy, AutoTokenizer.from_pretrained(checkpoint), out)
    return out


def _merged_lora_policy(checkpoint: Path):
    """The run's base model with the checkpoint's adapters, merged."""
    import torch

    from .models import load_model

    cfg = run_config(checkpoint)
    with torch.random.fork_rng():  # the adapters' random init is overwritten by the checkpoint
        base, _ = load_model(cfg.model.name, "cpu", cfg.model.dtype, cfg.model.cache_dir,
                             seed=cfg.train.seed)
        adapters = apply_lora(base, cfg.model.lora)
    if is_sharded_checkpoint(checkpoint):
        load_policy_weights(checkpoint, adapters.model, trainable_only=True)
    else:
        adapters.load(checkpoint)
    return merged_model(adapters)


def write_model_dir(policy, tokenizer, out: Path) -> None:
    """save_pretrained into `out` atomically: staged beside it, then renamed file by file with the
    weights last, so a reader never sees new weights with an old config or half a file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        policy.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == CONSOLIDATED):  # weights last
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(f, out / f.name)
        _fsync_dir(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
