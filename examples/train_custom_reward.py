"""Train the built-in model on your own problems with your own reward function.

    python examples/train_custom_reward.py                 # SmolLM2-135M, 20 steps
    python examples/train_custom_reward.py tiny-random 2   # [model] [steps]: a quick try
"""
import sys

import pivotal

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)}
        for a in range(10, 50) for b in range(1, 10)]


def reward(completion: str, problem) -> float:  # pivotal's convention: one sample at a time
    """1 for the right sum in \\boxed{}, 0.2 for the right sum elsewhere in the response."""
    if f"\\boxed{{{problem.answer}}}" in completion:
        return 1.0
    return 0.2 if problem.answer in completion else 0.0


config = pivotal.Config.build(model={"name": model},
                              train={"steps": steps, "output_dir": "runs/example_custom"})
trainer = pivotal.Trainer(config, train_dataset=rows, reward_funcs=reward)
print(trainer.train())
trainer.save("runs/example_custom/final")  # a plain Hugging Face model directory
