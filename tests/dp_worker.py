"""One policy update on a fixed rollout batch, in one process or under torchrun (tests/test_distributed.py).

    python tests/dp_worker.py OUT CASES_JSON                        # one process, the whole batch
    torchrun --nproc-per-node 2 tests/dp_worker.py OUT CASES_JSON   # each rank its groups

CASES_JSON is a list of {"name": ..., "overrides": [...], "export": bool, "drop": int}. For each
case every process builds the same trainer (a reference model, where one loads, moved off the
policy by seeded noise) and the same batch (the tiny model's own samples at a fixed seed, rewards
from a fixed generator so that advantages are not all zero; with "drop", without the last `drop`
rows of the second half of the groups, so that 2 ranks hold different numbers of rows), takes its
rank's groups, prepares them (reference log-probs, divergences, advantages) and runs the update;
rank 0 writes OUT/<name>.json (metrics) and OUT/<name>.safetensors (the whole updated policy).
Where a reference loads, it also records the share of it this rank holds and checks OWPO's
ratchet and the reference's state dict round trip. With "export", every rank also checkpoints
the updated model (DCP shards), rank 0 writes its consolidated export to OUT/<name>_export, and
OUT/<name>_logprobs.safetensors holds the batch and its log-probs from the trained (sharded) model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from pivotal.config import load_config
from pivotal.distributed import full_tensor
from pivotal.frozen import frozen_module, frozen_state_dict, load_frozen_state_dict
from pivotal.rollout import SamplingParams
from pivotal.tasks import format_prompt
from pivotal.trainer import Trainer

BASE = ["model.name=tiny-random", "rollout.prompts_per_step=4", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "optim.micro_batch_size=3", "optim.lr=1e-3",
        "optim.epochs_per_rollout=2", "train.tensorboard=false", "train.eval_before_after=false"]


def fixed_batch(trainer: Trainer):
    cfg = trainer.cfg
    problems = [trainer.task.train_problem(i) for i in range(cfg.rollout.prompts_per_step)]
    prompts = [format_prompt(p, trainer.tokenizer, cfg.task.instruction, cfg.task.system_prompt)
               for p in problems]
    batch, texts = trainer.engine.generate(prompts, cfg.rollout.group_size,
                                           SamplingParams(cfg.rollout.max_new_tokens, 1.0), seed=1234)
    batch.rewards = torch.rand(batch.size, generator=torch.Generator().manual_seed(5)).round()
    batch.correct = batch.rewards > 0
    batch.extras = {"text": texts}
    if trainer.hints is not None:  # the self-teacher's hinted prompts, before the rank split
        trainer.hints(batch, [p for p in problems for _ in range(cfg.rollout.group_size)], texts,
                      0, seed=0)
    return batch


def trained_logprobs(trainer: Trainer, batch) -> torch.Tensor:
    """(B, P+T-1) log-probs of each next token under the wrapped (DDP / FSDP2) model."""
    ids, mask = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        logits = trainer.trained(lambda policy: policy(input_ids=ids, attention_mask=mask).logits)
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def export_case(out: Path, name: str, trainer: Trainer, batch) -> None:
    from pivotal.export import export_checkpoint

    trainer.step = 1
    path = trainer.save_checkpoint()
    logprobs = trained_logprobs(trainer, batch)
    if trainer.runtime.is_main:
        export_checkpoint(path, out / f"{name}_export")
        save_file({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                   "logprobs": logprobs.contiguous()}, str(out / f"{name}_logprobs.safetensors"))


def local_fraction(model: torch.nn.Module) -> float:
    """The share of `model`'s parameters this rank holds (1 when whole)."""
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())


def _largest_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    other = dict(b.named_parameters())
    return max((full_tensor(p) - full_tensor(other[name])).abs().max().item()
               for name, p in a.named_parameters())


def check_reference_ratchet(trainer: Trainer, reference, metrics: dict) -> None:
    """OWPO's ratchet copies the updated policy into the (sharded) reference; its whole state
    dict, as the trainer state keeps it, loads back into a zeroed reference."""
    rt = trainer.runtime
    trainer.ratchet_reference()
    metrics["ratchet_gap"] = _largest_gap(reference, trainer.model)
    # rank 0 holds the values; every rank gets them, as every rank reads the trainer state
    saved = {k: v.clone() for k, v in rt.broadcast(frozen_state_dict(trainer.ref_model)).items()}
    with torch.no_grad():
        for p in reference.parameters():
            p.zero_()
    load_frozen_state_dict(trainer.ref_model, saved)
    metrics["reloaded_gap"] = _largest_gap(reference, trainer.model)


def run_case(out: Path, name: str, overrides: list[str], export: bool = False,
             drop: int = 0) -> None:
    cfg = load_config(None, [*BASE, f"train.output_dir={out / name}", *overrides])
    trainer = Trainer(cfg, progress=False)
    rt = trainer.runtime
    reference = frozen_module(trainer.ref_model) if trainer.ref_model is not None else None
    if reference is not None:
        # a reference equal to the policy gives divergences of pure rounding noise, which the
        # divergence credit's normaliser blows up; move it away, identically in every process
        # (a sharded reference takes its slice of the same noise)
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in reference.parameters():
                noise = 0.05 * torch.randn(p.shape, generator=gen)
                if isinstance(p, DTensor):
                    noise = distribute_tensor(noise, p.device_mesh, p.placements, src_data_rank=None)
                p.add_(noise)
    batch = fixed_batch(trainer)
    if drop:  # the last rows of the second half of the groups (rank 1's, with 2 ranks) go
        second = (batch.group_ids >= cfg.rollout.prompts_per_step // 2).nonzero().squeeze(-1)
        keep = torch.ones(batch.size, dtype=torch.bool)
        keep[second[-drop:]] = False
        batch = batch.select(keep.nonzero().squeeze(-1))
    share = cfg.rollout.prompts_per_step // rt.world
    mine = batch.select(((batch.group_ids >= rt.rank * share)
                         & (batch.group_ids < (rt.rank + 1) * share)).nonzero().squeeze(-1))
    trainer.prepare(mine)
    metrics = trainer.update(mine, 0)
    if reference is not None:
        metrics["reference_local_fraction"] = local_fraction(reference)
        check_reference_ratchet(trainer, reference, metrics)
    if trainer.shift_monitor is not None:
        metrics["monitor_local_fraction"] = local_fraction(
            frozen_module(trainer.shift_monitor.initial_model))
    weights = {k: full_tensor(v).detach().clone().contiguous()
               for k, v in trainer.model.state_dict().items() if "lm_head" not in k}
    if rt.is_main:
        (out / f"{name}.json").write_text(json.dumps(metrics))
        save_file(weights, str(out / f"{name}.safetensors"))
    if export and rt.active:  # a single-process checkpoint is already consolidated
        export_case(out, name, trainer, batch)


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        run_case(out, case["name"], case["overrides"], case.get("export", False),
                 case.get("drop", 0))


if __name__ == "__main__":
    main()
