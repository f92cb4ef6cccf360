"""One policy update on a fixed rollout batch, in one process or under torchrun (tests/test_distributed.py).

    python tests/dp_worker.py OUT CASES_JSON                        # one process, the whole batch
    torchrun --nproc-per-node 2 tests/dp_worker.py OUT CASES_JSON   # each rank its groups

CASES_JSON is a list of {"name": ..., "overrides": [...], "export": bool}. For each case every process builds the
same trainer (a reference model, where one loads, moved off the policy by seeded noise) and the
same batch (the tiny model's own samples at a fixed seed, rewards from a fixed generator so that
advantages are not all zero), takes its rank's groups, prepares them (reference log-probs,
divergences, advantages) and runs the update; rank 0 writes OUT/<name>.json (metrics) and
OUT/<name>.safetensors (the whole updated policy). With "export", every rank also checkpoints
the updated model (DCP shards), rank 0 writes its consolidated export to OUT/<name>_export, and
OUT/<name>_logprobs.safetensors holds the batch and its log-probs from the trained (sharded) model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pivotal.config import load_config
from pivotal.distributed import full_tensor
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


def run_case(out: Path, name: str, overrides: list[str], export: bool = False) -> None:
    cfg = load_config(None, [*BASE, f"train.output_dir={out / name}", *overrides])
    trainer = Trainer(cfg, progress=False)
    rt = trainer.runtime
    if trainer.ref_model is not None:
        # a reference equal to the policy gives divergences of pure rounding noise, which the
        # divergence credit's normaliser blows up; move it away, identically in every process
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in trainer.ref_model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    batch = fixed_batch(trainer)
    share = cfg.rollout.prompts_per_step // rt.world
    mine = batch.select(((batch.group_ids >= rt.rank * share)
                         & (batch.group_ids < (rt.rank + 1) * share)).nonzero().squeeze(-1))
    trainer.prepare(mine)
    metrics = trainer.update(mine, 0)
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
        run_case(out, case["name"], case["overrides"], case.get("export", False))


if __name__ == "__main__":
    main()
