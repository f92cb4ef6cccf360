"""What bounds the FSDP2 rollout replica's refresh: bytes, or the number of collectives?

Under FSDP2 every rank refreshes a whole replica of the policy from the shards before each
rollout (`pivotal.distributed.copy_full_parameters`: one all-gather per tensor, 272 for the
built-in model). Measured on 2 gloo ranks x 1 thread, the built-in model, in one run:

  per tensor   copy_full_parameters, as the trainer runs it
  per layer    one all-gather per FSDP2 group instead (`FSDPModule.unshard()`, then copy out;
               the root's few tensors per tensor): the bucketing a per-call overhead would call for
  flat         one all_gather_into_tensor of the whole model's bytes: the ceiling, what moving
               the bytes alone costs on this transport

and prints each one's seconds (median of --repeats rounds, the arms taking turns) and its ratio
to flat. A ratio near 1 says the refresh is bound by the bytes the transport moves, not by how
many collectives carry them.

    python benchmarks/replica_refresh.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch


def _per_layer(source, target) -> None:
    """target <- source, one all-gather per FSDP2 group (the decoder layers)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    dest = dict(target.named_parameters(remove_duplicate=False))
    copied = set()
    names = {id(m): n for n, m in source.named_modules()}
    for module in source.modules():
        if module is source or not isinstance(module, FSDPModule):
            continue
        module.unshard()  # this group's parameters as plain whole tensors, in one collective
        for name, value in module.named_parameters(prefix=names[id(module)]):
            if not isinstance(value, DTensor):
                dest[name].copy_(value)
                copied.add(name)
        module.reshard()
    for name, value in source.named_parameters():
        if name in dest and name not in copied:
            dest[name].copy_(value.full_tensor() if isinstance(value, DTensor) else value)


def _rank_main(repeats: int) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from pivotal.distributed import copy_full_parameters, decoder_layers
    from pivotal.models import BUILTIN_DEFAULT, load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, _ = load_model(BUILTIN_DEFAULT, seed=0)
    replica = copy.deepcopy(model)
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    numel = sum(p.numel() for p in replica.parameters())
    local = torch.randn(-(-numel // 2))
    flat = torch.empty(2 * local.numel())

    def once(fn) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        dist.barrier()
        return time.perf_counter() - t0

    arms = {"per tensor": lambda: copy_full_parameters(model, replica),
            "per layer": lambda: _per_layer(model, replica),
            "flat": lambda: dist.all_gather_into_tensor(flat, local)}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(repeats + 1):  # round robin, so drift on a shared machine hits every arm
        for name, fn in arms.items():
            elapsed = once(fn)
            if repeat:  # the first round is a warm-up
                seconds[name].append(elapsed)
    results = {name: statistics.median(s) for name, s in seconds.items()}
    check = copy.deepcopy(replica)
    copy_full_parameters(model, check)
    with torch.no_grad():
        _per_layer(model, replica)
    same = all(torch.equal(a, b) for a, b in zip(check.state_dict().values(),
                                                  replica.state_dict().values()))
    if dist.get_rank() == 0:
        received = numel * 4 / 2 / 1e6
        print(f"built-in model, {numel / 1e6:.1f} M float32 parameters: each rank receives "
              f"{received:.0f} MB per refresh; {len(list(model.parameters()))} tensors")
        print(f"{'arm':<11} {'seconds':>8} {'vs flat':>8} {'MB/s received':>14}")
        for name, s in results.items():
            print(f"{name:<11} {s:8.3f} {s / results['flat']:8.2f} {received / s:14.0f}")
        print(f"per layer gives the per-tensor refresh's weights exactly: {same}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if "RANK" in os.environ:
        _rank_main(args.repeats)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", __file__, "--repeats", str(args.repeats)]
    sys.exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
