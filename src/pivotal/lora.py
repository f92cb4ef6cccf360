"""LoRA adapters on the policy, through peft: what trains, what is saved, what the base model is.

LoRA (Hu et al., https://arxiv.org/abs/2106.09685) trains a low-rank update W + (alpha/r) B A of
each target linear layer and freezes W. Why peft: it is what TRL, verl's FSDP workers and
OpenRLHF train LoRA with, its adapter directories are what vLLM and the hub load, and its
`merge_and_unload` gives the plain model back.

How pivotal holds it: peft injects its LoRA layers into the Hugging Face model in place, and the
trainer goes on using that model (`Adapters.model`), so the log-prob code, the rollout engine and
FSDP2's per-layer sharding see the module tree they always did; the `PeftModel` around it is kept
for saving and for switching the adapters off.

Exactness of the frozen reference: B starts at zero, so at step 0 the policy equals the base, and
W never trains, so the base with its adapters switched off *is* the initial policy at every step,
bit for bit (peft's disabled layer returns base_layer(x)). `BaseModelView` gives that without a
second copy of the weights. Where the reference must move (OWPO's ratchets) a real copy is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

ADAPTER_NAME = "default"  # peft's name for the one adapter a run trains
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def lora_enabled(settings) -> bool:
    return settings is not None and settings.r > 0


def peft_config(settings):
    """A peft LoraConfig from the `model.lora` section."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ConfigError(f"model.lora needs peft ({e}): pip install peft") from e
    targets = list(settings.target_modules)
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      bias="none", task_type="CAUSAL_LM")


@dataclass
class Adapters:
    """The policy's LoRA adapters. `model` is the Hugging Face model with peft's layers in it;
    `peft_model` the PeftModel around it."""

    peft_model: nn.Module

    @property
    def model(self) -> nn.Module:
        return self.peft_model.get_base_model()

    def base_view(self) -> BaseModelView:
        return BaseModelView(self.model, self.peft_model.disable_adapter)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights only, under peft's file names (what `save` writes)."""
        from peft import get_peft_model_state_dict
        return get_peft_model_state_dict(self.peft_model, adapter_name=ADAPTER_NAME)

    def save(self, directory: Path) -> None:
        """adapter_model.safetensors + adapter_config.json: a directory peft, vLLM and the hub load
        as an adapter (`PeftModel.from_pretrained(base, directory)`)."""
        self.peft_model.save_pretrained(directory, safe_serialization=True)

    def load(self, directory: Path) -> None:
        """Adapter weights from `directory` into this policy, in place; another adapter layout
        (rank, targets) raises naming the file."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory) / ADAPTER_WEIGHTS
        if not path.exists():
            raise CheckpointError(f"{directory} has no {ADAPTER_WEIGHTS}: not a LoRA checkpoint")
        device = next(self.model.parameters()).device
        weights = load_file(path, device=str(device))
        expected = self.state_dict()
        if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
            raise CheckpointError(f"{path} holds other adapters than model.lora describes "
                                  f"(rank or target modules differ)")
        set_peft_model_state_dict(self.peft_model, weights, adapter_name=ADAPTER_NAME)


def apply_lora(model: nn.Module, settings) -> Adapters | None:
    """Inject LoRA layers into `model` in place (its base weights freeze); None when r = 0.
    The adapters' initial values come from torch's global RNG (peft's Kaiming init of A)."""
    if not lora_enabled(settings):
        return None
    from peft import get_peft_model

    return Adapters(get_peft_model(model, peft_config(settings)))


def is_adapter_checkpoint(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def adapter_rank(path: Path) -> int:
    return int(json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("r", 0))


class BaseModelView:
    """The policy with its adapters switched off, i.e. the frozen base model, sharing its memory.

    A call through the view, or through any module reached from it (the trunk, the LM head from
    `get_output_embeddings()`), runs with every adapter disabled; the policy is untouched outside
    those calls. It stands in for a model wherever one is only *read* (reference log-probs,
    divergences, the shift monitor's initial policy).
    """

    def __init__(self, module: nn.Module, adapters_off):
        self._module, self._adapters_off = module, adapters_off

    def __call__(self, *args, **kwargs):
        with self._adapters_off():
            return self._module(*args, **kwargs)

    def _wrap(self, value):
        return BaseModelView(value, self._adapters_off) if isinstance(value, nn.Module) else value

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        if isinstance(value, nn.Module):
            return self._wrap(value)
        if name.startswith("get_") and callable(value):  # get_output_embeddings() and kin
            return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))
        return value


def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as a plain Hugging Face model names them, each LoRA layer's weight
    merged (W + delta), one tensor at a time; a model without adapters: its state dict.

    Out of place: the training weights are never touched, unlike peft's merge/unmerge round trip,
    whose W + delta - delta drifts from W in floating point after every sync.
    """
    return _plain_weights(model, merge=True)


def base_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The frozen base model's weights (W, adapters left out) under plain Hugging Face names:
    what a vLLM server that applies the adapters itself serves."""
    return _plain_weights(model, merge=False)


@torch.no_grad()
def _plain_weights(model: nn.Module, merge: bool) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, tensor.detach()
            continue
        from peft.tuners.lora import LoraLayer  # only a model with adapters gets here

        owner, leaf = name.rsplit(".base_layer.", 1)
        plain = f"{owner}.{leaf}"
        layer = model.get_submodule(owner)
        if merge and leaf == "weight" and isinstance(layer, LoraLayer) and not layer.merged:
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            yield plain, tensor.detach() + delta
        else:
            yield plain, tensor.detach()


def has_adapters(model: nn.Module) -> bool:
    """Whether `model` carries peft's LoRA layers (the policy of a run with model.lora.r > 0)."""
    return ADAPTER_NAME in (getattr(model, "peft_config", None) or {})


@torch.no_grad()
def adapter_files(model: nn.Module) -> tuple[dict[str, torch.Tensor], object]:
    """The adapters injected into `model` as peft saves them: (tensors under peft's file names,
    `base_model.model.` + the module path, copied to the CPU; the LoraConfig). What
    `Adapters.save` writes, taken from the injected model itself (a rollout replica under FSDP2
    has no PeftModel of its own)."""
    from peft import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return ({f"base_model.model.{k}": v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            model.peft_config[ADAPTER_NAME])


def merged_model(adapters: Adapters) -> nn.Module:
    """The adapted policy as a plain Hugging Face model (peft's `merge_and_unload`), for export.
    Consumes `adapters`: its model is changed in place."""
    return adapters.peft_model.merge_and_unload()
