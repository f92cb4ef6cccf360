"""The models a training run holds, built in one place: the policy (with LoRA adapters when
`model.lora.r > 0`), the auxiliary losses' modules, their DDP / FSDP2 wrapper, the whole policy
the rollout engine and the no-grad passes read, the frozen reference and the shift monitor.

Which reference: none when nothing reads one; with LoRA and `model.reference=initial` (and no
ratchet), the base model with the adapters switched off (`pivotal.lora.BaseModelView`: exact, no
second copy); otherwise a frozen copy of the initial policy or another model
(`pivotal.models.load_reference`): whole on every rank, or under FSDP2 sharded as the policy is
(`pivotal.frozen`), as is the shift monitor's own copy of the initial policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .auxiliary import build_auxiliary_losses
from .distributed import Runtime, TrainedModules, copy_full_parameters, is_sharded, main_first, wrap_for_training
from .errors import ConfigError
from .frozen import ShardedFrozen
from .lora import Adapters, apply_lora
from .models import load_model, load_reference
from .safety import low_precision_warning
from .shift_monitor import build_shift_monitor
from .update import trainable_parameters
from .validation import reference_users

log = logging.getLogger("pivotal.policy")


@dataclass
class PolicyModels:
    model: nn.Module              # the policy (peft's LoRA layers injected, when on)
    tokenizer: object
    adapters: Adapters | None     # the policy's LoRA adapters, or None (full fine-tuning)
    auxiliary: list               # pivotal.auxiliary.AuxiliaryLoss objects
    trained: nn.Module            # TrainedModules(model, auxiliary), DDP- or FSDP2-wrapped
    whole_policy: nn.Module       # `model`, or under FSDP2 a whole replica refreshed from shards
    ref_model: object | None      # the frozen reference (a model or a BaseModelView), or None
    shift_monitor: object | None


def reference_ratchets(cfg) -> bool:
    return bool(cfg.algo.reference_ratchet_every or cfg.algo.reference_ratchet_on_eval)


def build_policy_models(cfg, runtime: Runtime, device: str, model=None, tokenizer=None) -> PolicyModels:
    """Load and wrap everything the run trains or reads, in the order that keeps the random
    streams of runs without LoRA as they were (LoRA's initial A values come from torch's RNG).
    `model`/`tokenizer`: objects a Python caller already loaded (`prepare_loaded`), used in place
    of loading `model.name`; the policy is then that very object, trained in place."""
    m = cfg.model
    if model is not None:
        if runtime.active and cfg.dist.strategy == "fsdp":  # the replica is loaded by name
            raise ConfigError("dist.strategy=fsdp loads a whole replica of the policy by its name: "
                              "give the model as a name or directory, not as a loaded object")
        model, tokenizer = prepare_loaded(model, tokenizer, device, m.dtype)
    else:
        with main_first(runtime):  # rank 0 fills the model cache; the others then read it
            model, tokenizer = load_model(m.name, device, m.dtype, m.cache_dir, seed=cfg.train.seed)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    adapters = apply_lora(model, m.lora)
    base_is_reference = adapters is not None and m.reference == "initial" and not reference_ratchets(cfg)
    # a reference model is loaded only when something reads it (a KL term or the credit)
    needs_reference = bool(reference_users(cfg))
    ref_model = (load_reference(m.reference, model, tokenizer, m, device)
                 if needs_reference and not base_is_reference else None)
    auxiliary = build_auxiliary_losses(cfg, model)
    if runtime.is_main and (warning := low_precision_warning(trainable_parameters(model), cfg.optim.lr,
                                                             m.dtype)):
        log.warning(warning)
    trained = wrap_for_training(TrainedModules(model, auxiliary), runtime, cfg.dist.strategy,
                                cfg.dist.cpu_offload, cfg.dist.mixed_precision,
                                cfg.dist.reshard_after_forward)
    # the whole policy the engine and the no-grad passes read: the policy itself, or under FSDP2 a
    # replica (its weights are refreshed from the shards before every rollout)
    whole_policy, whole_adapters = model, adapters
    shard_frozen = None
    if is_sharded(trained):
        def shard_frozen(frozen: nn.Module) -> ShardedFrozen:
            return ShardedFrozen(frozen, cfg.dist.cpu_offload, cfg.dist.mixed_precision)

        if ref_model is not None:
            ref_model = shard_frozen(ref_model)
        whole_policy = load_model(m.name, device, m.dtype, m.cache_dir, seed=cfg.train.seed)[0]
        with torch.random.fork_rng():  # same layout as the policy; its values are copied over
            whole_adapters = apply_lora(whole_policy, m.lora)
        whole_policy.eval().requires_grad_(False)
        copy_full_parameters(model, whole_policy)
    base_view = whole_adapters.base_view() if whole_adapters is not None else None
    if needs_reference and base_is_reference:
        ref_model = base_view
    shift_monitor = build_shift_monitor(cfg.train, whole_policy, ref_model,
                                        m.reference == "initial" and not reference_ratchets(cfg),
                                        initial=base_view, prepare_copy=shard_frozen)
    return PolicyModels(model, tokenizer, adapters, auxiliary, trained, whole_policy, ref_model,
                        shift_monitor)


def prepare_loaded(model: nn.Module, tokenizer, device: str, dtype: str):
    """A caller's transformers model and tokenizer made ready as `load_model` makes its own: on
    the run's device and dtype, in eval mode, the tokenizer padding on the left with a pad token.
    The tokenizer is loaded from the model's `name_or_path` when not given."""
    from transformers import AutoTokenizer

    from .errors import ModelLoadError
    from .models import resolve_device, resolve_dtype

    if not hasattr(model, "generate") or not hasattr(model, "config"):
        raise ModelLoadError(f"model: expected a transformers causal LM (AutoModelForCausalLM), "
                             f"a model name or a directory, got {type(model).__name__}")
    if tokenizer is None:
        source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not source:
            raise ModelLoadError("model was given as an object without a name_or_path: pass its "
                                 "tokenizer= too")
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=resolve_device(device), dtype=resolve_dtype(dtype))
    return model.eval(), tokenizer
