"""LoRA through peft: only the adapters train, the reference is the base with them switched off,
checkpoints hold the adapters, the merged export loads with plain transformers, resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from pivotal import checkpoint as ckpt
from pivotal.config import LoraConfig
from pivotal.errors import CheckpointError, ConfigError, ModelLoadError
from pivotal.logprobs import logprobs_no_grad
from pivotal.lora import BaseModelView, adapter_files, apply_lora, base_weights, merged_weights
from pivotal.metrics import read_metrics
from pivotal.models import load_model
from pivotal.trainer import Trainer
from test_trainer import _deterministic, tiny_config

LORA = {"model.lora.r": 4, "model.lora.alpha": 8, "optim.lr": 1e-2}


def _split(model):
    """(base weights, adapter weights) of a LoRA policy, cloned."""
    base, adapters = {}, {}
    for name, value in model.state_dict().items():
        (adapters if ".lora_" in name else base)[name] = value.detach().clone()
    return base, adapters


def _adapted_tiny_model():
    """(the tiny model with r=4 adapters whose B is random, so they act; a copy of it before
    LoRA; its Adapters)."""
    model, _ = load_model("tiny-random", seed=0)
    plain = copy.deepcopy(model)
    adapters = apply_lora(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model, plain, adapters


def test_merged_weights_and_the_base_view_are_exact():
    """merged_weights equals peft's merge_and_unload; the base view scores as the model before
    LoRA, through the whole model and through its trunk and head separately."""
    model, plain, adapters = _adapted_tiny_model()
    ids = torch.randint(0, 1000, (2, 9))
    view = adapters.base_view()
    with torch.no_grad():
        base_logits = plain(ids).logits
        torch.testing.assert_close(view(ids).logits, base_logits, rtol=0, atol=0)
        head = view.get_output_embeddings()(view.model(ids).last_hidden_state)
        torch.testing.assert_close(head, base_logits, rtol=0, atol=0)
        adapted = model(ids).logits
        assert (adapted - base_logits).abs().max() > 1e-3  # outside the view the adapters act
        merged = copy.deepcopy(adapters.peft_model).merge_and_unload()
        ours = dict(merged_weights(model))
        assert ours.keys() == merged.state_dict().keys()
        for name, value in merged.state_dict().items():
            torch.testing.assert_close(ours[name], value, rtol=0, atol=0)
        torch.testing.assert_close(merged(ids).logits, adapted, rtol=0, atol=2e-5)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)


def test_the_adapter_files_pushed_to_servers_are_peft_s_and_the_base_is_untouched(tmp_path):
    """What the lora route of vllm_server pushes: the adapters written from the injected model
    (no PeftModel needed) are peft's own files, which PeftModel.from_pretrained puts on the base
    weights that route starts a server with, giving the policy's logits."""
    from peft import PeftModel

    from pivotal.rollout.weight_files import write_adapter_dir
    model, plain, adapters = _adapted_tiny_model()
    tensors, config = adapter_files(model)
    expected = adapters.state_dict()
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(tensors[name], value, rtol=0, atol=0)
    base = dict(base_weights(model))
    assert base.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(base[name], value, rtol=0, atol=0)
    path, nbytes = write_adapter_dir(tensors, config, tmp_path, 2)
    assert path.name == "v000002" and nbytes == sum(t.numel() * 4 for t in tensors.values())
    served = PeftModel.from_pretrained(plain, str(path)).eval()
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_lora_trains_only_the_adapters_against_the_base_and_exports(tmp_path):
    """A KL-regularised LoRA run: base weights bit-identical, adapters moved, the reference is the
    base with no copy of the weights (its log-probs equal the untouched model's), checkpoints hold
    adapters only, and the merged export loads with plain transformers and evaluates."""
    from transformers import AutoModelForCausalLM

    from pivotal.cli import main

    cfg = tiny_config(tmp_path, **LORA, **{"algo.kl_beta": 0.1, "train.steps": 3,
                                           "train.shift_monitor": True})
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.ref_model, BaseModelView)
    shared = {p.data_ptr() for p in trainer.model.parameters()}
    assert {p.data_ptr() for p in trainer.ref_model.parameters()} <= shared  # no second copy
    base_before, adapters_before = _split(trainer.model)
    trainer.train()
    base_after, adapters_after = _split(trainer.model)
    for name, value in base_before.items():
        assert torch.equal(base_after[name], value), name
    assert any(not torch.equal(adapters_after[k], v) for k, v in adapters_before.items())
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert any(r["grad_norm"] > 0 for r in rows) and all(r["kl_ref"] >= 0 for r in rows)
    # the shift monitor reads the same base view: no change at step 1, a change once trained
    assert rows[0]["shift_mean_abs_dlogp"] < 1e-5 and rows[-1]["shift_mean_abs_dlogp"] > 0

    # the reference log-probs of the last batch are the untouched base model's
    untouched, _ = load_model("tiny-random", seed=0)
    batch = trainer.last_batch
    expected = logprobs_no_grad(untouched, batch, cfg.rollout.temperature, True, 16)
    torch.testing.assert_close(batch.ref_logprobs, expected, rtol=0, atol=1e-6)

    final = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert (final / "adapter_model.safetensors").exists() and not (final / "model.safetensors").exists()
    with pytest.raises(ModelLoadError, match="merged"):
        load_model(str(final))
    merged = AutoModelForCausalLM.from_pretrained(final / "merged")
    assert merged.config.model_type == "llama"
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits,
                                   trainer.model(input_ids=ids, attention_mask=mask).logits,
                                   rtol=0, atol=2e-5)
    # `pivotal export` of an earlier step writes its merged model too, and `pivotal eval` runs it
    earlier = tmp_path / "checkpoints" / "step_000002"
    if earlier.exists():
        assert main(["export", str(earlier), "--out", str(tmp_path / "step2")]) == 0
        assert (tmp_path / "step2" / "model.safetensors").exists()
    assert main(["eval", "--model", str(final / "merged"), "--limit", "2", "eval.max_new_tokens=4",
                 "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "eval_summary.json").exists()


def test_lora_resume_is_bit_exact(tmp_path):
    full = Trainer(tiny_config(tmp_path / "full", **LORA, **{"train.save_every": 2}), progress=False)
    full.train()
    part = tmp_path / "part"
    Trainer(tiny_config(part, **LORA, **{"train.save_every": 2, "train.steps": 2}),
            progress=False).train()
    resumed = Trainer(tiny_config(part, **LORA, **{"train.save_every": 2}), progress=False)
    resumed.train(resume=True)
    a = _deterministic(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _deterministic(read_metrics(part / "metrics.jsonl"))
    assert len(a) == len(b) == 4 and a == b
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_lora_and_full_checkpoints_do_not_mix(tmp_path):
    """Resuming a LoRA checkpoint without model.lora (or the other way round) says so."""
    Trainer(tiny_config(tmp_path, **LORA, **{"train.steps": 1}), progress=False).train()
    with pytest.raises(CheckpointError, match="LoRA adapters only"):
        Trainer(tiny_config(tmp_path, **{"train.steps": 2}), progress=False).train(resume=True)
    other = tmp_path / "full"
    Trainer(tiny_config(other, **{"train.steps": 1}), progress=False).train()
    with pytest.raises(CheckpointError, match="not a LoRA checkpoint"):
        Trainer(tiny_config(other, **LORA, **{"train.steps": 2}), progress=False).train(resume=True)
    with pytest.raises(CheckpointError, match="other adapters"):
        Trainer(tiny_config(tmp_path, **{**LORA, "model.lora.r": 8, "train.steps": 2}),
                progress=False).train(resume=True)


@pytest.mark.parametrize("override, message", [
    ("model.lora.dropout=1.5", "model.lora.dropout"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.target_modules=[]", "model.lora.target_modules"),
    ("model.lora.alhpa=4", "Did you mean 'alpha'"),
])
def test_bad_lora_settings_are_named(override, message):
    from pivotal.config import load_config
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.lora.r=4", override])
