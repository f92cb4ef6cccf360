"""Data parallelism on torch.distributed: the process group, reductions across ranks, DDP / FSDP2
wrapping of the trained modules, and which rank writes.

torchrun (https://pytorch.org/docs/stable/elastic/run.html) sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address; `init_runtime` joins that group (nccl on CUDA, gloo on CPU) with a
collective timeout of `dist.timeout_s`. Without torchrun, `SINGLE` stands for the one process and
every reduction returns its input unchanged, so single-process runs execute exactly the code and
floating-point operations they did before this module existed.

Why torch.distributed's own DDP and FSDP2 (`fully_shard`): they are what torchtitan, TRL
(through accelerate) and verl's FSDP workers build on; FSDP2 shards each parameter as a DTensor
along dim 0, so `torch.distributed.checkpoint` saves and reshards it without gathering.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import ConfigError, ModelLoadError

log = logging.getLogger("pivotal.distributed")


@dataclass(frozen=True)
class Runtime:
    """This process's place among the ranks. `device` is where collective tensors live."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- reductions (each is one collective; the identity in one process)
    def _reduce(self, values: Tensor, op) -> Tensor:
        if not self.active:
            return values
        out = values.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=op)
        return out.to(values.device)

    def sum(self, values: Tensor) -> Tensor:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Tensor) -> Tensor:
        return self._reduce(values, dist.ReduceOp.MAX)

    def sum_floats(self, *values: float) -> list[float]:
        """Several Python numbers summed across ranks in one float64 all-reduce."""
        if not self.active:
            return list(values)
        return self.sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def max_int(self, value: int) -> int:
        return int(self.max(torch.tensor([value], dtype=torch.int64)).item()) if self.active else value

    def min_int(self, value: int) -> int:
        return -self.max_int(-value)

    def all_true(self, flag: bool) -> bool:
        return self.min_int(int(flag)) == 1

    def reduce_statistics(self, stats: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
        """Mini-batch statistics of this rank's rows -> of every rank's rows (`_sum` names add,
        `_max` names take the maximum, as `pivotal.algos.credit.merge_statistics`)."""
        if not self.active or not stats:
            return stats
        out = {}
        for key in sorted(stats):  # the same order on every rank
            value = stats[key]
            if key.endswith("_sum"):
                out[key] = self.sum(value)
            elif key.endswith("_max"):
                out[key] = self.max(value)
            else:
                raise ValueError(f"statistic '{key}' must end in '_sum' or '_max'")
        return out

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` (small Python values: metrics, records), in rank order."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Runtime()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_for_ranks(cfg) -> None:
    """Under torchrun with dist.strategy=fsdp, turn `optim.share_prompt` off: that layout runs one
    forward or two per micro-batch depending on its rows (`pivotal.logprobs.response_states`),
    and FSDP2's per-layer all-gathers must pair up across ranks; packed rows and plain rows run
    one forward each."""
    if cfg.optim.share_prompt and cfg.dist.strategy == "fsdp" and launched_by_torchrun():
        log.info("optim.share_prompt is off under dist.strategy=fsdp: its number of forwards per "
                 "micro-batch depends on the rows, and FSDP2's all-gathers must pair up across ranks")
        cfg.optim.share_prompt = False


def init_runtime(device: str, timeout_s: float) -> Runtime:
    """Join torchrun's process group (once per process), or return SINGLE without torchrun.

    `device` is model.device: cuda (or auto with CUDA present) selects nccl and the GPU
    LOCAL_RANK names; anything else gloo on the CPU.
    """
    if not launched_by_torchrun():
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return Runtime(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                   device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


@contextlib.contextmanager
def main_first(runtime: Runtime):
    """Rank 0 runs the block first (it may fill a cache: the built-in model's safetensors), then
    the other ranks, which find the cache filled."""
    if not runtime.is_main:
        runtime.barrier()
    yield
    if runtime.is_main:
        runtime.barrier()


def shutdown(runtime: Runtime) -> None:
    if runtime.active and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, runtime: Runtime) -> str:
    """model.device for this rank: 'cuda' / 'auto' become the GPU LOCAL_RANK names."""
    if runtime.active and runtime.device.type == "cuda" and device in ("cuda", "auto"):
        return f"cuda:{runtime.local_rank}"
    return device


def check_same_config(runtime: Runtime, config: dict) -> None:
    """Raise ConfigError on every rank when the ranks were given different configs, naming the
    ranks and the first keys that differ (a different seed or config file would otherwise train
    a silently inconsistent model)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    digests = runtime.gather_objects(digest)
    if len(set(digests)) == 1:
        return
    configs = runtime.gather_objects(config)
    flat = [_flatten(c) for c in configs]
    problems = []
    for rank in range(1, len(flat)):
        keys = sorted(k for k in flat[0].keys() | flat[rank].keys()
                      if flat[0].get(k) != flat[rank].get(k))
        if keys:
            shown = ", ".join(f"{k} ({flat[0].get(k)} vs {flat[rank].get(k)})" for k in keys[:3])
            problems.append(f"rank {rank} differs from rank 0 in {shown}")
    # leave the process group before the error ends the process: a gloo group still alive at
    # interpreter exit can abort it ("terminate called without an active exception", exit code
    # -6 instead of the config error's 2); the barrier keeps a rank from closing a connection
    # another rank is still reading the configs from
    runtime.barrier()
    shutdown(runtime)
    raise ConfigError("the ranks were started with different configs: " + "; ".join(problems))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out


# ---------------------------------------------------------------------------- trained modules

class TrainedModules(nn.Module):
    """The policy and the auxiliary losses' modules, as the one module that DDP or FSDP2 wraps.

    Its forward runs a function of the policy: `modules(lambda policy: ...)`. The log-prob code
    calls the policy's trunk and LM head separately (logits only for response tokens), which
    would bypass a wrapper's forward hooks; passing the whole computation as the forward keeps
    every parameter use inside the wrapped forward, where DDP prepares its gradient reduction and
    FSDP2 all-gathers the root's parameters (embeddings, final norm, LM head, auxiliary heads).
    """

    def __init__(self, policy: nn.Module, auxiliary: list[nn.Module]):
        super().__init__()
        self.policy = policy
        self.auxiliary = nn.ModuleList(auxiliary)

    def forward(self, fn):
        return fn(self.policy)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM (`<base_model_prefix>.layers`)."""
    trunk = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"dist.strategy=fsdp shards per decoder layer, but model type "
                             f"'{getattr(model.config, 'model_type', '?')}' has no "
                             f"<base_model_prefix>.layers list; use dist.strategy=ddp")
    return layers


def wrap_for_training(modules: TrainedModules, runtime: Runtime, strategy: str,
                      cpu_offload: bool = False, mixed_precision: str = "none",
                      reshard_after_forward: bool = True) -> nn.Module:
    """DDP or FSDP2 around `modules` (in place for FSDP2); `modules` itself in one process.
    Build the optimizer from the returned module's parameters afterwards (FSDP2 replaces them
    with sharded DTensors). `reshard_after_forward=False` keeps each layer's gathered weights
    from its forward to its backward (one all-gather per micro-batch instead of two; the whole
    weights live through each forward and backward)."""
    if not runtime.active:
        return modules
    if strategy == "ddp":
        ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(modules, device_ids=ids)
    if strategy != "fsdp":
        raise ConfigError(f"dist.strategy '{strategy}' is not one of: ddp, fsdp")
    from torch.distributed.fsdp import fully_shard

    options = fsdp_options(cpu_offload, mixed_precision)
    for layer in decoder_layers(modules.policy):
        fully_shard(layer, **options, reshard_after_forward=reshard_after_forward)
    fully_shard(modules, **options)  # the root: FSDP2 keeps its weights to the backward anyway
    return modules


def fsdp_options(cpu_offload: bool, mixed_precision: str) -> dict:
    """`fully_shard` keywords for dist.cpu_offload and dist.mixed_precision."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    options = {}
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    if mixed_precision == "bfloat16":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                    reduce_dtype=torch.float32)
    return options


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool):
    """Reduce gradients across ranks in this backward (the last micro-batch of a mini-batch) or
    only accumulate them locally (the others): DDP's `no_sync`, FSDP2's
    `set_requires_gradient_sync`."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        with contextlib.nullcontext() if enabled else wrapped.no_sync():
            yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDP2 module
        wrapped.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def unwrapped(wrapped: nn.Module) -> TrainedModules:
    return wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped


def is_sharded(wrapped: nn.Module) -> bool:
    return hasattr(wrapped, "set_requires_gradient_sync")


def full_tensor(t: Tensor) -> Tensor:
    """A DTensor's whole value (an all-gather), a plain tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def copy_full_parameters(source: nn.Module, target: nn.Module) -> None:
    """target <- source's parameters and buffers, one tensor at a time: under FSDP2 each sharded
    parameter is all-gathered alone (never more than one tensor's full value extra). A sharded
    target (the FSDP2 reference) takes its shard: locally from a source sharded the same way,
    else sliced from the whole value."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    dest = dict(target.named_parameters(remove_duplicate=False))
    dest.update(target.named_buffers())
    for name, value in [*source.named_parameters(), *source.named_buffers()]:
        if name not in dest:
            continue
        out = dest[name]
        if not isinstance(out, DTensor):
            out.copy_(full_tensor(value))
        elif isinstance(value, DTensor) and value.placements == out.placements:
            out.to_local().copy_(value.to_local())
        else:  # every rank holds the whole value: each keeps its slice, nothing is sent
            out.to_local().copy_(distribute_tensor(full_tensor(value).to(out.dtype), out.device_mesh,
                                                   out.placements, src_data_rank=None).to_local())
