"""The decode loop's fast parts against the plain ones: the preallocated KV cache against
transformers' dynamic cache (the same tokens and log-probs), and the inverse-CDF categorical draw
against the distribution it draws from."""

import sys

import pytest
import torch

from pivotal.kv_cache import PreallocatedLayer, preallocate, returned_cache
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.rollout.base import draw_categorical

decode_module = sys.modules["pivotal.rollout.kv_decode"]  # the package re-exports a function of that name
PROMPTS = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words in it."]


def _dynamic_cache(cache, repeats, new_tokens):
    cache.batch_repeat_interleave(repeats)


def _generate(model, tok, monkeypatch, prepare, params, samples=4, prompts=PROMPTS, seed=3):
    monkeypatch.setattr(decode_module, "preallocate", prepare)
    layers = []
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        layers.append(type(returned_cache(out).layers[0]))
        if len(layers) in (3, 6):  # rows leave the batch: EOS in the first live row at two steps
            out.logits[0, -1, :] = -1e9
            out.logits[0, -1, tok.eos_token_id] = 0.0
        return out

    monkeypatch.setattr(model, "forward", forward)
    batch, texts = TransformersEngine(model, tok).generate(prompts, samples, params, seed=seed)
    monkeypatch.undo()
    return batch, texts, layers


@pytest.mark.parametrize("room", [None, 2])  # None: room for every token; 2: the buffers grow
def test_preallocated_cache_gives_the_dynamic_cache_samples(tiny, monkeypatch, room):
    model, tok = tiny
    params = SamplingParams(max_new_tokens=12, temperature=1.0)

    def prepare(cache, repeats, new_tokens):
        preallocate(cache, repeats, new_tokens if room is None else room)

    fast, fast_texts, fast_layers = _generate(model, tok, monkeypatch, prepare, params)
    plain, plain_texts, _ = _generate(model, tok, monkeypatch, _dynamic_cache, params)
    assert PreallocatedLayer in fast_layers[1:]  # the decode forwards ran on the new layer
    assert fast_texts == plain_texts
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.allclose(fast.old_logprobs, plain.old_logprobs, atol=1e-6, rtol=0)
    assert len(set(fast.response_lengths.tolist())) > 1  # rows finished at different steps


def test_preallocated_cache_on_the_real_model(smollm2, monkeypatch):
    model, tok = smollm2
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    fast, _, layers = _generate(model, tok, monkeypatch, preallocate, params, samples=3, prompts=PROMPTS[:2])
    plain, _, _ = _generate(model, tok, monkeypatch, _dynamic_cache, params, samples=3, prompts=PROMPTS[:2])
    assert PreallocatedLayer in layers[1:]
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.allclose(fast.old_logprobs, plain.old_logprobs, atol=1e-5, rtol=0)


def test_preallocated_layer_keeps_rows_and_positions():
    from transformers.cache_utils import DynamicLayer
    layer = DynamicLayer()
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer.update(keys, values)
    fast = PreallocatedLayer.from_layer(layer, repeats=2, new_tokens=1)
    assert torch.equal(fast.keys, keys.repeat_interleave(2, dim=0))
    step = torch.randn(4, 3, 2, 4)
    k, v = fast.update(step, step + 1)  # two positions into room for one: the buffer grows
    assert k.shape == (4, 3, 7, 4) and fast.get_seq_length() == 7
    assert torch.equal(k[:, :, 5:], step) and torch.equal(v[:, :, :5], values.repeat_interleave(2, dim=0))
    fast.batch_select_indices(torch.tensor([1, 3]))
    assert torch.equal(fast.keys[:, :, :5], keys[[0, 1]]) and torch.equal(fast.keys[:, :, 5:], step[[1, 3]])


def test_categorical_draw_follows_the_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.2, 0.3, 0.4, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                          [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    n = 40_000
    draws = torch.stack([draw_categorical(probs, generator) for _ in range(n)])  # (n, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=6).double() / n
        assert torch.all(freq[probs[row] == 0] == 0), f"row {row} drew a zero-probability token"
        # 4.5 standard errors of a binomial proportion: fails by chance ~1e-5 per entry
        tolerance = 4.5 * (probs[row].double() * (1 - probs[row].double()) / n).sqrt()
        assert torch.all((freq - probs[row].double()).abs() <= tolerance + 1e-12), (row, freq)


def test_categorical_draw_is_seeded_and_reads_unnormalised_rows():
    probs = torch.softmax(torch.randn(8, 1000), dim=-1)
    a = draw_categorical(probs, torch.Generator().manual_seed(4))
    b = draw_categorical(probs * 3.0, torch.Generator().manual_seed(4))  # the same cumulative shares
    c = draw_categorical(probs, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.long and a.shape == (8,)
