"""A Python-API script as a user runs it under torchrun (tests/test_distributed.py): a list of
dicts, a TRL-convention reward, a callback that stops the run, save(path). Writes what each rank
saw to <out>/rank<r>.json."""

import json
import sys
from pathlib import Path

import pivotal

out, strategy = Path(sys.argv[1]), sys.argv[2]
rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(10) for b in range(4)]
calls = []


def length(completions, answer, **kwargs):
    calls.append(len(completions))
    return [len(c) / 100 for c in completions]


class StopAtTwo(pivotal.Callback):
    def on_step_end(self, step, metrics):
        return step == 2


config = pivotal.Config.build(
    model={"name": "tiny-random"}, dist={"strategy": strategy}, eval={"size": 4, "max_new_tokens": 8},
    rollout={"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8},
    train={"steps": 5, "output_dir": str(out), "eval_before_after": False, "tensorboard": False})
with pivotal.Trainer(config, train_dataset=rows, reward_funcs=length, callbacks=[StopAtTwo()],
                     progress=False) as trainer:
    summary = trainer.train()
    trainer.save(out / "saved")
    (out / f"rank{trainer.runtime.rank}.json").write_text(json.dumps({"summary": summary, "calls": calls}))
