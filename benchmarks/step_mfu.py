"""Model FLOPs utilisation (MFU) of a full GRPO step, against this machine's measured matmul peak.

The configuration of the TRL comparison: 4 prompts x 8 samples, up to 64 new tokens, SmolLM2-135M
in float32. Useful FLOPs of one step, with N the parameter count (embeddings included, the usual
convention):
  rollout   2 N per prompt token (one prefill per prompt) and per generated token
  training  6 N per trained token (forward + backward), counted two ways:
            rows      every row's prompt + response tokens (what a trainer without prompt sharing
                      computes; the convention of peers' MFU figures)
            distinct  each prompt once + the responses (pivotal's `optim.share_prompt` computes
                      each prompt once per micro-batch, so this is the stricter figure)
MFU = useful FLOPs / (step time x peak), where the peak is the best fp32 matmul rate this script
measures on the same machine, in the same run (square matmuls, all threads). Prints the peak,
each step's time split (sync, generate, score, train) and MFU, and the mean. Per step it also
prints each phase's own MFU (distinct tokens) and the step's ceiling: the MFU the step would reach
if training ran at the matmul peak and generation took the time it took.

The roofline of each phase (issue 15): the script also measures the memory bandwidth (STREAM copy
and triad, `roofline.memory_bandwidth`) before and after the steps, counts each phase's FLOPs and
bytes (`roofline.generation_roofline`, `roofline.training_roofline`; what is counted is in
roofline.py's docstring) and prints how close the phase comes to max(FLOPs / peak, bytes /
bandwidth), whether decoding is bound by bandwidth or compute at the live rows it had, and a probe
of the model's one-token forward alone at the step's mean live rows and context (the decode
loop's floor with this model code).

    python benchmarks/step_mfu.py [--steps 3] [rollout.engine=vllm] [override ...]
"""

from __future__ import annotations

import argparse
import statistics

from common import GROUP, header, step_config
from pivotal.trainer import Trainer
from roofline import ModelShape, generation_roofline, matmul_peak, memory_bandwidth, probe_report, training_roofline


def step_flops(batch, n_params: int) -> dict[str, float]:
    prompt_tokens = float(batch.prompt_mask[::GROUP].sum())  # each prompt is prefilled once
    generated = float(batch.response_mask.sum())
    rollout = 2 * n_params * (prompt_tokens + generated)
    rows = float(batch.prompt_mask.sum()) + generated
    train = 6 * n_params * (prompt_tokens + generated)
    return {"rows": rollout + 6 * n_params * rows, "distinct": rollout + train,
            "rollout": rollout, "train": train}


def phase_report(m: dict, flops: dict[str, float], peak: float) -> str:
    """Each phase's own MFU, and the whole step's ceiling if training ran at the matmul peak with
    this generation time: the bound that generation alone puts on the step's MFU."""
    gen_s = m["time_generate"] + m["time_sync"]
    ceiling = flops["distinct"] / ((gen_s + flops["train"] / peak) * peak)
    return (f"  generation {flops['rollout'] / (gen_s * peak):.1%} of peak, training "
            f"{flops['train'] / (m['time_train'] * peak):.1%}; step ceiling with training at "
            f"the peak {ceiling:.1%}")


def roofline_report(m: dict, batch, cfg, shape: ModelShape, peak: float, bandwidth: float) -> str:
    """Each phase's measured time against its roofline, and what bounds decoding."""
    o = cfg.optim
    rows_per_mini = -(-batch.size // o.mini_batches)
    micro = o.epochs_per_rollout * o.mini_batches * -(-rows_per_mini // o.micro_batch_size)
    gen = generation_roofline(batch, GROUP, shape, peak, bandwidth)
    train = training_roofline(batch, GROUP, shape, micro, o.epochs_per_rollout * o.mini_batches,
                              peak, bandwidth)
    bound = "bandwidth" if gen["decode_at_bandwidth"] >= gen["decode_at_peak"] else "compute"
    return (f"  roofline: generation {m['time_generate']:.2f} s vs {gen['seconds']:.2f} s "
            f"({gen['seconds'] / m['time_generate']:.0%} of it; {gen['bytes'] / 1e9:.1f} GB, "
            f"{gen['flops'] / 1e12:.2f} TFLOP; {gen['decode_forwards']:.0f} decode forwards at "
            f"{gen['live_rows']:.1f} live rows on average, {bound}-bound: at the bandwidth alone "
            f"{gen['decode_at_bandwidth']:.2f} s, at the peak alone {gen['decode_at_peak']:.2f} s, "
            f"measured {1e3 * m['time_generate'] / max(gen['decode_forwards'], 1):.0f} ms per "
            f"forward) | training {m['time_train']:.2f} s vs {train['seconds']:.2f} s "
            f"({train['seconds'] / m['time_train']:.0%}; {train['flops'] / 1e12:.2f} TFLOP, "
            f"{train['bytes'] / 1e9:.1f} GB, {micro} micro-batches)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    header("MFU of a full GRPO step")
    peak_before, bandwidth_before = matmul_peak(), max(memory_bandwidth().values())
    cfg = step_config("optim.lr=1e-6", *args.overrides)
    trainer = Trainer(cfg, progress=False)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    shape = ModelShape.of(trainer.model)
    print(f"engine {cfg.rollout.engine} | N = {n_params / 1e6:.1f}M parameters", flush=True)
    trainer.train_step()  # warm-up
    steps = []
    for _ in range(args.steps):
        trainer.step += 1
        m = trainer.train_step()
        steps.append((m, step_flops(trainer.last_batch, n_params), trainer.last_batch))
    peak = max(peak_before, matmul_peak())
    bandwidth = max(bandwidth_before, *memory_bandwidth().values())
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (before the steps "
          f"{peak_before / 1e9:.1f}) | memory bandwidth (STREAM copy/triad, best): "
          f"{bandwidth / 1e9:.1f} GB/s (before the steps {bandwidth_before / 1e9:.1f})", flush=True)
    mfu: dict[str, list[float]] = {"rows": [], "distinct": []}
    times = []
    for i, (m, flops, batch) in enumerate(steps):
        for kind in mfu:
            mfu[kind].append(flops[kind] / (m["time_step"] * peak))
        times.append(m["time_step"])
        print(f"step {i + 1}: {m['time_step']:.1f}s (sync {m['time_sync']:.1f} generate "
              f"{m['time_generate']:.1f} score {m['time_score']:.1f} train {m['time_train']:.1f}) "
              f"| {flops['rows'] / 1e12:.2f} TFLOP useful | MFU rows {mfu['rows'][-1]:.1%}, "
              f"distinct {mfu['distinct'][-1]:.1%}", flush=True)
        print(phase_report(m, flops, peak), flush=True)
        print(roofline_report(m, batch, cfg, shape, peak, bandwidth), flush=True)
    if cfg.rollout.engine == "transformers":  # the decode floor of this model code, same rows
        last = steps[-1][2]
        live = generation_roofline(last, GROUP, shape, peak, bandwidth)["live_rows"]
        context = last.prompt_mask.shape[1] + int(last.response_mask.sum(1).float().mean())
        print("decode probe (the model's one-token forward alone, the last step's mean live rows "
              "and the prompt plus a mean response as context):")
        print(probe_report(trainer.model.eval(), shape, [max(1, round(live)), last.size, 1],
                           context, peak, bandwidth), flush=True)
    print(f"mean step {statistics.mean(times):.1f}s | MFU of the measured fp32 matmul peak: "
          f"rows {statistics.mean(mfu['rows']):.1%}, distinct {statistics.mean(mfu['distinct']):.1%}")


if __name__ == "__main__":
    main()
