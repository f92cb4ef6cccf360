"""pivotal vs TRL's GRPOTrainer: the same GRPO step configuration, side by side in one run.

SmolLM2-135M-Instruct float32 on the CPU, 4 prompts x 8 samples, 64 new tokens, beta 0 (no
reference model), lr 1e-6, one optimizer step per rollout, the same
arithmetic prompts and the same correctness reward. Prints seconds per step for each (the first
step of each is a warm-up and not counted) and the ratio pivotal / TRL (issue 15: <= 0.33).
TRL runs first, four times: gradient checkpointing on (its default) and off, each with glibc's
malloc defaults and then with pivotal's retained-memory setting (process-wide once set, which is
why pivotal runs after it). pivotal runs once per
`--engines` entry; `vllm` needs vLLM installed (`make setup-vllm`, then trl into that venv).
Needs `pip install trl` (an optional benchmark dependency: `pip install -e '.[bench]'`).

    python benchmarks/trl_compare.py [--steps 3] [--engines transformers vllm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import GROUP, NEW_TOKENS, PROMPTS, header
from pivotal.allocator import retain_freed_memory
from pivotal.config import load_config
from pivotal.trainer import Trainer

TASK = "{levels: [{ops: ['+'], digits: 2}]}"


def run_pivotal(steps: int, engine: str) -> list[float]:
    cfg = load_config(None, [f"rollout.engine={engine}",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
        f"rollout.max_new_tokens={NEW_TOKENS}", "optim.lr=1e-6",
        f"task.options={TASK}", f"train.output_dir={tempfile.mkdtemp()}",
        "train.tensorboard=false"])
    trainer = Trainer(cfg, progress=False)
    times = []
    for _ in range(steps + 1):
        times.append(trainer.train_step()["time_step"])
        trainer.step += 1
        print(f"  pivotal ({engine}) step {len(times)}: {times[-1]:.1f}s", flush=True)
    return times[1:]


def run_trl(steps: int, gradient_checkpointing: bool) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pivotal.models import load_model
    from pivotal.rewards import load_reward
    from pivotal.tasks import build_task

    model, tokenizer = load_model("smollm2-135m")
    task = build_task("arithmetic", **{"levels": [{"ops": ["+"], "digits": 2}]})
    problems = [task.train_problem(i) for i in range(PROMPTS * (steps + 1))]
    rows = [{"prompt": [{"role": "user", "content": f"{p.question} Put the final answer in "
                         "\\boxed{}."}], "answer": p.answer, "index": i}
            for i, p in enumerate(problems)]
    correct = load_reward("math")

    def reward(completions, index, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [correct(t, problems[i]) for t, i in zip(texts, index)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)
            print(f"  TRL step {len(times)}: {times[-1]:.1f}s", flush=True)

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, beta=0.0, learning_rate=1e-6,
        max_steps=steps + 1, logging_steps=10_000, disable_tqdm=True, report_to=[], use_cpu=True, bf16=False,
        temperature=1.0, save_strategy="no", gradient_accumulation_steps=1, shuffle_dataset=False,
        dataloader_num_workers=0, seed=0, gradient_checkpointing=gradient_checkpointing)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["transformers"],
                    choices=["transformers", "vllm"], help="pivotal's rollout engines to time")
    args = ap.parse_args()
    header("pivotal vs TRL GRPOTrainer")
    # TRL runs first: pivotal's Trainer sets glibc's malloc to keep freed memory (mallopt,
    # `pivotal.allocator`), which holds for the whole process. TRL is timed with glibc's defaults
    # (what its users get) and then with the same setting (its fastest configuration here; its
    # users can set it with GLIBC_TUNABLES). Its GRPOConfig turns gradient checkpointing on by
    # default, trading compute for memory, so it runs both ways.
    theirs = {(checkpointing, "glibc defaults"): statistics.mean(run_trl(args.steps, checkpointing))
              for checkpointing in (True, False)}
    retain_freed_memory()
    theirs.update({(checkpointing, "retained memory"): statistics.mean(
        run_trl(args.steps, checkpointing)) for checkpointing in (True, False)})
    ours = {engine: statistics.mean(run_pivotal(args.steps, engine)) for engine in args.engines}
    for engine, mine in ours.items():
        for (checkpointing, allocator), trl_time in theirs.items():
            print(f"pivotal ({engine}) {mine:.1f}s/step | TRL (gradient_checkpointing="
                  f"{checkpointing}, {allocator}) {trl_time:.1f}s/step | ratio pivotal / TRL = "
                  f"{mine / trl_time:.2f} ({trl_time / mine:.1f}x faster)", flush=True)

if __name__ == "__main__":
    main()
