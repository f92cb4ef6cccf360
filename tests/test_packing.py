"""Packed responses (`pivotal.packing`): the layout by hand, and log-probs and gradients equal to
the padded layout's on the tiny model (sdpa and eager attention) and on the built-in model."""

import copy

import pytest
import torch

from pivotal.batch import RolloutBatch
from pivotal.logprobs import policy_logprobs, trim_padding
from pivotal.packing import gather_states, pack_responses, packing_saves_work, usable_for
from pivotal.rollout import SamplingParams, TransformersEngine

PROMPTS = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words in it."]


def _hand_batch() -> RolloutBatch:
    """Two groups, rows interleaved: group 7 prompt [5, 6] (left-padded), group 3 prompt [9];
    response lengths 3, 2, 1, 0."""
    prompt_ids = torch.tensor([[0, 5, 6], [0, 0, 9], [0, 5, 6], [0, 0, 9]])
    response_ids = torch.tensor([[11, 12, 13], [21, 22, 0], [31, 0, 0], [0, 0, 0]])
    response_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=(prompt_ids > 0).long(),
                        response_ids=response_ids, response_mask=response_mask,
                        old_logprobs=torch.zeros(4, 3), group_ids=torch.tensor([7, 3, 7, 3]),
                        truncated=torch.zeros(4, dtype=torch.bool))


def test_layout_by_hand():
    layout = pack_responses(_hand_batch())
    # row 0: group 7 = prompt [5, 6], row 0's inputs [11, 12], row 2's none (length 1)
    # row 1: group 3 = prompt [9], row 1's input [21], row 3 nothing (length 0); padded to 4
    assert layout.input_ids.tolist() == [[5, 6, 11, 12], [9, 21, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    L = 4
    assert layout.source.tolist() == [[1, 2, 3], [L + 0, L + 1, 2 * L], [1, 2 * L, 2 * L],
                                      [2 * L] * 3]
    allowed = layout.allowed[:, 0].int().tolist()
    assert allowed[0] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert allowed[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]  # pads see pads
    states = torch.arange(2 * L, dtype=torch.float).view(2, L, 1)
    gathered = gather_states(states, layout)[..., 0]
    assert gathered.tolist() == [[1, 2, 3], [4, 5, 0], [1, 0, 0], [0, 0, 0]]


def test_two_responses_of_a_group_do_not_see_each_other():
    batch = _hand_batch()
    batch.response_mask[2] = torch.tensor([1.0, 1.0, 0.0])  # row 2 now feeds token 31 too
    batch.response_ids[2, 1] = 32
    layout = pack_responses(batch)
    assert layout.input_ids[0].tolist() == [5, 6, 11, 12, 31]
    assert layout.position_ids[0].tolist() == [0, 1, 2, 3, 2]  # row 2 restarts after the prompt
    assert layout.allowed[0, 0, 4].int().tolist() == [1, 1, 0, 0, 1]


def _sampled(tiny):
    model, tok = tiny
    batch, _ = TransformersEngine(model, tok).generate(
        PROMPTS, 4, SamplingParams(max_new_tokens=8), seed=3)
    shuffle = torch.randperm(batch.size, generator=torch.Generator().manual_seed(1))
    return trim_padding(batch.select(shuffle))


def _values_and_grads(model, batch, pack: bool):
    model.zero_grad()
    logp, entropy = policy_logprobs(model, batch, 0.7, with_entropy=True, pack=pack)
    (logp * torch.linspace(0.5, 1.5, logp.numel()).view_as(logp)).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    return logp.detach(), entropy, grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_equals_padded_in_values_and_gradients(tiny, attention):
    model = copy.deepcopy(tiny[0])
    model.set_attn_implementation(attention)
    batch = _sampled(tiny)
    assert usable_for(model, pack_responses(batch))
    assert packing_saves_work(model, batch, pack_responses(batch))  # the packed rows do run
    ref_logp, ref_entropy, ref_grads = _values_and_grads(model, batch, pack=False)
    logp, entropy, grads = _values_and_grads(model, batch, pack=True)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(logp, ref_logp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, atol=2e-5, rtol=1e-5)
    assert torch.all(logp[~mask] == 0)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4)


def test_models_that_cannot_read_a_4d_mask_keep_the_padded_rows(tiny):
    model = copy.deepcopy(tiny[0])
    batch = _sampled(tiny)
    layout = pack_responses(batch)
    model.config.sliding_window = 4  # shorter than the sequences: the window would be lost
    assert not usable_for(model, layout)
    ref = policy_logprobs(model, batch, 0.7, pack=False)[0]
    with pytest.warns(UserWarning, match="padded rows"):
        torch.testing.assert_close(policy_logprobs(model, batch, 0.7, pack=True)[0], ref)
    model.config.sliding_window = 4096
    assert usable_for(model, layout)


def test_packing_is_skipped_where_its_dense_attention_costs_more(tiny):
    """One group of 12 rows of 128 tokens each: no padding to save, and one 1.5k-position packed
    row whose dense attention costs more than the padded rows' (`packing_saves_work` says no)."""
    model = tiny[0]
    batch = _sampled(tiny)
    assert packing_saves_work(model, batch, pack_responses(batch))
    long = copy.copy(batch)
    long.group_ids = torch.zeros_like(batch.group_ids)
    long.response_ids = batch.response_ids.repeat(1, 16)
    long.response_mask = torch.ones_like(long.response_ids, dtype=torch.float)
    long.old_logprobs = torch.zeros_like(long.response_mask)
    assert not packing_saves_work(model, long, pack_responses(long))


def test_packed_equals_padded_on_the_built_in_model(smollm2):
    """The real SmolLM2-135M: two prompts x 4 sampled responses, values and gradients."""
    model, tok = smollm2
    batch, _ = TransformersEngine(model, tok).generate(
        PROMPTS[:2], 4, SamplingParams(max_new_tokens=12), seed=0)
    batch = trim_padding(batch)
    assert packing_saves_work(model, batch, pack_responses(batch))
    ref_logp, _, ref_grads = _values_and_grads(model, batch, pack=False)
    logp, _, grads = _values_and_grads(model, batch, pack=True)
    torch.testing.assert_close(logp, ref_logp, atol=1e-4, rtol=1e-4)
    # float32 rounding of 30 layers in other matmul shapes, compared by each tensor's norm: a few
    # of the 28M embedding-gradient entries differ by ~1e-4; measured 1.4e-5 packed vs padded,
    # 4.1e-5 for the shared-prompt path (exact too) vs padded
    worst = max(float((grads[k] - g).norm() / g.norm().clamp(min=1e-12)) for k, g in ref_grads.items())
    print(f"largest relative gradient difference: {worst:.2e}")
    assert worst < 1e-4
