"""The chunked log-softmax (pivotal.chunked_logsoftmax) against the whole-tensor formulas."""

import pytest
import torch

from pivotal.batch import RolloutBatch
from pivotal.chunked_logsoftmax import chunked_logprobs, rows_per_chunk
from pivotal.logprobs import policy_logprobs

V = 4096


def reference(logits: torch.Tensor, tokens: torch.Tensor, scale: float):
    """log p, entropy and d(sum_i g_i log p_i)/d logits, in float64 autograd."""
    z = (logits.double() * scale).requires_grad_()
    log_p = torch.log_softmax(z, -1)
    logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logp, entropy, z


@pytest.mark.parametrize("n", [1, rows_per_chunk(V) - 1, rows_per_chunk(V) + 1, 3 * rows_per_chunk(V)])
@pytest.mark.parametrize("scale", [1.0, 1 / 0.7])
def test_values_and_gradient_match_the_whole_tensor_form(n, scale):
    g = torch.Generator().manual_seed(n)
    logits = (torch.randn(n, V, generator=g) * 4 + 30).requires_grad_()
    tokens = torch.randint(0, V, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    kept = logits.detach().clone()
    logp, entropy = chunked_logprobs(logits, tokens, scale, with_entropy=True)
    (logp.double() * upstream).sum().backward()
    ref_logp, ref_entropy, z = reference(logits.detach(), tokens, scale)
    (ref_logp * upstream).sum().backward()
    ref_grad = z.grad * scale  # d/d logits = scale * d/dz
    assert torch.equal(logits.detach(), kept)  # the input is never written
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(logits.grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert not entropy.requires_grad


def test_low_precision_logits_keep_their_dtype_and_float32_math():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(20, V, generator=g) * 3).bfloat16().requires_grad_()
    tokens = torch.randint(0, V, (20,), generator=g)
    logp, _ = chunked_logprobs(logits, tokens)
    logp.sum().backward()
    assert logp.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    ref_logp, _, z = reference(logits.detach().float(), tokens, 1.0)
    ref_logp.sum().backward()
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.grad.double(), z.grad, rtol=1e-2, atol=1e-3)


def test_no_entropy_and_no_rows():
    logp, entropy = chunked_logprobs(torch.zeros(0, V), torch.zeros(0, dtype=torch.long))
    assert logp.shape == (0,) and entropy is None
    with pytest.raises(ValueError, match="N, V"):
        chunked_logprobs(torch.zeros(2, 3, V), torch.zeros(2, 3, dtype=torch.long))


def test_policy_gradient_equals_the_whole_tensor_path(tiny):
    """The model's parameter gradients of sum(log p) through the chunked pass equal those of the
    whole-tensor path (which an entropy bonus, entropy_grad=True, still takes)."""
    model, tokenizer = tiny
    g = torch.Generator().manual_seed(3)
    B, P, T = 6, 5, 7
    response_mask = torch.ones(B, T)
    response_mask[0, 4:] = 0
    batch = RolloutBatch(
        prompt_ids=torch.randint(0, 1000, (B, P), generator=g),
        prompt_mask=torch.ones(B, P, dtype=torch.long),
        response_ids=torch.randint(0, 1000, (B, T), generator=g), response_mask=response_mask,
        old_logprobs=torch.zeros(B, T), group_ids=torch.arange(B) // 3,
        truncated=torch.zeros(B, dtype=torch.bool))
    grads = []
    for entropy_grad in (False, True):
        model.zero_grad(set_to_none=True)
        logp, _ = policy_logprobs(model, batch, temperature=0.7, with_entropy=True,
                                  entropy_grad=entropy_grad)
        logp.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
