"""Self-distillation credit (pivotal.algos.self_distill) and the self-teacher's hints
(pivotal.hints): the gate and the annealing on hand-made tensors, the hinted log-probs against a
plain forward, the hint sources, and runs of the trainer (tiny and real model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pivotal.algos.credit import CREDITS, credit_is_additive
from pivotal.algos.self_distill import (
    CONTEXT_LOGPROBS_KEY,
    annealed_strength,
    asymmetric_gate,
    causal_information_gain,
)
from pivotal.batch import RolloutBatch
from pivotal.config import load_config
from pivotal.errors import ConfigError
from pivotal.hints import CONTEXT_IDS_KEY, context_batch, reflection_question, solution_hint, template_hint
from pivotal.tasks import Problem
from test_trainer import tiny_config

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])


def _batch(advantage_per_row, old, context):
    B, T = MASK.shape
    batch = RolloutBatch(prompt_ids=torch.zeros(B, 1, dtype=torch.long),
                         prompt_mask=torch.ones(B, 1, dtype=torch.long),
                         response_ids=torch.zeros(B, T, dtype=torch.long), response_mask=MASK,
                         old_logprobs=old * MASK, group_ids=torch.tensor([0, 0, 1]),
                         truncated=torch.zeros(B, dtype=torch.bool))
    batch.advantages = torch.tensor(advantage_per_row)[:, None] * MASK
    batch.extras[CONTEXT_LOGPROBS_KEY] = context * MASK
    return batch


def test_gate_edges_and_sign_asymmetry():
    # row 0: A > 0; row 1: A < 0; row 2: A = 0. CIG per token below.
    cig = torch.tensor([[0.1, 0.3, -0.5, 9.0], [-0.1, -0.3, 0.5, -9.0], [2.0, -2.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4, [0.0] * 4])
    w = asymmetric_gate(cig, adv, MASK, tau_pos=0.1, tau_neg=0.1, alpha_pos=2.0, alpha_neg=1.0,
                        strength=1.0, max_weight=10.0)
    # A > 0: only CIG above tau_pos counts (0.1 is the edge: unchanged), negative CIG never
    assert w[0].tolist() == pytest.approx([1.0, 1.0 + 2.0 * 0.2, 1.0, 1.0])  # padding: 1
    # A < 0: only CIG below -tau_neg counts, with its own alpha
    assert w[1].tolist() == pytest.approx([1.0, 1.0 + 1.0 * 0.2, 1.0, 1.0 + 8.9])
    assert w[2].tolist() == [1.0] * 4  # A = 0: nothing to modulate
    capped = asymmetric_gate(cig, adv, MASK, 0.1, 0.1, 2.0, 1.0, 1.0, max_weight=1.3)
    assert capped.max() == pytest.approx(1.3)
    half = asymmetric_gate(cig, adv, MASK, 0.1, 0.1, 2.0, 1.0, strength=0.5, max_weight=10.0)
    assert half[0, 1] == pytest.approx(1.0 + 0.5 * 2.0 * 0.2)


def test_every_cig_below_threshold_leaves_the_advantages_unchanged():
    old = torch.full_like(MASK, -2.0)
    batch = _batch([1.0, -1.0, 0.5], old, old + 0.05)  # |CIG| = 0.05 < tau = 0.1 everywhere
    w = CREDITS.get("amr_sd")(batch, None, progress=0.0)
    assert torch.equal(w, torch.ones_like(w))


def test_annealing_at_the_start_and_the_end():
    assert annealed_strength(0.0, "none") == annealed_strength(1.0, "none") == 1.0
    assert annealed_strength(0.0, "linear", 0.2) == 1.0
    assert annealed_strength(1.0, "linear", 0.2) == pytest.approx(0.2)
    assert annealed_strength(0.25, "linear") == pytest.approx(0.75)
    assert annealed_strength(0.5, "cosine", 0.0) == pytest.approx(0.5)
    assert annealed_strength(0.0, "cosine") == pytest.approx(1.0)
    assert annealed_strength(1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    old = torch.full_like(MASK, -2.0)
    batch = _batch([1.0, -1.0, 0.5], old, old + 1.0)
    first = CREDITS.get("amr_sd")(batch, None, progress=0.0)
    last = CREDITS.get("amr_sd")(batch, None, progress=1.0)  # linear to 0: no modulation left
    assert first[0, 0] == pytest.approx(1.9) and torch.equal(last, torch.ones_like(last))
    with pytest.raises(ValueError, match="anneal"):
        annealed_strength(0.5, "step")


def test_self_distill_modes_by_hand():
    old = torch.full_like(MASK, -2.0)
    context = old + torch.tensor([[0.4, -0.4, 0.0, 0.0]] * 3)
    batch = _batch([1.0, -1.0, 0.0], old, context)
    fn = CREDITS.get("self_distill")
    w = fn(batch, None, beta=0.5)
    assert w[0, :3].tolist() == pytest.approx([1.2, 0.8, 1.0])   # A > 0: follows delta
    assert w[1, :3].tolist() == pytest.approx([0.8, 1.2, 1.0])   # A < 0: more blame where delta < 0
    assert w[2, :2].tolist() == [1.0, 1.0]
    add = fn(batch, None, beta=0.5, mode="additive")
    assert torch.allclose(add, 0.5 * causal_information_gain(context * MASK, old * MASK, MASK))
    assert credit_is_additive(fn, {"mode": "additive"}) and not credit_is_additive(fn, {})


def test_options_are_checked():
    with pytest.raises(ConfigError, match="hint_source"):
        load_config(None, ["algo.credit=amr_sd", "algo.credit_options={hint_source: oracle}"])
    with pytest.raises(ConfigError, match="max_weight"):
        load_config(None, ["algo.credit=amr_sd", "algo.credit_options={max_weight: 0.5}"])
    with pytest.raises(ConfigError, match="mode"):
        load_config(None, ["algo.credit=self_distill", "algo.credit_options={mode: both}"])
    with pytest.raises(ConfigError, match="progress"):  # passed by the trainer, not configured
        load_config(None, ["algo.credit=amr_sd", "algo.credit_options={progress: 0.5}"])


def test_hint_texts():
    answers, ok = ["12", "7", None, "12"], [False, True, False, False]
    assert template_hint(answers, ok, 4) == "1 of 4 attempts were accepted. Accepted answers: 7. Rejected answers: 12."
    p = Problem("p", "What is 3 + 4?", "7")
    assert solution_hint(p) == "The final answer is 7."
    assert solution_hint(Problem("q", "x", "1", meta={"solution": "1 because x"})) == "1 because x"
    text = reflection_question(p, ["12", "8", None], [False, False, False], shown=2)
    assert "What is 3 + 4?" in text and "answer 12: rejected" in text and "answer 8: rejected" in text
    assert "(none)" not in text  # only `shown` answers
    assert "7" not in text  # never the reference answer


def test_hinted_logprobs_equal_a_plain_forward_of_the_concatenated_prompt():
    from pivotal.logprobs import logprobs_no_grad
    from pivotal.models import load_model
    model, tokenizer = load_model("tiny-random")
    torch.manual_seed(0)
    hinted = [[5, 6, 40, 41, 42, 7], [8, 43, 9]]
    responses = torch.tensor([[11, 12, 13], [14, 15, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    prompt_ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=(prompt_ids != 0).long(),
                         response_ids=responses, response_mask=mask, old_logprobs=torch.zeros(2, 3),
                         group_ids=torch.tensor([0, 1]), truncated=torch.zeros(2, dtype=torch.bool))
    batch.extras[CONTEXT_IDS_KEY] = hinted
    got = logprobs_no_grad(model, context_batch(batch, 0), 1.0, True, 1)
    for i, (h, n) in enumerate(zip(hinted, [3, 2])):
        ids = torch.tensor([h + responses[i, :n].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(h) - 1:-1].float()
        want = torch.log_softmax(logits, -1).gather(-1, responses[i, :n, None]).squeeze(-1)
        torch.testing.assert_close(got[i, :n], want, rtol=0, atol=1e-5)
        assert (got[i, n:] == 0).all()


def test_tiny_runs_log_hints_and_the_gate(tmp_path):
    for source in ("template", "reflection", "solution"):
        out = tmp_path / source
        cfg = tiny_config(out, **{"algo.credit": "amr_sd", "train.steps": 2,
                                  "algo.credit_options": f"{{hint_source: {source}, tau_pos: 0.0, "
                                                         f"tau_neg: 0.0}}"})
        from pivotal.trainer import Trainer
        Trainer(cfg, progress=False).train()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        hints = [json.loads(line) for line in (out / "hints.jsonl").read_text().splitlines()]
        assert [h["step"] for h in hints] == [1, 2] and all(h["hint"] for h in hints)
        assert all(h["source"] == source for h in hints)
        assert all("credit_modulated_frac" in r and "hint_tokens" in r for r in rows)
        assert all(math.isfinite(r["loss"]) for r in rows)
        assert rows[0]["credit_modulated_frac"] > 0      # ascii-fraction rewards: A != 0
        assert rows[-1]["credit_modulated_frac"] == 0.0  # linear annealing: no strength at the end
        if source == "reflection":
            assert rows[0]["time_hints"] > 0
    cfg = tiny_config(tmp_path / "add", **{"algo.credit": "self_distill", "train.steps": 1,
                                           "algo.credit_options": "{mode: additive}"})
    from pivotal.trainer import Trainer
    Trainer(cfg, progress=False).train()
    row = json.loads((tmp_path / "add" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["credit_add_mean"] != 0.0 and row["credit_mean"] == 1.0


def test_real_model_amr_sd_with_reflection_hints(tmp_path):
    """The built-in model, two steps of amr_sd with hints it writes itself."""
    from pivotal.trainer import Trainer
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "train.steps=2",
                             "train.eval_before_after=false", "train.tensorboard=false",
                             "rollout.prompts_per_step=2", "rollout.group_size=4",
                             "rollout.max_new_tokens=24", "algo.credit=amr_sd",
                             "algo.credit_options={hint_source: reflection, hint_tokens: 24, "
                             "anneal: none}"])
    Trainer(cfg, progress=False).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    hints = [json.loads(line) for line in (tmp_path / "hints.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert all(h["hint"].strip() and h["hint"] != "(no hint)" for h in hints)
    assert all(0.0 <= r["credit_modulated_frac"] <= 1.0 for r in rows)
    assert all(r["hint_tokens"] > 0 for r in rows)


def test_analyze_scores_cig_and_the_report_colours_by_it(tmp_path):
    """`pivotal analyze --cig-hint solution` adds each token's CIG under the RL model (equal to
    the hinted minus the plain log-prob); the report offers it as a colouring."""
    import pandas as pd

    import pivotal
    from pivotal.analysis.cig import cig_values, hinted_prompt_ids
    from pivotal.analysis.shift import Response
    from pivotal.models import load_model
    result = pivotal.analyze(rl="tiny-random", base="tiny-random", task="arithmetic", limit=3,
                             max_new_tokens=6, out=tmp_path / "an", quiet=True, cig_hint="solution")
    assert result["cig_hint"] == "solution" and math.isfinite(result["cig_mean"])
    tokens = pd.read_parquet(tmp_path / "an" / "tokens.parquet")
    assert "cig" in tokens.columns and tokens["cig"].abs().sum() > 0  # the hint moves the tiny model
    page = pivotal.report(tmp_path / "an", color_by="cig").read_text()
    assert 'value="cig" checked' in page and "--cc:" in page and 'class="by-cig"' in page
    plain = pivotal.analyze(rl="tiny-random", base="tiny-random", task="arithmetic", limit=2,
                            max_new_tokens=4, out=tmp_path / "plain", quiet=True)
    assert "cig_hint" not in plain
    with pytest.raises(ValueError, match="--cig-hint"):
        pivotal.report(tmp_path / "plain", color_by="cig")
    # the column by hand: one response, hinted minus plain log-probs of its tokens
    model, tok = load_model("tiny-random")
    p = Problem("p", "What is 2 + 2?", "4")
    r = Response("p", "x", tok("Question: What is 2 + 2?", add_special_tokens=False)["input_ids"],
                 [11, 12], "4", correct=True)
    hinted = hinted_prompt_ids([p], [r], "template", tok)
    assert "Hint: 1 of 1 attempts were accepted." in tok.decode(hinted[0])
    got = cig_values(model, [r], hinted, 0, 4)
    with torch.no_grad():
        def logp(prefix):
            ids = torch.tensor([prefix + [11, 12]])
            out = torch.log_softmax(model(input_ids=ids).logits[0, len(prefix) - 1:-1].float(), -1)
            return out.gather(-1, torch.tensor([[11], [12]])).squeeze(-1)
        want = logp(list(hinted[0])) - logp(r.prompt_ids)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)
