"""Two-model decoding (pivotal.analysis.decoding): cross-sampling and test-time extrapolation.

The models are tiny random Llamas (different seeds) made peaky (final-norm weight x 20) so that
JS, entropy and Δlog p vary across positions, and given a deterministic EOS rule (a forward hook
on the LM head: EOS wins where the first hidden unit exceeds a threshold) so that rows finish at
different steps and the drop-finished-rows path runs. Every decision is checked against a
brute-force teacher-forced recomputation over the final sequences.
"""

import copy
import json
import math

import pytest
import torch

from pivotal.analysis.cli_cross_sample import (
    add_extrapolation_args,
    add_parser,
    check_same_tokenizer,
    extrapolation_engine_from_args,
)
from pivotal.analysis.decoding import (
    CrossSamplingEngine,
    ExtrapolationEngine,
    cross_sampling_sweep,
    extrapolated_logits,
    extrapolation_probabilities,
)
from pivotal.logprobs import response_logits
from pivotal.models import load_model
from pivotal.rollout import SamplingParams, TransformersEngine
from pivotal.tasks import Problem

PROMPTS = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words.",
           "Compute 17 * 4 please", "x"]
GREEDY = SamplingParams(max_new_tokens=14, temperature=0)
MARGIN = 1e-3  # decisions this close to tau may flip between cached and full forwards


def _peaky(seed: int, eos_threshold: float):
    model, tok = load_model("tiny-random", seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)
    eos = tok.eos_token_id

    def force_eos(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos] += 60.0 * (inputs[0][..., 0] > eos_threshold).to(logits.dtype)
        return logits

    model.lm_head.register_forward_hook(force_eos)
    return model, tok


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine, extra threads wait on each other
    (measured: a 6-token eval took 1.6 s with 2 threads under load, 0.02 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair():
    base, tok = _peaky(0, 20.0)
    rl, _ = _peaky(1, 20.0)
    return base, rl, tok


@pytest.fixture(scope="module")
def greedy_refs(pair):
    base, rl, tok = pair
    return (TransformersEngine(base, tok).generate(PROMPTS, 1, GREEDY)[0],
            TransformersEngine(rl, tok).generate(PROMPTS, 1, GREEDY)[0])


def _rows(batch):
    return [batch.response_ids[i, :int(n)].tolist()
            for i, n in enumerate(batch.response_mask.sum(1))]


def _teacher_forced(pair, batch):
    """(base log-probs, rl log-probs) (N, V) at every valid response position, and the mask."""
    base, rl, _ = pair
    mask = batch.response_mask.bool()
    with torch.no_grad():
        lb = torch.log_softmax(response_logits(base, batch).float(), -1)[mask]
        lr = torch.log_softmax(response_logits(rl, batch).float(), -1)[mask]
    return lb, lr, mask


def _fired_flat(batch, mask):
    fired = torch.zeros_like(mask)
    for i, positions in enumerate(batch.extras["fired_positions"]):
        fired[i, positions] = True
    return fired[mask]


def _clear_argmax(lp):
    """Positions whose top-1 beats the top-2 by more than MARGIN (argmax is robust there)."""
    top2 = lp.topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]) > MARGIN


# ----------------------------------------------------------------------------------------------
# Cross-sampling
# ----------------------------------------------------------------------------------------------

def test_some_rows_finish_early_so_row_dropping_is_exercised(greedy_refs, pair):
    base_ref, rl_ref = greedy_refs
    engine = CrossSamplingEngine(*pair, criterion="random", tau=0.5)
    mixed, _ = engine.generate(PROMPTS, 1, GREEDY, seed=0)
    lengths = torch.cat([base_ref.response_lengths, rl_ref.response_lengths,
                         mixed.response_lengths])
    assert (lengths < GREEDY.max_new_tokens).any() and (lengths == GREEDY.max_new_tokens).any()


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("criterion,tau", [("divergence", 1.0), ("dlogp", -1e9),
                                           ("entropy", 1e9), ("random", 0.0)])
def test_nothing_replaced_equals_the_decoders_own_greedy(pair, greedy_refs, direction,
                                                         criterion, tau):
    engine = CrossSamplingEngine(*pair, direction=direction, criterion=criterion, tau=tau)
    batch, _ = engine.generate(PROMPTS, 1, GREEDY, seed=0)
    ref = greedy_refs[0] if direction == "forward" else greedy_refs[1]
    assert _rows(batch) == _rows(ref)
    assert torch.allclose(batch.old_logprobs, ref.old_logprobs, atol=1e-5)
    assert engine.replaced == 0 and engine.positions == int(ref.response_mask.sum())


@pytest.mark.parametrize("criterion,tau", [("random", 1.0), ("divergence", 0.0),
                                           ("entropy", -1.0), ("dlogp", 1e9)])
def test_replace_everywhere_forward_equals_rl_greedy(pair, greedy_refs, criterion, tau):
    base_ref, rl_ref = greedy_refs
    assert _rows(base_ref) != _rows(rl_ref)  # else the test could not fail
    engine = CrossSamplingEngine(*pair, direction="forward", criterion=criterion, tau=tau)
    batch, _ = engine.generate(PROMPTS, 1, GREEDY, seed=0)
    assert _rows(batch) == _rows(rl_ref)
    # old_logprobs: the emitting model (rl) scored its own tokens
    assert torch.allclose(batch.old_logprobs, rl_ref.old_logprobs, atol=1e-5)
    assert engine.replaced == engine.positions == int(rl_ref.response_mask.sum())
    assert engine.budget == 1.0


def _criterion_values(criterion, lb, lr, proposed, direction="forward"):
    if criterion == "divergence":  # JS by hand: 0.5 KL(b||m) + 0.5 KL(r||m)
        pb, pr = lb.exp(), lr.exp()
        m = 0.5 * (pb + pr)
        return 0.5 * (pb * (lb - m.log())).sum(-1) + 0.5 * (pr * (lr - m.log())).sum(-1)
    if criterion == "dlogp":
        idx = proposed.unsqueeze(-1)
        dlogp = (lr.gather(-1, idx) - lb.gather(-1, idx)).squeeze(-1)
        return dlogp if direction == "forward" else -dlogp  # other minus decoder
    return -(lb.exp() * lb).sum(-1)  # entropy of base


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("criterion", ["divergence", "dlogp", "entropy"])
def test_decisions_match_a_teacher_forced_recomputation(pair, greedy_refs, direction, criterion):
    # tau = the median of the criterion on the decoder's own greedy output: about half fire
    ref = greedy_refs[0] if direction == "forward" else greedy_refs[1]
    lb0, lr0, _ = _teacher_forced(pair, ref)
    decoder0 = lb0 if direction == "forward" else lr0
    tau = float(_criterion_values(criterion, lb0, lr0, decoder0.argmax(-1), direction).median())
    engine = CrossSamplingEngine(*pair, direction=direction, criterion=criterion, tau=tau)
    batch, _ = engine.generate(PROMPTS, 1, GREEDY, seed=0)

    lb, lr, mask = _teacher_forced(pair, batch)
    own, other = (lb, lr) if direction == "forward" else (lr, lb)
    proposed, alternative = own.argmax(-1), other.argmax(-1)
    values = _criterion_values(criterion, lb, lr, proposed, direction)
    expected = values <= tau if criterion == "dlogp" else values >= tau
    fired = _fired_flat(batch, mask)
    emitted = batch.response_ids[mask]
    sure = ((values - tau).abs() > MARGIN) & _clear_argmax(own) & _clear_argmax(other)
    assert sure.float().mean() > 0.8
    assert torch.equal(fired[sure], expected[sure])
    assert 0 < int(fired.sum()) < len(fired)  # a real mixture
    assert torch.equal(emitted[sure], torch.where(expected, alternative, proposed)[sure])
    # budget counters
    assert engine.positions == int(mask.sum()) and engine.replaced == int(fired.sum())
    assert engine.budget == pytest.approx(engine.replaced / engine.positions)
    assert engine.changed == int((emitted != proposed).sum())
    # old_logprobs: the log-prob under the model that emitted the token
    emitted_lp = torch.where(fired, other.gather(-1, emitted[:, None]).squeeze(-1),
                             own.gather(-1, emitted[:, None]).squeeze(-1))
    assert torch.allclose(batch.old_logprobs[mask], emitted_lp, atol=1e-4)


def test_counters_accumulate_until_reset(pair):
    engine = CrossSamplingEngine(*pair, criterion="random", tau=1.0)
    a, _ = engine.generate(PROMPTS[:2], 1, GREEDY, seed=0)
    b, _ = engine.generate(PROMPTS[2:], 1, GREEDY, seed=1)
    assert engine.positions == int(a.response_mask.sum() + b.response_mask.sum())
    engine.reset()
    assert engine.positions == engine.replaced == engine.changed == 0 and engine.budget == 0.0


def test_random_criterion_is_seeded_and_sampling_logprobs_are_right(pair):
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_p=0.95)
    runs = []
    for seed in (3, 3, 4):
        engine = CrossSamplingEngine(*pair, criterion="random", tau=0.5, seed=seed)
        batch, _ = engine.generate(PROMPTS, 2, params, seed=1)
        runs.append((batch, engine))
    (a, ea), (b, _), (c, _) = runs
    assert torch.equal(a.response_ids, b.response_ids)
    assert a.extras["fired_positions"] == b.extras["fired_positions"]
    assert a.extras["fired_positions"] != c.extras["fired_positions"]
    assert 0.25 < ea.budget < 0.75 and ea.positions >= 60
    # sampled old_logprobs: log softmax(logits / T) of the model that emitted the token
    base, rl, _ = pair
    mask = a.response_mask.bool()
    with torch.no_grad():
        lb = torch.log_softmax(response_logits(base, a).float() / 0.7, -1)[mask]
        lr = torch.log_softmax(response_logits(rl, a).float() / 0.7, -1)[mask]
    tok = a.response_ids[mask][:, None]
    fired = _fired_flat(a, mask)
    expected = torch.where(fired, lr.gather(-1, tok).squeeze(-1), lb.gather(-1, tok).squeeze(-1))
    assert torch.allclose(a.old_logprobs[mask], expected, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Extrapolation
# ----------------------------------------------------------------------------------------------

def test_extrapolation_with_gamma_zero_is_rl_greedy(pair, greedy_refs):
    base_ref, rl_ref = greedy_refs
    for propose in ("base", "rl"):  # firing everywhere, the proposer does not matter
        full = ExtrapolationEngine(*pair, gamma=0.0, where="all", top_n=0, propose=propose)
        batch, _ = full.generate(PROMPTS, 1, GREEDY)   # z = log p_rl
        assert _rows(batch) == _rows(rl_ref)
        assert full.extrapolated == full.positions
    # never firing, the proposer decodes alone: the base model by default (the released rule)
    for propose, ref in (("base", base_ref), ("rl", rl_ref)):
        none = ExtrapolationEngine(*pair, gamma=0.0, tau=-1e9, where="selected", top_n=50,
                                   propose=propose)
        batch, _ = none.generate(PROMPTS, 1, GREEDY)
        assert _rows(batch) == _rows(ref) and none.extrapolated == 0


def test_the_released_rule_on_one_position_exactly():
    # issue 17's minimal case: p_base = (0.9, 0.1), p_rl = (0.5, 0.5), gamma 0.05, tau -0.3.
    # The base proposes A (0.9), whose Δlog p = log(0.5 / 0.9) = -0.588 fires; B's (+1.609) does
    # not. Redrawn from z = 1.05 log p_rl - 0.05 log p_base: P(B) = sigmoid(0.05 log 9) = 0.52744.
    # So P(fire) = 0.9 and P(B) = 0.1 + 0.9 * 0.52744 = 0.57470. Proposing with the RL model
    # instead: P(fire) = 0.5 and P(B) = 0.5 + 0.5 * 0.52744 = 0.76372.
    base = torch.log(torch.tensor([[0.9, 0.1]]))
    rl = torch.log(torch.tensor([[0.5, 0.5]]))
    params = SamplingParams(8, temperature=1.0)
    q_b = 1 / (1 + math.exp(-0.05 * math.log(9)))
    for propose, fire, p_b in (("base", 0.9, 0.1 + 0.9 * q_b), ("rl", 0.5, 0.5 + 0.5 * q_b)):
        p_fire, probs = extrapolation_probabilities(base, rl, params, gamma=0.05, tau=-0.3,
                                                    propose=propose)
        assert float(p_fire) == pytest.approx(fire, abs=1e-6)
        assert float(probs[0, 1]) == pytest.approx(p_b, abs=1e-6)
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)
    assert 0.1 + 0.9 * q_b == pytest.approx(0.5747, abs=1e-4)
    assert 0.5 + 0.5 * q_b == pytest.approx(0.7637, abs=1e-4)
    # top-p 0.7 on the base's proposal keeps A alone (0.9 >= 0.7): it always fires
    p_fire, probs = extrapolation_probabilities(base, rl, SamplingParams(8, 1.0, top_p=0.7),
                                                gamma=0.05, tau=-0.3)
    assert float(p_fire) == pytest.approx(1.0)


def test_the_engine_step_draws_from_the_exact_law():
    # the engine's two-stage step (propose, test, redraw) sampled 40,000 times on a 4-token
    # vocabulary matches `extrapolation_probabilities` within 4 standard errors
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 4, generator=g) * 2
    rl = torch.randn(1, 4, generator=g) * 2
    params = SamplingParams(8, temperature=0.8, top_p=0.9)
    engine = ExtrapolationEngine.__new__(ExtrapolationEngine)   # the rule needs no models
    engine.gamma, engine.tau, engine.where, engine.top_n, engine.propose = 0.3, -0.2, "selected", 3, "base"
    n = 40_000
    step = engine._rule(base.expand(n, 4), rl.expand(n, 4), params, torch.Generator().manual_seed(0))
    p_fire, probs = extrapolation_probabilities(base, rl, params, gamma=0.3, tau=-0.2, top_n=3)
    freq = torch.bincount(step.tokens, minlength=4).float() / n
    se = (probs[0] * (1 - probs[0]) / n).sqrt().clamp(min=1e-4)
    assert ((freq - probs[0]).abs() <= 4 * se).all(), (freq, probs)
    assert abs(step.fired.float().mean() - p_fire[0]) <= 4 * math.sqrt(p_fire[0] * (1 - p_fire[0]) / n) + 1e-4
    assert 0.05 < float(p_fire) < 0.95   # the case exercises both branches


def test_extrapolated_greedy_is_argmax_of_hand_computed_z(pair, greedy_refs):
    gamma, top_n = 0.5, 50
    engine = ExtrapolationEngine(*pair, gamma=gamma, where="all", top_n=top_n)
    batch, _ = engine.generate(PROMPTS, 1, GREEDY)
    assert _rows(batch) != _rows(greedy_refs[1])  # extrapolation changed something
    lb, lr, mask = _teacher_forced(pair, batch)
    z = (1 + gamma) * lr - gamma * lb
    candidates = lb.argsort(dim=-1, descending=True)[:, :top_n]
    restricted = torch.full_like(z, float("-inf")).scatter(-1, candidates, z.gather(-1, candidates))
    emitted = batch.response_ids[mask]
    sure = _clear_argmax(restricted)
    assert sure.float().mean() > 0.8
    assert torch.equal(emitted[sure], restricted.argmax(-1)[sure])
    assert engine.extrapolated == engine.positions == int(mask.sum())
    # old_logprobs: log-prob under softmax(z) over the candidates
    assert torch.allclose(batch.old_logprobs[mask],
                          torch.log_softmax(restricted, -1).gather(-1, emitted[:, None])
                          .squeeze(-1), atol=1e-4)


def test_extrapolated_logits_function_by_hand():
    lb = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), -1)
    lr = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), -1)
    z = extrapolated_logits(lb, lr, gamma=0.5, top_n=3)
    expected = 1.5 * lr - 0.5 * lb
    assert torch.allclose(z[0, :3], expected[0, :3]) and math.isinf(z[0, 3])
    assert int(z.argmax()) == 2  # rl's favourite (token 3) is outside base's top-3


def test_selected_extrapolation_only_touches_low_dlogp_positions(pair):
    tau = -0.5
    engine = ExtrapolationEngine(*pair, gamma=1.0, tau=tau, where="selected", top_n=50,
                                 propose="rl")
    batch, _ = engine.generate(PROMPTS, 1, GREEDY)
    lb, lr, mask = _teacher_forced(pair, batch)
    proposed = lr.argmax(-1)
    dlogp = (lr.gather(-1, proposed[:, None]) - lb.gather(-1, proposed[:, None])).squeeze(-1)
    fired = _fired_flat(batch, mask)
    emitted = batch.response_ids[mask]
    sure = ((dlogp - tau).abs() > MARGIN) & _clear_argmax(lr)
    assert sure.float().mean() > 0.8
    assert torch.equal(fired[sure], (dlogp <= tau)[sure])
    assert 0 < int(fired.sum()) < len(fired)
    changed = emitted != proposed
    assert changed.any()
    assert not (changed & sure & (dlogp > tau)).any()  # unselected positions keep rl's token
    assert engine.extrapolated == int(fired.sum()) and engine.changed == int(changed.sum())


# ----------------------------------------------------------------------------------------------
# Sweep, CLI helpers
# ----------------------------------------------------------------------------------------------

def answer_in_text(completion: str, problem) -> float:
    """A test verifier: correct when the problem's answer string occurs in the response."""
    return 1.0 if problem.answer in completion else 0.0


def test_sweep_schema_and_values(pair):
    base, rl, tok = pair
    # while this test runs, rl always prefers the token "7" (base never writes it), so a verifier
    # looking for "7" marks rl right and base wrong on problem 0
    seven = tok.convert_tokens_to_ids("7")

    def prefer_seven(module, inputs, logits):
        logits = logits.clone()
        logits[..., seven] += 1e3
        return logits

    problems = [Problem("p0", "What is 3 + 4?", "7", reward="test_analysis_decoding:answer_in_text"),
                Problem("p1", "Name a colour.", "\x00never",
                        reward="test_analysis_decoding:answer_in_text")]
    handle = rl.lm_head.register_forward_hook(prefer_seven)
    try:
        taus = {"dlogp": [-1e9, 1e9], "divergence": [0.0], "random": None}
        result = cross_sampling_sweep(base, rl, tok, problems, taus, ["forward", "reverse"],
                                      max_new_tokens=6, batch_size=2, progress=False,
                                      base_name="B", rl_name="R")
    finally:
        handle.remove()
    assert result["base"] == "B" and result["rl"] == "R" and result["n_problems"] == 2
    assert result["accuracy_base"] == 0.0 and result["accuracy_rl"] == 0.5
    points = result["points"]
    assert len(points) == 2 * (2 + 1 + 2)
    keys = {"direction", "criterion", "tau", "budget", "accuracy", "replaced", "positions"}
    assert all(keys <= set(p) for p in points)
    for p in points:
        assert p["budget"] == pytest.approx(p["replaced"] / p["positions"])
    get = {(p["direction"], p["criterion"], p["tau"]): p for p in points}
    # forward, nothing replaced = base; replace everywhere = rl; reverse the other way round
    assert get[("forward", "dlogp", -1e9)]["accuracy"] == 0.0
    assert get[("forward", "dlogp", -1e9)]["budget"] == 0.0
    assert get[("forward", "dlogp", 1e9)]["budget"] == 1.0
    assert get[("forward", "divergence", 0.0)]["accuracy"] == 0.5
    assert get[("reverse", "divergence", 0.0)]["accuracy"] == 0.0
    assert get[("reverse", "dlogp", -1e9)]["accuracy"] == 0.5
    # random: matched to the dlogp budgets of the same direction
    for d in ("forward", "reverse"):
        random_taus = [p["tau"] for p in points if p["direction"] == d and p["criterion"] == "random"]
        dlogp_budgets = [p["budget"] for p in points
                         if p["direction"] == d and p["criterion"] == "dlogp"]
        assert random_taus == dlogp_budgets == [0.0, 1.0]
    json.dumps(result)  # serialisable


def test_tokenizer_mismatch_names_both_models(pair):
    _, _, tok = pair
    other = copy.deepcopy(tok)
    other.add_tokens(["<definitely_new_token>"])
    assert check_same_tokenizer(tok, copy.deepcopy(tok), "a", "b")
    with pytest.raises(ValueError, match="'base-x'.*'rl-y'"):
        check_same_tokenizer(tok, other, "base-x", "rl-y")


def test_cli_parsers_and_extrapolation_helper(pair, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["cross-sample", "--rl", "ckpt", "--taus-dlogp", "-1", "-0.5",
                              "--criteria", "dlogp", "random"])
    assert args.base == "smollm2-135m" and args.max_new_tokens == 48 and args.limit == 100
    assert args.taus_dlogp == [-1.0, -0.5] and args.directions == ["forward", "reverse"]

    e = argparse.ArgumentParser()
    add_extrapolation_args(e)
    assert extrapolation_engine_from_args(e.parse_args([]), pair[1], pair[2]) is None
    a = e.parse_args(["--extrapolate-base", "tiny-random", "--gamma", "0.05",
                      "--extrapolate-where", "all"])
    engine = extrapolation_engine_from_args(a, pair[1], pair[2])
    assert isinstance(engine, ExtrapolationEngine) and engine.rl is pair[1]
    assert (engine.gamma, engine.tau, engine.where, engine.top_n) == (0.05, -0.3, "all", 50)


def test_cli_run_writes_json_and_plot(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["cross-sample", "--base", "tiny-random", "--rl", "tiny-random",
                              "--limit", "2", "--max-new-tokens", "3", "--criteria", "dlogp",
                              "--taus-dlogp", "-1", "--directions", "forward", "--device", "cpu",
                              "--out", str(tmp_path), "--quiet"])
    assert args.fn(args) == 0
    result = json.loads((tmp_path / "cross_sampling.json").read_text())
    assert result["n_problems"] == 2 and len(result["points"]) == 1
    assert result["points"][0]["budget"] == 0.0  # identical models: Δlog p = 0 > -1
    assert (tmp_path / "cross_sampling.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".cross_sampling.json.*"))  # no temp file left behind
