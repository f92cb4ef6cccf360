"""Sharded checkpoints of data-parallel runs, with torch.distributed.checkpoint (DCP), and the
consolidated Hugging Face export.

Why DCP: every rank writes only its own shards (FSDP2) or one rank writes each replicated tensor
(DDP), in parallel, and a load reshards to whatever world size reads it: 2 ranks -> 1 process
works, as does a plain single-process load for the export. torchtitan and verl checkpoint this way.

Layout of `<output_dir>/checkpoints/step_000010/` (written by every rank together):
  dcp/               model (policy + auxiliary heads) and optimizer state, sharded
  trainer_state.pt   what every rank shares (step, data cursor, scheduler, history, config ...)
  rank_00000.pt ...  each rank's RNG states (its sampling stream)
  config.json, tokenizer files
  model.safetensors  the consolidated policy, once exported (`pivotal.export`; the end of a run)
With LoRA (`trainable_only`) the shards hold only what trains (adapters, auxiliary heads) and
their optimizer state; the frozen base comes from `model.name` on load.
Atomic as the single-process checkpoints (`pivotal.checkpoint`): every rank writes into one hidden
temporary directory; after a barrier (every rank has finished) rank 0 fsyncs it, renames it into
place and only then replaces `latest`. A kill at any moment leaves the last good checkpoint.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from .checkpoint import LATEST, STATE_FILE, _free_space, _fsync_dir, _prune, _write_text_atomic
from .distributed import Runtime, TrainedModules
from .errors import CheckpointError
from .safe_load import load_state_file, safe_dcp_reader

DCP_DIR = "dcp"
CONSOLIDATED = "model.safetensors"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / DCP_DIR).is_dir()


def _options(trainable_only: bool) -> StateDictOptions:
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def _state_dicts(modules: nn.Module, optimizer, trainable_only: bool) -> tuple[dict, dict]:
    """(model, optimizer) state dicts as DCP saves them. trainable_only also drops frozen tensors
    that `ignore_frozen_params` keeps: a tied LM head is reached only through the state dict, not
    as a parameter of its own, so its requires_grad=False is not seen (the whole embedding would
    be saved with every LoRA checkpoint)."""
    model_sd, optim_sd = get_state_dict(modules, optimizer, options=_options(trainable_only))
    return (_without_frozen(modules, model_sd) if trainable_only else model_sd), optim_sd


def _without_frozen(modules: nn.Module, state: dict) -> dict:
    frozen = {name for name, p in modules.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
    return {k: v for k, v in state.items() if k not in frozen}


def save_sharded(root: Path, step: int, modules: TrainedModules, optimizer, shared_state: dict,
                 rank_state: dict, tokenizer, runtime: Runtime, keep: int = 2,
                 trainable_only: bool = False) -> Path:
    """Write checkpoint `step` from every rank at once; returns its path (on every rank).
    trainable_only: leave out frozen parameters (a LoRA run's base model)."""
    root = Path(root)
    final = root / f"step_{step:06d}"
    tmp = None
    if runtime.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # leftovers of a crashed save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    tmp = Path(runtime.broadcast(tmp))
    try:
        model_sd, optim_sd = _state_dicts(modules, optimizer, trainable_only)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
        torch.save(rank_state, tmp / rank_file(runtime.rank))
        if runtime.is_main:
            torch.save(shared_state, tmp / STATE_FILE)
            tokenizer.save_pretrained(tmp)
            config = copy.deepcopy(modules.policy.config)  # the export keeps the trained dtype
            config.dtype = next(modules.policy.parameters()).dtype
            config.save_pretrained(tmp)
    except OSError as e:
        raise CheckpointError(f"rank {runtime.rank} could not write checkpoint {final}: "
                              f"{e.strerror or e} ({_free_space(root)} free there); the previous "
                              f"checkpoint and 'latest' are untouched") from e
    runtime.barrier()  # every rank has written its part
    if runtime.is_main:
        try:
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
            _write_text_atomic(root / LATEST, final.name)
        except OSError as e:
            raise CheckpointError(f"could not finish checkpoint {final}: {e.strerror or e} "
                                  f"({_free_space(root)} free there)") from e
        _prune(root, keep)
    runtime.barrier()  # `latest` names it before any rank goes on
    return final


def load_sharded(path: Path, modules: TrainedModules, optimizer, runtime: Runtime,
                 trainable_only: bool = False) -> tuple[dict, dict | None]:
    """Load model and optimizer shards into `modules` / `optimizer` (resharding to this world
    size). Returns (the shared trainer state, this rank's state or None when the checkpoint was
    written by fewer ranks)."""
    path = Path(path)
    model_sd, optim_sd = _state_dicts(modules, optimizer, trainable_only)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=safe_dcp_reader(path / DCP_DIR), no_dist=not runtime.active)
    set_state_dict(modules, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_options(trainable_only))
    shared = load_state_file(path / STATE_FILE)
    mine = path / rank_file(runtime.rank)
    own = load_state_file(mine) if mine.exists() else None
    return shared, own


def load_policy_weights(path: Path, policy, trainable_only: bool = False) -> None:
    """A sharded checkpoint's policy weights into a whole single-process `policy`, in place
    (trainable_only: its adapters, into a policy with the same LoRA layers)."""
    modules = TrainedModules(policy, [])
    weights = get_model_state_dict(modules, options=_options(trainable_only))
    state = {"model": _without_frozen(modules, weights) if trainable_only else weights}
    dcp.load(state, storage_reader=safe_dcp_reader(Path(path) / DCP_DIR), no_dist=True)
    set_model_state_dict(modules, state["model"], options=_options(trainable_only))
