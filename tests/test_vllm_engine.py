"""The vLLM rollout engine on the real built-in model (runs where vLLM is installed: `make test-vllm`).

Tolerance: vLLM's CPU kernels and the trainer's forward compute the same float32 model in a
different order; measured on SmolLM2-135M the per-token log-probs differ by at most ~6e-5 nats
(mean ~6e-6). The tests allow 1e-3, far below any change a weight update makes.
"""

import json

import pytest
import torch

pytest.importorskip("vllm")

from pivotal.config import load_config  # noqa: E402
from pivotal.logprobs import policy_logprobs  # noqa: E402
from pivotal.metrics import read_metrics  # noqa: E402
from pivotal.models import load_model  # noqa: E402
from pivotal.rollout import SamplingParams, TransformersEngine  # noqa: E402
from pivotal.rollout.vllm_engine import VLLMEngine  # noqa: E402
from pivotal.tasks import format_prompt  # noqa: E402
from pivotal.tasks.arithmetic import ArithmeticTask  # noqa: E402

pytestmark = pytest.mark.vllm
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def policy():
    model, tokenizer = load_model("smollm2-135m")
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(policy):
    model, tokenizer = policy
    return VLLMEngine(model, tokenizer, max_model_len=512, kv_cache_gb=0.25)


def _prompts(tokenizer, n=2):
    task = ArithmeticTask(levels=[{"ops": ["+"], "digits": 2}])
    return [format_prompt(task.train_problem(i), tokenizer, "Put the final answer in \\boxed{}.")
            for i in range(n)]


def _max_diff(model, batch) -> float:
    with torch.no_grad():
        recomputed, _ = policy_logprobs(model, batch, temperature=1.0)
    mask = batch.response_mask.bool()
    return float((recomputed - batch.old_logprobs)[mask].abs().max())


def test_batch_fields_and_logprobs_match_the_trainer(policy, engine):
    model, tokenizer = policy
    params = SamplingParams(max_new_tokens=24, temperature=1.0)
    batch, texts = engine.generate(_prompts(tokenizer), 4, params, seed=0)
    assert batch.size == 8 and len(texts) == 8
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4
    assert batch.response_mask.sum() > 0
    lengths = batch.response_lengths
    assert (lengths <= 24).all()
    eos = set(engine.eos_ids)
    for row in range(batch.size):  # truncated <=> the response does not end in EOS
        last = int(batch.response_ids[row, int(lengths[row]) - 1])
        assert bool(batch.truncated[row]) == (last not in eos)
    assert _max_diff(model, batch) < TOLERANCE


def test_seeded_sampling_is_reproducible(policy, engine):
    _, tokenizer = policy
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    a, _ = engine.generate(_prompts(tokenizer), 4, params, seed=3)
    b, _ = engine.generate(_prompts(tokenizer), 4, params, seed=3)
    c, _ = engine.generate(_prompts(tokenizer), 4, params, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_greedy_matches_the_transformers_engine(policy, engine):
    model, tokenizer = policy
    prompts = _prompts(tokenizer, 3)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    ours, ours_text = engine.generate(prompts, 1, params)
    ref, ref_text = TransformersEngine(model, tokenizer).generate(prompts, 1, params)
    assert ours_text == ref_text
    mask = ref.response_mask.bool()
    assert torch.equal(ours.response_ids[mask], ref.response_ids[mask])
    assert float((ours.old_logprobs - ref.old_logprobs)[mask].abs().max()) < TOLERANCE


def test_weight_updates_reach_vllm_in_place(policy, engine):
    """After the policy changes, vLLM samples from the old weights until synced, then the new."""
    model, tokenizer = policy
    changed = load_model("smollm2-135m")[0].eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    stale, _ = engine.generate(_prompts(tokenizer), 2, params, seed=0)
    assert _max_diff(changed, stale) > 10 * TOLERANCE  # the perturbation is visible
    engine.sync_weights(changed)
    try:
        fresh, _ = engine.generate(_prompts(tokenizer), 2, params, seed=0)
        assert _max_diff(changed, fresh) < TOLERANCE
        assert engine.sync_seconds[-1] < 30
    finally:
        engine.sync_weights(model)  # leave the shared engine as the other tests expect


def test_trainer_runs_grpo_steps_on_vllm(tmp_path):
    cfg = load_config(None, [
        f"train.output_dir={tmp_path}", "train.steps=3", "train.eval_before_after=false",
        "rollout.engine=vllm", "rollout.vllm_max_model_len=512", "rollout.vllm_kv_cache_gb=0.25",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-5",
        "optim.mini_batches=2", "algo.tis_cap=2", "train.tensorboard=false"])
    from pivotal.trainer import Trainer
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 3
    for r in rows:
        assert torch.isfinite(torch.tensor(r["loss"]))
        # the sampler is vLLM with the weights of the step's policy: the gap is numerical only
        assert r["sampler_logprob_diff_max"] < TOLERANCE
        assert 0.9 < r["rc_weight"] <= 2.0
    assert all(r["time_sync"] > 0 for r in rows[1:])  # synced after every update
    # the last update reaches the engine before its next use (here: an explicit sync)
    assert trainer.engine_stale
    trainer.sync_engine()
    batch, _ = trainer.engine.generate(_prompts(trainer.tokenizer), 2,
                                       SamplingParams(max_new_tokens=16), seed=1)
    assert _max_diff(trainer.model, batch) < TOLERANCE


def test_eval_command_samples_with_the_configured_engine(tmp_path, capsys):
    from pivotal.cli import main
    common = ["--limit", "4", "task.options={levels: [{ops: ['+'], digits: 2}]}",
              "eval.max_new_tokens=24", "rollout.vllm_max_model_len=512",
              "rollout.vllm_kv_cache_gb=0.25"]
    records = {}
    for engine in ("vllm", "transformers"):
        out = tmp_path / engine
        assert main(["eval", "--out", str(out), *common,
                     f"rollout.engine={engine}"]) == 0
        lines = (out / "generations.jsonl").read_text().splitlines()
        records[engine] = [json.loads(line)["response"] for line in lines]
    assert len(records["vllm"]) == 4
    assert records["vllm"] == records["transformers"]  # greedy: the same text from both engines


def test_a_lora_policy_reaches_vllm_as_merged_weights(tmp_path):
    """LoRA on SmolLM2 with vLLM rollouts: after every update vLLM samples from the adapted
    policy (merged weights), so the sampler/trainer gap stays numerical."""
    cfg = load_config(None, [
        f"train.output_dir={tmp_path}", "train.steps=2", "train.eval_before_after=false",
        "rollout.engine=vllm", "rollout.vllm_max_model_len=512", "rollout.vllm_kv_cache_gb=0.25",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "task.options={levels: [{ops: ['+'], digits: 1}]}", "optim.lr=1e-3",
        "model.lora.r=8", "train.tensorboard=false"])
    from pivotal.trainer import Trainer
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all(r["sampler_logprob_diff_max"] < TOLERANCE for r in rows)
    trainer.sync_engine()
    batch, _ = trainer.engine.generate(_prompts(trainer.tokenizer), 2,
                                       SamplingParams(max_new_tokens=16), seed=1)
    assert _max_diff(trainer.model, batch) < TOLERANCE
    with trainer.adapters.peft_model.disable_adapter():  # the adapters moved the policy
        assert _max_diff(trainer.model, batch) > 10 * TOLERANCE


def test_compiled_engine_follows_weight_syncs(policy):
    """rollout.vllm_compile: vLLM's compiled model reads the weights a sync copies in. Last in the
    file: run before the tests that use the module's `engine` fixture, this second engine left
    that one failing ("pipeline model parallel group is not initialized"; vLLM's parallel state
    is process-wide)."""
    import copy
    model, tokenizer = policy
    model = copy.deepcopy(model)
    compiled = VLLMEngine(model, tokenizer, max_model_len=512, kv_cache_gb=0.25, enforce_eager=False)
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    before, _ = compiled.generate(_prompts(tokenizer), 2, params, seed=0)
    assert _max_diff(model, before) < TOLERANCE
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".layers.3." in name:
                weight.add_(torch.randn(weight.shape, generator=generator) * 0.05 * weight.abs().mean())
    compiled.sync_weights(model)
    after, _ = compiled.generate(_prompts(tokenizer), 2, params, seed=0)
    assert _max_diff(model, after) < TOLERANCE
    assert not torch.equal(before.response_ids, after.response_ids)  # the new weights sampled
