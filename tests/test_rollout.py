"""The transformers rollout engine, the log-prob paths and evaluation metrics (tiny model)."""

import math

import pytest
import torch

from pivotal.evaluation import evaluate, pass_at_k
from pivotal.logprobs import policy_logprobs, response_logits, token_logprobs, trim_padding
from pivotal.rollout import SamplingParams, TransformersEngine, filter_logits
from pivotal.tasks import Problem

PROMPTS = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words in it."]


def test_greedy_matches_model_generate(tiny):
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    batch, texts = engine.generate(PROMPTS, 1, SamplingParams(max_new_tokens=12, temperature=0))
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = ref[:, enc["input_ids"].shape[1]:]
    for i in range(len(PROMPTS)):
        n = int(batch.response_mask[i].sum())
        assert batch.response_ids[i, :n].tolist() == ref[i, :n].tolist()


def test_batch_layout_and_logprobs_match_a_recompute(tiny):
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    batch, texts = engine.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, temperature=0.8),
                                   seed=1)
    assert batch.size == 12 and len(texts) == 12
    assert batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.all(batch.prompt_ids[0] == batch.prompt_ids[3])  # rows 0-3 share prompt 0
    view = trim_padding(batch)
    with torch.no_grad():
        lp, entropy = policy_logprobs(model, view, temperature=0.8, with_entropy=True)
    mask = view.response_mask
    assert ((lp - view.old_logprobs).abs() * mask).max() < 1e-4
    assert torch.all(entropy[mask.bool()] > 0)
    # padding after a response is zero in mask and log-probs
    assert torch.all(batch.old_logprobs[batch.response_mask == 0] == 0)


def test_same_seed_same_samples(tiny):
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    params = SamplingParams(max_new_tokens=6)
    a, _ = engine.generate(PROMPTS, 2, params, seed=5)
    b, _ = engine.generate(PROMPTS, 2, params, seed=5)
    c, _ = engine.generate(PROMPTS, 2, params, seed=6)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_finished_rows_stop_costing_compute(tiny):
    """A row that ends early is dropped from the decode batch: later forwards see fewer rows."""
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    eos = tok.eos_token_id
    seen_rows = []
    original_forward = model.forward

    def forward(*args, **kwargs):
        seen_rows.append(kwargs["input_ids"].shape[0])
        out = original_forward(*args, **kwargs)
        if kwargs["input_ids"].shape[1] == 1 and len(seen_rows) == 3:
            out.logits[0, -1, :] = -1e9  # force EOS in the first live row at the 3rd token
            out.logits[0, -1, eos] = 0.0
        return out

    model.forward = forward
    try:
        batch, _ = engine.generate(PROMPTS[:1], 4, SamplingParams(max_new_tokens=6), seed=0)
    finally:
        del model.forward
    assert seen_rows[0] == 1  # one prefill for the prompt, not four
    assert seen_rows[1] == 4
    assert seen_rows[-1] == 3  # the finished row no longer runs
    lengths = batch.response_lengths.tolist()
    assert sorted(lengths)[0] == 3 and not batch.truncated[lengths.index(3)]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(logits, top_p=0.8)  # 0.5 + 0.3 reaches 0.8: keep two
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.01)[0, 0])  # always keeps the top token


@pytest.mark.parametrize("share_prompt, pack", [(False, False), (True, False), (True, True)])
def test_logprob_paths_agree_in_values_and_gradients(tiny, share_prompt, pack):
    """Full logits over every position vs the fast paths (shared prompt, packed responses, LM head
    on real tokens); the rows are shuffled, so a group's rows are not side by side."""
    model, tok = tiny
    engine = TransformersEngine(model, tok)
    batch, _ = engine.generate(PROMPTS, 3, SamplingParams(max_new_tokens=6), seed=0)
    batch = trim_padding(batch.select(torch.randperm(batch.size, generator=torch.Generator()
                                                     .manual_seed(0))))
    mask = batch.response_mask

    def grads():
        out = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        return out

    model.zero_grad()
    # reference: the plain causal-LM forward over the whole sequence, logits at every position
    attention = batch.attention_mask
    logits = model(input_ids=batch.input_ids, attention_mask=attention,
                   position_ids=(attention.cumsum(1) - 1).clamp(min=0)).logits
    T = batch.response_ids.shape[1]
    ref = token_logprobs(logits[:, -(T + 1):-1] / 0.7, batch.response_ids) * mask
    ref.sum().backward()
    ref_grads = grads()

    lp, entropy = policy_logprobs(model, batch, 0.7, with_entropy=True, share_prompt=share_prompt,
                                  pack=pack)
    lp.sum().backward()
    fast_grads = grads()
    assert ((lp - ref.detach()).abs()).max() < 1e-4
    assert torch.all(lp[mask == 0] == 0) and torch.all(entropy[mask == 0] == 0)
    for k in ref_grads:
        torch.testing.assert_close(fast_grads[k], ref_grads[k], atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        full = response_logits(model, batch, 0.7, share_prompt=share_prompt, pack=pack)
    torch.testing.assert_close(token_logprobs(full, batch.response_ids) * mask, ref.detach(),
                               atol=1e-4, rtol=1e-4)


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert math.isclose(pass_at_k(4, 1, 1), 0.25)
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert math.isclose(pass_at_k(4, 1, 2), 0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert math.isclose(pass_at_k(5, 2, 3), 0.9)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 4)


def test_evaluate_reports_every_metric(tiny):
    model, tok = tiny
    problems = [Problem(str(i), f"What is {i} + 1?", str(i + 1)) for i in range(3)]
    summary, records = evaluate(model, tok, problems, n_samples=4, max_new_tokens=5,
                                progress=False)
    for key in ("greedy_strict", "greedy_lenient", "avg@4_lenient", "pass@1_lenient",
                "pass@4_lenient", "maj@4_lenient", "greedy_mean_length", "boxed_rate"):
        assert key in summary
    assert len(records) == 3 + 3 * 4
    assert {r["kind"] for r in records} == {"greedy", "sample"}
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, tok, [], progress=False)


def test_logprobs_and_entropy_hand_values():
    from pivotal.logprobs import entropy_from_logits, logprobs_and_entropy
    uniform = torch.zeros(2, 4)  # H = log 4, every token log-prob = -log 4
    lp, ent = logprobs_and_entropy(uniform, torch.tensor([0, 3]))
    torch.testing.assert_close(lp, torch.full((2,), -math.log(4)))
    torch.testing.assert_close(ent, torch.full((2,), math.log(4)))
    peaked = torch.tensor([[0.0, -1e4, -1e4]])  # all mass on one token: H = 0
    assert entropy_from_logits(peaked).abs().item() < 1e-6
    probs = torch.tensor([0.5, 0.25, 0.25])  # H = 1.5 log 2
    torch.testing.assert_close(entropy_from_logits(probs.log()), torch.tensor(1.5 * math.log(2)))
