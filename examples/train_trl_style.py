"""A `datasets.Dataset` in TRL's layout (a conversational "prompt", a "solution" column) and
reward functions written for TRL's GRPOTrainer, unchanged.

    python examples/train_trl_style.py                 # SmolLM2-135M, 20 steps
    python examples/train_trl_style.py tiny-random 2   # [model] [steps]
"""
import re
import sys

from datasets import Dataset

import pivotal

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
dataset = Dataset.from_list([
    {"prompt": [{"role": "user", "content": f"Tom has {a} apples and buys {b} more. "
                                            "How many apples does he have now?"}],
     "solution": str(a + b)}
    for a in range(2, 40) for b in range(2, 12)])


def accuracy_reward(completions, solution, **kwargs):  # TRL's convention: the whole batch
    found = [re.findall(r"\\boxed\{([^}]*)\}", c) for c in completions]
    return [1.0 if f and f[-1].strip() == s else 0.0 for f, s in zip(found, solution)]


def format_reward(completions, **kwargs):
    return [0.1 if "\\boxed{" in c else 0.0 for c in completions]


config = pivotal.Config.build(
    model={"name": model}, train={"steps": steps, "output_dir": "runs/example_trl"},
    task={"name": "dataset", "options": {"question_field": "prompt", "answer_field": "solution"}})
trainer = pivotal.Trainer(config, train_dataset=dataset,
                          reward_funcs=[accuracy_reward, format_reward])
print(trainer.train())
