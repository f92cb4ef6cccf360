"""`pivotal analyze` (pivotal.analysis.shift, pivotal.analysis.cli_analyze).

Per-token values are checked against hand arithmetic and against a brute-force reference that
runs each model's full forward pass and a float64 log_softmax over the whole (B, P+T, V) logits.
Models: the tiny random Llama (real SmolLM2 tokenizer) given a large random untied LM head, as
base, and the same with a perturbed head as rl, so that next-token distributions are peaked and
differ by a realistic amount (a random 2-layer model is otherwise almost uniform, which would make
every divergence tiny and every rank a coin toss).
"""

from __future__ import annotations

import argparse
import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pivotal.analysis import cli_analyze, shift
from pivotal.analysis.cli_analyze import (
    check_same_tokenizer,
    read_generation_records,
    responses_from_records,
)
from pivotal.analysis.shift import (
    Response,
    build_batch,
    shift_stats,
    summary,
    token_shift_stats,
    token_table,
)
from pivotal.tasks import build_task, format_prompt

LN2 = math.log(2.0)
FLOATS = ("js", "kl_policy_base", "kl_base_policy", "entropy_base", "entropy_rl", "logp_base", "logp_rl",
          "dlogp", "topk_mass_base", "topk_mass_rl_on_base_topk")


def _peaked(seed: int, noise: float = 0.0):
    """tiny-random (body seed 0) with an untied random head N(0, 0.4^2) (+ noise N(0, noise^2)
    drawn with `seed`): a tied head mostly predicts the input token again, in both models alike."""
    from pivotal.models import load_model

    model, tokenizer = load_model("tiny-random", seed=0)
    head = model.get_output_embeddings()
    weight = torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(100)) * 0.4
    if noise:
        weight += noise * torch.randn(head.weight.shape,
                                      generator=torch.Generator().manual_seed(seed))
    head.weight = torch.nn.Parameter(weight)
    return model, tokenizer


@pytest.fixture(scope="module")
def models():
    """(base, rl, tokenizer): rl is base with a perturbed head (JS of order 0.1-0.3)."""
    base, tokenizer = _peaked(0)
    rl, _ = _peaked(1, noise=0.15)
    return base, rl, tokenizer


@pytest.fixture(scope="module")
def responses(models):
    """Five responses of lengths 1..9: two share a prompt (a shared prefill), one is a single
    token; response tokens are random ids."""
    _, _, tok = models
    gen = torch.Generator().manual_seed(0)
    prompts = ["What is 2 + 3?", "Hello", "A much longer prompt with quite a few more words in it.",
               "What is 2 + 3?", "Count to three."]
    lengths = [5, 9, 1, 7, 3]
    out = []
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        ids = torch.randint(0, len(tok), (n,), generator=gen).tolist()
        out.append(Response(problem_id=f"p{i}", prompt=prompt,
                            prompt_ids=tok(prompt, add_special_tokens=False)["input_ids"],
                            response_ids=ids, text=tok.decode(ids), correct=i % 2 == 0))
    return out


@pytest.fixture(scope="module")
def table(models, responses):
    base, rl, tok = models
    return token_table(base, rl, tok, responses, chunk_tokens=4, micro_batch=2)


def brute_force(base, rl, responses, pad_id):
    """Per-token values from the full (B, P+T, V) logits of each model, float64, no chunking."""
    batch = build_batch(responses, pad_id)
    P = batch.prompt_ids.shape[1]
    attention = batch.attention_mask
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    rows = []
    with torch.no_grad():
        lb = base(input_ids=batch.input_ids, attention_mask=attention,
                  position_ids=positions).logits.double()
        lr = rl(input_ids=batch.input_ids, attention_mask=attention,
                position_ids=positions).logits.double()
    for i, r in enumerate(responses):
        for t, y in enumerate(r.response_ids):
            xb, xr = lb[i, P - 1 + t], lr[i, P - 1 + t]        # (V,) predicts response token t
            logb, logr = torch.log_softmax(xb, -1), torch.log_softmax(xr, -1)
            pb, pr = logb.exp(), logr.exp()
            m = 0.5 * (pb + pr)
            top_b, top_r = torch.topk(xb, 5), torch.topk(xr, 5)
            rows.append({
                "js": float(0.5 * (pr * (logr - m.log())).sum()
                            + 0.5 * (pb * (logb - m.log())).sum()),
                "kl_policy_base": float((pr * (logr - logb)).sum()),
                "kl_base_policy": float((pb * (logb - logr)).sum()),
                "entropy_base": float(-(pb * logb).sum()), "entropy_rl": float(-(pr * logr).sum()),
                "logp_base": float(logb[y]), "logp_rl": float(logr[y]),
                "dlogp": float(logr[y] - logb[y]),
                "topk_mass_base": float(pb[top_b.indices].sum()),
                "topk_mass_rl_on_base_topk": float(pr[top_b.indices].sum()),
                "rank_base": int((xb > xb[y]).sum()) + 1, "rank_rl": int((xr > xr[y]).sum()) + 1,
                "top_base_ids": top_b.indices.tolist(), "top_rl_ids": top_r.indices.tolist(),
                "top_base_probs": pb[top_b.indices].tolist(),
                "top_rl_probs": pr[top_r.indices].tolist(),
                # other tokens whose logit is within float32 noise of the chosen one's
                "near_base": int(((xb - xb[y]).abs() < 1e-4).sum()) - 1,
                "near_rl": int(((xr - xr[y]).abs() < 1e-4).sum()) - 1,
                "response": i, "position": t})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# token_shift_stats: hand values
# ----------------------------------------------------------------------------------------------
# base p = [0.5, 0.3, 0.15, 0.05], rl q = [0.1, 0.6, 0.2, 0.1], chosen token 1, k = 2
#   logp_base = ln 0.3 = -1.2039728, logp_rl = ln 0.6 = -0.5108256, dlogp = ln 2 = 0.6931472
#   rank_base = 2 (only token 0 is more likely), rank_rl = 1
#   base top-2 = tokens [0, 1]: mass 0.5 + 0.3 = 0.8; rl on them 0.1 + 0.6 = 0.7
#   rl top-2 = tokens [1, 2] with probs [0.6, 0.2]
def test_hand_values():
    p, q = [0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1]
    out = token_shift_stats(torch.tensor([p]).log(), torch.tensor([q]).log(), torch.tensor([1]),
                            top_k=2)
    m = [(a + b) / 2 for a, b in zip(p, q)]
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + \
        0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    expected = {
        "logp_base": math.log(0.3), "logp_rl": math.log(0.6), "dlogp": LN2,
        "topk_mass_base": 0.8, "topk_mass_rl_on_base_topk": 0.7, "js": js,
        "kl_policy_base": sum(b * math.log(b / a) for a, b in zip(p, q)),
        "kl_base_policy": sum(a * math.log(a / b) for a, b in zip(p, q)),
        "entropy_base": -sum(a * math.log(a) for a in p),
        "entropy_rl": -sum(b * math.log(b) for b in q)}
    for key, value in expected.items():
        assert out[key].shape == (1,)
        assert float(out[key][0]) == pytest.approx(value, abs=1e-6), key
    assert out["rank_base"].tolist() == [2] and out["rank_rl"].tolist() == [1]
    assert out["top_base_ids"].tolist() == [[0, 1]] and out["top_rl_ids"].tolist() == [[1, 2]]
    assert out["top_rl_probs"][0].tolist() == pytest.approx([0.6, 0.2], abs=1e-6)


def test_rank_counts_strictly_larger_logits():
    # logits [1, 1, 0]: tokens 0 and 1 tie for first (rank 1 each); token 2 has two above it
    logits = torch.tensor([[1.0, 1.0, 0.0]] * 3)
    out = token_shift_stats(logits, logits, torch.tensor([0, 1, 2]), top_k=2)
    assert out["rank_base"].tolist() == [1, 1, 3] and out["rank_rl"].tolist() == [1, 1, 3]


def test_ranks_and_topk_against_torch():
    gen = torch.Generator().manual_seed(1)
    lb, lr = torch.randn(30, 50, generator=gen), torch.randn(30, 50, generator=gen) * 3
    y = torch.randint(0, 50, (30,), generator=gen)
    out = token_shift_stats(lb, lr, y, top_k=5)
    for logits, side in ((lb, "base"), (lr, "rl")):
        order = torch.argsort(logits, dim=-1, descending=True)       # no ties: continuous values
        ranks = [order[i].tolist().index(int(y[i])) + 1 for i in range(30)]
        assert out[f"rank_{side}"].tolist() == ranks
        top = torch.topk(logits, 5, dim=-1)
        assert torch.equal(out[f"top_{side}_ids"], top.indices)
        assert torch.allclose(out[f"top_{side}_probs"],
                              torch.softmax(logits, -1).gather(-1, top.indices), atol=1e-6)
    probs_b, probs_r = torch.softmax(lb, -1), torch.softmax(lr, -1)
    top_b = torch.topk(lb, 5).indices
    assert torch.allclose(out["topk_mass_base"], probs_b.gather(-1, top_b).sum(-1), atol=1e-6)
    assert torch.allclose(out["topk_mass_rl_on_base_topk"], probs_r.gather(-1, top_b).sum(-1),
                          atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The driver against brute force; chunking; identical models
# ----------------------------------------------------------------------------------------------

def test_table_matches_brute_force(models, responses, table):
    base, rl, tok = models
    ref = brute_force(base, rl, responses, tok.pad_token_id)
    assert len(table) == len(ref) == sum(r.length for r in responses) == 25
    assert table["response"].tolist() == ref["response"].tolist()
    assert table["position"].tolist() == ref["position"].tolist()
    assert table["token_id"].tolist() == [t for r in responses for t in r.response_ids]
    assert table["length"].tolist() == [r.length for r in responses for _ in r.response_ids]
    assert np.allclose(table["rel_position"],
                       table["position"] / np.maximum(table["length"] - 1, 1))
    assert table["problem_id"].tolist() == [r.problem_id for r in responses
                                            for _ in r.response_ids]
    for key in FLOATS:
        assert np.allclose(table[key], ref[key], atol=2e-4, rtol=1e-4), key
    assert table["js"].max() > 0.05     # the two models really differ: a meaningful comparison
    assert (table["js"] <= LN2).all()
    for side in ("base", "rl"):
        # random tokens sit among ~49k logits: a rank may move only by the number of logits
        # within float32 noise of the chosen one
        diff = (table[f"rank_{side}"] - ref[f"rank_{side}"]).abs()
        assert (diff <= ref[f"near_{side}"]).all()
        assert (diff == 0).mean() > 0.5
        assert [row[:3] for row in table[f"top_{side}_ids"]] == \
            [row[:3] for row in ref[f"top_{side}_ids"]]
        assert table[f"top_{side}_tokens"].tolist() == \
            [[tok.decode([t]) for t in row] for row in table[f"top_{side}_ids"]]
        probs = np.stack(table[f"top_{side}_probs"])
        assert (np.diff(probs, axis=1) <= 0).all()          # descending
        assert np.allclose(probs, np.stack(ref[f"top_{side}_probs"]), atol=1e-5)
    assert np.allclose(np.stack(table["top_base_probs"]).sum(-1), table["topk_mass_base"])
    assert table["token"].tolist() == [tok.decode([t]) for t in table["token_id"]]


@pytest.mark.parametrize("chunk_tokens,micro_batch", [(1, 5), (7, 2), (10_000, 1), (10_000, 5)])
def test_chunking_gives_the_same_values(models, responses, table, chunk_tokens, micro_batch):
    base, rl, tok = models
    batch = build_batch(responses, tok.pad_token_id)
    stats = shift_stats(base, rl, batch, chunk_tokens=chunk_tokens, micro_batch=micro_batch)
    for key in FLOATS:
        assert np.allclose(stats[key], table[key], atol=1e-5, rtol=1e-5), key
    # a different chunking changes float32 rounding in the matmuls (~1e-7): a rank among ~49k
    # nearly tied logits may move by one or two; the top tokens (well separated) may not
    for key in ("rank_base", "rank_rl"):
        diff = np.abs(stats[key] - table[key].to_numpy())
        assert diff.max() <= 2 and (diff == 0).mean() > 0.8, key
    assert stats["top_base_ids"][:, :3].tolist() == [r[:3] for r in table["top_base_ids"]]
    assert stats["top_rl_ids"][:, :3].tolist() == [r[:3] for r in table["top_rl_ids"]]


def test_identical_models_have_no_shift(models, responses):
    base, _, tok = models
    df = token_table(base, base, tok, responses, chunk_tokens=7)
    assert (df["dlogp"] == 0).all() and (df["kl_policy_base"] == 0).all()
    assert df["js"].abs().max() < 1e-6
    assert (df["rank_base"] == df["rank_rl"]).all()
    assert (df["logp_base"] == df["logp_rl"]).all()
    assert np.allclose(df["topk_mass_base"], df["topk_mass_rl_on_base_topk"])
    s = summary(df, responses, base="b", rl="b", source="test")
    assert s["shifted_fraction"] == 0.0 and s["top_tokens_by_count"] == []


def test_vocab_size_mismatch_is_refused(models, responses):
    base, _, tok = models
    other = copy.deepcopy(base)
    other.resize_token_embeddings(len(tok) + 8)
    with pytest.raises(ValueError, match="share a vocabulary.*49152.*49160"):
        shift_stats(base, other, build_batch(responses, tok.pad_token_id))


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

def test_summary_matches_the_table(table, responses):
    js, dlogp = table["js"].to_numpy(), table["dlogp"].to_numpy()
    threshold = float(np.median(js))      # a non-trivial split, so the checks below can fail
    s = summary(table, responses, base="B", rl="R", source="test", shift_threshold=threshold)
    n = len(table)
    assert s["n_tokens"] == n == 25 and s["n_responses"] == 5
    assert s["accuracy"] == pytest.approx(3 / 5)   # responses 0, 2, 4 are marked correct
    for point in s["sparsity"]["js"]:
        assert point["fraction"] == pytest.approx(sum(v >= point["threshold"] for v in js) / n)
    for point in s["sparsity"]["abs_dlogp"]:
        assert point["fraction"] == pytest.approx(sum(abs(v) >= point["threshold"]
                                                      for v in dlogp) / n)
    shifted = js >= threshold
    assert 0 < shifted.sum() < n
    assert s["shift_definition"] == {"metric": "js", "threshold": threshold}
    assert s["shifted_fraction"] == pytest.approx(shifted.sum() / n)

    hist = s["position_histogram"]
    assert hist["bin_edges"] == pytest.approx([i / 10 for i in range(11)])
    rel = table["rel_position"].to_numpy()
    bins = [min(int(r * 10), 9) for r in rel]          # rel = 1.0 falls in the last bin
    assert hist["all"] == [bins.count(b) for b in range(10)]
    assert hist["shifted"] == [sum(1 for b, sh in zip(bins, shifted) if b == bb and sh)
                               for bb in range(10)]

    bins_e = s["divergence_by_entropy"]
    assert sum(b["count"] for b in bins_e) == n
    entropy = table["entropy_base"].to_numpy()
    for b in bins_e:
        last = b is bins_e[-1]
        inside = (entropy >= b["entropy_low"]) & ((entropy <= b["entropy_high"]) if last
                                                  else (entropy < b["entropy_high"]))
        assert b["count"] == inside.sum()
        assert b["mean_js"] == pytest.approx(js[inside].mean())
        assert b["shifted_fraction"] == pytest.approx(shifted[inside].mean())

    counts: dict[int, int] = {}
    for tid, sh in zip(table["token_id"], shifted):
        counts[tid] = counts.get(tid, 0) + int(sh)
    for entry in s["top_tokens_by_count"]:
        assert entry["count"] == counts[entry["token_id"]]
    assert sum(e["count"] for e in s["top_tokens_by_count"]) == min(
        shifted.sum(), sum(sorted(counts.values(), reverse=True)[:10]))
    mass = s["mass_moved"]
    assert mass["mean_topk_mass_base"] == pytest.approx(table["topk_mass_base"].mean())
    assert mass["mean_topk_mass_rl_on_base_topk"] == pytest.approx(
        table["topk_mass_rl_on_base_topk"].mean())
    assert mass["shifted_mean_topk_mass_base"] == pytest.approx(
        table["topk_mass_base"][shifted].mean())


def test_summary_top_tokens_by_dlogp_hand_table():
    # token 1 ("a") 3x mean -1, token 2 ("b") 4x mean +0.5, token 3 ("c") 2x (too rare to list)
    df = pd.DataFrame({"token_id": [1, 1, 1, 2, 2, 2, 2, 3, 3],
                       "token": ["a"] * 3 + ["b"] * 4 + ["c"] * 2,
                       "dlogp": [-0.5, -1.0, -1.5, 0.5, 0.4, 0.6, 0.5, 9.0, 9.0],
                       "js": [0.3, 0.0, 0.2, 0.0, 0.15, 0.0, 0.0, 0.5, 0.5],
                       "rel_position": np.linspace(0, 1, 9),
                       "entropy_base": [0.0, 0.1, 0.3, 0.6, 1.5, 3.0, 5.0, 6.0, 7.5],
                       "topk_mass_base": [1.0] * 9, "topk_mass_rl_on_base_topk": [0.5] * 9})
    s = summary(df, [], base="B", rl="R", source="hand")
    assert [(t["token"], t["count"]) for t in s["top_tokens_by_dlogp"]] == [("a", 3), ("b", 4)]
    assert s["top_tokens_by_dlogp"][0]["mean_dlogp"] == pytest.approx(-1.0)
    assert s["top_tokens_by_dlogp"][1]["mean_dlogp"] == pytest.approx(0.5)
    # shifted (js >= 0.1): a twice, b once, c twice; ties broken by occurrences (b 4 > ... )
    assert [(t["token"], t["count"]) for t in s["top_tokens_by_count"]] == \
        [("a", 2), ("c", 2), ("b", 1)]
    assert s["shifted_fraction"] == pytest.approx(5 / 9)
    # entropy bins [0,.05) [.05,.25) [.25,.5) [.5,1) [1,2) [2,4) [4, 7.5]: counts 1 1 1 1 1 1 3
    assert [b["count"] for b in s["divergence_by_entropy"]] == [1, 1, 1, 1, 1, 1, 3]
    assert s["divergence_by_entropy"][-1]["entropy_high"] == 7.5
    assert s["divergence_by_entropy"][-1]["mean_js"] == pytest.approx(1.0 / 3)
    assert s["accuracy"] is None


# ----------------------------------------------------------------------------------------------
# Sources, bad input, the command
# ----------------------------------------------------------------------------------------------

def _write_generations(path, tok, model="tiny-random", n=3):
    task = build_task("arithmetic")
    problems = task.eval_problems()[:n]
    with open(path, "w") as f:
        f.writelines(json.dumps({
                "problem_id": p.id, "question": p.question, "answer": p.answer,
                "prompt": format_prompt(p, tok), "kind": "greedy", "sample_index": 0,
                "response": f"The answer is \\boxed{{{p.answer if i != 1 else 'x'}}}.",
                "length": 9, "correct_strict": i != 1, "correct_lenient": i != 1,
                "model": model}) + "\n" for i, p in enumerate(problems))
    return problems


def _args(*argv):
    parser = argparse.ArgumentParser()
    cli_analyze.add_parser(parser.add_subparsers())
    return parser.parse_args(["analyze", *argv])


@pytest.fixture()
def patched_load(models, monkeypatch):
    """load_model -> the fixture's base for --base, its rl for anything else."""
    base, rl, tok = models
    import pivotal.models

    monkeypatch.setattr(pivotal.models, "load_model",
                        lambda spec, *a, **k: (base, tok) if spec == "tiny-random" else (rl, tok))


def test_generations_round_trip(models, tmp_path, patched_load):
    _, _, tok = models
    path = tmp_path / "generations.jsonl"
    problems = _write_generations(path, tok)
    records = read_generation_records(path, "tiny-random", "rl-ckpt")
    responses = responses_from_records(records, tok, path)
    assert [r.problem_id for r in responses] == [p.id for p in problems]
    for r, rec in zip(responses, records):
        assert r.prompt_ids == tok(rec["prompt"], add_special_tokens=False)["input_ids"]
        assert r.response_ids == tok(rec["response"], add_special_tokens=False)["input_ids"]
    assert [r.correct for r in responses] == [True, False, True]

    out = tmp_path / "out"
    assert cli_analyze.run(_args("--base", "tiny-random", "--rl", "rl-ckpt", "--generations",
                                 str(path), "--out", str(out), "--quiet")) == 0
    df = pd.read_parquet(out / "tokens.parquet")
    lines = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == [rec["response"] for rec in records]
    assert [x["correct"] for x in lines] == [True, False, True]
    for x in lines:
        ids = df[df["response"] == x["response"]].sort_values("position")["token_id"].tolist()
        assert ids == tok(x["text"], add_special_tokens=False)["input_ids"]
        assert x["length"] == len(ids)
    s = json.loads((out / "summary.json").read_text())
    assert s["source"] == f"generations {path}" and s["sampler"] == "tiny-random"
    assert s["n_tokens"] == len(df) and s["accuracy"] == pytest.approx(2 / 3)
    assert list(df.columns)[:len(shift.COLUMNS)] == list(shift.COLUMNS)


def test_cli_task_run_writes_three_files(tmp_path, patched_load, capsys):
    out = tmp_path / "an"
    rc = cli_analyze.run(_args("--base", "tiny-random", "--rl", "rl-ckpt", "--task", "arithmetic",
                               "--limit", "3", "--max-new-tokens", "5", "--chunk-tokens", "4",
                               "--shift-threshold", "0.05", "--out", str(out), "--quiet"))
    assert rc == 0
    df = pd.read_parquet(out / "tokens.parquet")
    lines = (out / "responses.jsonl").read_text().splitlines()
    s = json.loads((out / "summary.json").read_text())
    assert len(lines) == s["n_responses"] == 3
    assert s["n_tokens"] == len(df) == sum(json.loads(x)["length"] for x in lines)
    assert s["sampler"] == "rl" and s["shift_definition"]["threshold"] == 0.05
    assert s["shifted_fraction"] == pytest.approx((df["js"] >= 0.05).mean())
    assert not list(out.glob(".*"))  # no temporary file left behind
    printed = capsys.readouterr().out
    assert "shifted (js >= 0.05)" in printed and str(out / "summary.json") in printed


def test_tokenizer_mismatch_names_both_models(models, monkeypatch):
    _, _, tok = models
    other = copy.deepcopy(tok)
    other.add_tokens(["<analysis_extra_token>"])
    with pytest.raises(ValueError, match=r"'base-x' and the rl model 'rl-y'.*vocabulary sizes "
                                         r"differ: 49152 \(base\) vs 49153 \(rl\).*only in rl"):
        check_same_tokenizer(tok, other, "base-x", "rl-y")
    # same size, one token renamed (faked through get_vocab): the first differing id is named
    renamed = copy.deepcopy(tok)
    vocab = dict(tok.get_vocab())
    token_17 = next(t for t, i in vocab.items() if i == 17)
    vocab["<renamed>"] = vocab.pop(token_17)
    monkeypatch.setattr(renamed, "get_vocab", lambda: vocab)
    with pytest.raises(ValueError, match=rf"'b' and the rl model 'r'.*token id 17 is "
                                         rf"'{token_17}' for base but '<renamed>' for rl"):
        check_same_tokenizer(tok, renamed, "b", "r")
    assert check_same_tokenizer(tok, copy.deepcopy(tok), "b", "r") == \
        __import__("pivotal.models").models.tokenizer_fingerprint(tok)


def test_cli_refuses_different_tokenizers(models, monkeypatch, tmp_path):
    base, rl, tok = models
    other = copy.deepcopy(tok)
    other.add_tokens(["<analysis_extra_token>"])
    import pivotal.models
    monkeypatch.setattr(pivotal.models, "load_model",
                        lambda spec, *a, **k: (base, tok) if spec == "tiny-random" else (rl, other))
    with pytest.raises(ValueError, match="'tiny-random' and the rl model 'rl-ckpt'"):
        cli_analyze.run(_args("--base", "tiny-random", "--rl", "rl-ckpt", "--limit", "2",
                              "--out", str(tmp_path), "--quiet"))


def test_bad_generations_files(models, tmp_path):
    _, _, tok = models
    path = tmp_path / "gen.jsonl"
    _write_generations(path, tok, model="someone-else")
    with pytest.raises(ValueError, match=r"gen.jsonl, line 1: .*model 'someone-else'.*"
                                         r"--base 'tiny-random'.*--rl 'rl'.*--allow-other-model"):
        read_generation_records(path, "tiny-random", "rl")
    assert len(read_generation_records(path, "tiny-random", "rl", allow_other_model=True)) == 3
    assert len(read_generation_records(path, "a", "someone-else", limit=2)) == 2

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl' has no records"):
        read_generation_records(empty, "a", "b")

    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["response"]
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"missing.jsonl, line 2: the record has no 'response'"):
        read_generation_records(missing, "a", "someone-else")

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_generation_records(bad_json, "a", "someone-else")

    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "hi", "response": ""}) + "\n")
    records = read_generation_records(blank, "a", "b")
    with pytest.raises(ValueError, match="blank.jsonl' has no usable rows"):
        responses_from_records(records, tok, blank)

    with pytest.raises(FileNotFoundError, match="nope.jsonl' does not exist"):
        read_generation_records(tmp_path / "nope.jsonl", "a", "b")


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="--chunk-tokens must be >= 1"):
        cli_analyze.run(_args("--rl", "x", "--chunk-tokens", "0", "--out", str(tmp_path)))
    with pytest.raises(SystemExit):  # argparse: --generations and --task are exclusive
        _args("--rl", "x", "--generations", "g.jsonl", "--task", "arithmetic")
