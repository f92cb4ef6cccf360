"""One full pivotal training step vs the raw work it must do: generate + one forward/backward.

The ceiling: a plain `model.generate` of the same batch (4 prompts x 8 samples, 64 new tokens) plus
one plain forward+backward (LM loss over every position) over the very tokens the step trained on.
Prints both and the ratio step / (generate + forward-backward) (the issue's aim: <= 1.2).
The step also scores, computes advantages and runs the clipped loss; with `optim.share_prompt`
it computes each prompt once per micro-batch, which the raw forward-backward cannot.

    python benchmarks/step_overhead.py [--steps 3] [override ...]
"""

from __future__ import annotations

import argparse

import torch

from common import GROUP, NEW_TOKENS, header, step_config, timed
from pivotal.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    header("training step vs raw generate + forward/backward")
    cfg = step_config("optim.lr=1e-6", *args.overrides)
    trainer = Trainer(cfg, progress=False)
    model, tokenizer = trainer.model, trainer.tokenizer
    trainer.train_step()  # warm-up
    step_times, raw_times = [], []
    for i in range(args.steps):
        trainer.step += 1
        metrics = trainer.train_step()
        batch = trainer.last_batch
        step_times.append(metrics["time_step"])

        prompts = tokenizer.batch_decode(batch.prompt_ids[::GROUP], skip_special_tokens=False)
        prompts = [p.replace(tokenizer.pad_token, "") for p in prompts]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

        @torch.no_grad()
        def generate(enc=enc):
            return model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=NEW_TOKENS, num_return_sequences=GROUP,
                                  pad_token_id=tokenizer.pad_token_id)

        def forward_backward(batch=batch):
            model.train()
            ids, mask = batch.input_ids, batch.attention_mask
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss.backward()
            model.zero_grad(set_to_none=True)
            model.eval()

        t_gen, _ = timed(generate, 1)
        t_fb, _ = timed(forward_backward, 1)
        raw_times.append(t_gen + t_fb)
        print(f"step {i + 1}: pivotal {metrics['time_step']:.1f}s (gen "
              f"{metrics['time_generate']:.1f} score {metrics['time_score']:.1f} train "
              f"{metrics['time_train']:.1f}) | raw generate {t_gen:.1f}s + forward/backward "
              f"{t_fb:.1f}s over {tuple(batch.input_ids.shape)} tokens", flush=True)
    ours, raw = sum(step_times) / len(step_times), sum(raw_times) / len(raw_times)
    print(f"mean step {ours:.1f}s vs raw {raw:.1f}s: ratio step / raw = {ours / raw:.2f}")


if __name__ == "__main__":
    main()
