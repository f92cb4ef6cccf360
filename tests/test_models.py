import time

import pytest

from pivotal.models import ModelLoadError, load_model, resolve_device, resolve_dtype


def test_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("someone/not-a-cached-model")
    assert time.time() - t0 < 30


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))


def test_bad_device_and_dtype():
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    assert str(resolve_device("auto")) in ("cpu", "cuda")


def test_tiny_random_has_real_tokenizer(tiny):
    model, tok = tiny
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.chat_template  # SmolLM2's chat template
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_hub_id_fails_fast_without_offline_flags(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE set: the reachability probe, not a long retry loop, decides."""
    from pivotal.hub import hub_reachable
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    if hub_reachable(timeout=3):
        pytest.skip("the hub is reachable from here")
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="the hub cannot be reached"):
        load_model("someone/not-a-cached-model")
    assert time.time() - t0 < 30
