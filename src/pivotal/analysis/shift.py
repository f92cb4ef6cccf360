"""Per-token shift between a base model and its RL-trained successor (`pivotal analyze`).

For every token y_t of a set of responses, both models see the same prefix (prompt + y_<t) and each
gives a next-token distribution over the shared vocabulary. Per token we record

    js                       Jensen-Shannon divergence of the two distributions (natural log)
    kl_policy_base, kl_base_policy   KL(rl || base), KL(base || rl) (the RL model is the policy)
    entropy_base, entropy_rl entropies
    logp_base, logp_rl       log-probability of y_t under each model
    dlogp                    logp_rl - logp_base, the Δlog p of y_t
    rank_base, rank_rl       rank of y_t (1 = most likely: tokens with a strictly larger logit + 1)
    topk_mass_base           base's probability mass on its own top-k tokens
    topk_mass_rl_on_base_topk rl's mass on those same k tokens (mass moved off/onto base's head)
    top-k token ids and probabilities of each model

This is the measurement of "Sparse but Critical" (token-level distribution shift; JS in the paper;
details [reconstruction]) and of the Δlog p paper ("Δlog p: the direction of RLVR updates"), see
docs/methods.md ("Diagnostics"): how few positions shift, where in the response they sit, which tokens they
are, and how the shift relates to the base model's entropy and to probability mass moved away from
the base model's top-k.

Memory bound (the same as `pivotal.divergence.response_divergences`, whose pieces this module
reuses): responses are processed `micro_batch` rows at a time; for plain-head models each model's
final hidden states (rows, T, H) are computed once per micro-batch, and each LM head runs on at most
`chunk_tokens` response positions at a time, so at most two (chunk_tokens, V) logits tensors plus a
constant number of same-sized temporaries exist at once, never (B, T, V). Models whose logits are
not just lm_head(hidden) hold (micro_batch, T, V) logits, which the micro-batching bounds.

Conventions: temperature 1 (the models' own distributions); the chosen token's rank compares raw
float32 logits; everything runs under torch.no_grad.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..batch import RolloutBatch
from ..divergence import (
    _chunk_logits,
    _device,
    _valid_states,
    _vocab_size,
    divergences_from_logprobs,
)
from ..logprobs import trim_padding

TOP_K = 5
SHIFT_METRIC = "js"
SHIFT_THRESHOLD = 0.1
# JS lies in [0, ln 2 = 0.693]; |Δlog p| is unbounded but > 2 (a factor e^2 ~ 7.4) is already large
JS_THRESHOLDS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
ABS_DLOGP_THRESHOLDS = (0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0)
# base-entropy bin edges (nats); the last bin runs from the last edge to the largest entropy seen
ENTROPY_EDGES = (0.0, 0.05, 0.25, 0.5, 1.0, 2.0, 4.0)
POSITION_BINS = 10
TOP_TOKENS = 10          # entries per end of top_tokens_by_dlogp, and of top_tokens_by_count
MIN_TOKEN_COUNT = 3      # a token needs this many occurrences to enter top_tokens_by_dlogp

STAT_FLOATS = ("js", "kl_policy_base", "kl_base_policy", "entropy_base", "entropy_rl", "logp_base",
               "logp_rl", "dlogp", "topk_mass_base", "topk_mass_rl_on_base_topk")
STAT_INTS = ("rank_base", "rank_rl")
STAT_TOPK = ("top_base_ids", "top_rl_ids", "top_base_probs", "top_rl_probs")

# columns of tokens.parquet, in order (top_*_ids are extra to the shared spec: exact ids beside
# the decoded strings)
COLUMNS = ("response", "problem_id", "position", "length", "rel_position", "token_id", "token",
           "js", "kl_policy_base", "kl_base_policy", "entropy_base", "entropy_rl", "logp_base", "logp_rl",
           "dlogp", "rank_base", "rank_rl", "topk_mass_base", "topk_mass_rl_on_base_topk",
           "top_base_tokens", "top_rl_tokens", "top_base_probs", "top_rl_probs",
           "top_base_ids", "top_rl_ids")


# ----------------------------------------------------------------------------------------------
# The math: one chunk of positions
# ----------------------------------------------------------------------------------------------

def token_shift_stats(logits_base: Tensor, logits_rl: Tensor, token_ids: Tensor,
                      top_k: int = TOP_K) -> dict[str, Tensor]:
    """Every per-token statistic of tokens.parquet for N positions.

    logits_base, logits_rl: (N, V) next-token logits of each model at the same N prefixes (any float
    dtype; computed in float32); token_ids: (N,) the token that followed each prefix. Returns
      (N,) float32: js, kl_policy_base, kl_base_policy, entropy_base, entropy_rl, logp_base, logp_rl, dlogp,
                    topk_mass_base, topk_mass_rl_on_base_topk
      (N,) long:    rank_base, rank_rl (1 + number of tokens with a strictly larger logit)
      (N, k) long:  top_base_ids, top_rl_ids (descending probability), k = min(top_k, V)
      (N, k) float32: top_base_probs, top_rl_probs
    The divergences are `pivotal.divergence`'s (JS natural log in [0, ln 2]; 0 log 0 = 0).
    """
    if logits_base.shape != logits_rl.shape:
        raise ValueError(f"logits shapes differ: base {tuple(logits_base.shape)} vs rl "
                         f"{tuple(logits_rl.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    raw_b, raw_r = logits_base.float(), logits_rl.float()
    chosen = token_ids.to(raw_b.device).long().unsqueeze(-1)                    # (N, 1)
    # rank on the raw logits: log_softmax subtracts a per-row constant, which rounding could turn
    # into spurious ties or orderings
    rank_b = (raw_b > raw_b.gather(-1, chosen)).sum(dim=-1) + 1
    rank_r = (raw_r > raw_r.gather(-1, chosen)).sum(dim=-1) + 1
    logb = torch.log_softmax(raw_b, dim=-1)
    logr = torch.log_softmax(raw_r, dim=-1)
    del raw_b, raw_r
    div = divergences_from_logprobs(logr, logb)     # p = rl, q = base
    logp_b = logb.gather(-1, chosen).squeeze(-1)
    logp_r = logr.gather(-1, chosen).squeeze(-1)
    k = min(top_k, logb.shape[-1])
    top_b, top_r = logb.topk(k, dim=-1), logr.topk(k, dim=-1)
    top_b_probs = top_b.values.exp()
    return {
        "js": div["js"], "kl_policy_base": div["kl_policy_base"], "kl_base_policy": div["kl_base_policy"],
        "entropy_base": div["entropy_base"], "entropy_rl": div["entropy_policy"],
        "logp_base": logp_b, "logp_rl": logp_r, "dlogp": logp_r - logp_b,
        "rank_base": rank_b, "rank_rl": rank_r,
        "topk_mass_base": top_b_probs.sum(dim=-1),
        "topk_mass_rl_on_base_topk": logr.gather(-1, top_b.indices).exp().sum(dim=-1),
        "top_base_ids": top_b.indices, "top_rl_ids": top_r.indices,
        "top_base_probs": top_b_probs, "top_rl_probs": top_r.values.exp(),
    }


# ----------------------------------------------------------------------------------------------
# Responses and their batch
# ----------------------------------------------------------------------------------------------

@dataclass
class Response:
    """One response to analyse: token ids (the prompt's and the response's) and its metadata."""

    problem_id: str
    prompt: str
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    correct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # copied into responses.jsonl

    @property
    def length(self) -> int:
        return len(self.response_ids)


def build_batch(responses: list[Response], pad_id: int) -> RolloutBatch:
    """A RolloutBatch of the responses: prompts left-padded (B, P), responses right-padded (B, T).

    Rows with the same prompt ids share a group id, so the forward pass runs that prompt once.
    """
    if not responses:
        raise ValueError("no responses to analyse")
    empty_prompt = [i for i, r in enumerate(responses) if not r.prompt_ids]
    if empty_prompt:
        i = empty_prompt[0]
        raise ValueError(f"response {i} (problem {responses[i].problem_id})"
                         f" has an empty prompt: a prefix is needed to predict the first token")
    B = len(responses)
    P = max(len(r.prompt_ids) for r in responses)
    T = max(1, max(r.length for r in responses))
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    response_ids = torch.full((B, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((B, T))
    groups: dict[tuple[int, ...], int] = {}
    group_ids = torch.empty(B, dtype=torch.long)
    for i, r in enumerate(responses):
        n = len(r.prompt_ids)
        prompt_ids[i, P - n:] = torch.tensor(r.prompt_ids)
        prompt_mask[i, P - n:] = 1
        if r.length:
            response_ids[i, :r.length] = torch.tensor(r.response_ids)
            response_mask[i, :r.length] = 1.0
        group_ids[i] = groups.setdefault(tuple(r.prompt_ids), len(groups))
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, old_logprobs=torch.zeros(B, T),
                        group_ids=group_ids, truncated=torch.zeros(B, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# The driver: micro-batches of rows, chunks of positions
# ----------------------------------------------------------------------------------------------

def shift_stats(base, rl, batch: RolloutBatch, *, chunk_tokens: int = 256, micro_batch: int = 16,
                top_k: int = TOP_K, progress: bool = False) -> dict[str, np.ndarray]:
    """`token_shift_stats` for every response token of the batch, flattened row-major.

    base, rl: causal LMs sharing a tokenizer; batch: (B, P) prompts, (B, T) responses. Returns numpy
    arrays over the N = response_mask.sum() valid tokens, in row-major order (row 0's tokens by
    position, then row 1's, ...): (N,) per statistic and (N, k) for the top-k ids and probs.
    Memory: see the module docstring.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    v_base, v_rl = _vocab_size(base), _vocab_size(rl)
    if v_base != v_rl:
        raise ValueError(f"base and rl must share a vocabulary: the base LM head has {v_base} "
                         f"outputs, the rl LM head has {v_rl}")
    device = _device(rl)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in STAT_FLOATS + STAT_INTS + STAT_TOPK}
    starts = range(0, batch.size, micro_batch)
    with torch.no_grad():
        for start in tqdm(starts, desc="analyze", unit="micro-batch", disable=not progress,
                          leave=False):
            rows = batch.select(torch.arange(start, min(start + micro_batch, batch.size)))
            view = trim_padding(rows)
            mask = view.response_mask.bool()
            n = int(mask.sum())
            if n == 0:
                continue
            targets = view.response_ids[mask].to(device)                             # (n,)
            # run a repeated prompt once (samples of one problem); with distinct prompts one
            # plain forward is cheaper than a prefill plus a cached continuation
            share = int(torch.unique(view.group_ids).numel()) < view.size
            states_b, hidden_b = _valid_states(base, view, mask, share_prompt=share)  # (n, H|V)
            states_r, hidden_r = _valid_states(rl, view, mask, share_prompt=share)
            for lo in range(0, n, chunk_tokens):
                hi = min(lo + chunk_tokens, n)
                stats = token_shift_stats(
                    _chunk_logits(base, states_b, hidden_b, lo, hi, 1.0, device),
                    _chunk_logits(rl, states_r, hidden_r, lo, hi, 1.0, device),
                    targets[lo:hi], top_k)
                for key, value in stats.items():
                    parts[key].append(value.cpu().numpy())
            del states_b, states_r
    k = min(top_k, v_base)
    empty = {key: np.zeros((0, k) if key in STAT_TOPK else (0,),
                           dtype=np.int64 if key in STAT_INTS or key.endswith("_ids")
                           else np.float32)
             for key in parts}
    return {key: np.concatenate(chunks) if chunks else empty[key] for key, chunks in parts.items()}


class _TokenText:
    """tokenizer.decode of single token ids, memoised (a table repeats the same ids many times)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tokenizer.decode([token_id])
        return text


def token_table(base, rl, tokenizer, responses: list[Response], *, chunk_tokens: int = 256,
                micro_batch: int = 16, top_k: int = TOP_K, progress: bool = False):
    """The tokens.parquet table (pandas DataFrame, columns `COLUMNS`) of the responses.

    One row per response token; `response` is the index into `responses`. Responses without tokens
    contribute no row.
    """
    import pandas as pd

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = build_batch(responses, pad_id)
    stats = shift_stats(base, rl, batch, chunk_tokens=chunk_tokens, micro_batch=micro_batch,
                        top_k=top_k, progress=progress)
    lengths = np.array([r.length for r in responses], dtype=np.int64)
    index = np.repeat(np.arange(len(responses)), lengths)
    position = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else lengths
    length = lengths[index]
    token_ids = np.array([t for r in responses for t in r.response_ids], dtype=np.int64)
    if len(token_ids) != len(stats["js"]):  # the batch mask and the responses must agree
        raise RuntimeError(f"{len(stats['js'])} statistics for {len(token_ids)} response tokens")
    text = _TokenText(tokenizer)
    data: dict[str, Any] = {
        "response": index, "problem_id": [responses[i].problem_id for i in index],
        "position": position, "length": length,
        "rel_position": position / np.maximum(length - 1, 1),
        "token_id": token_ids, "token": [text(t) for t in token_ids.tolist()],
    }
    for key in STAT_FLOATS:
        data[key] = stats[key].astype(np.float64)
    for key in STAT_INTS:
        data[key] = stats[key].astype(np.int64)
    for side in ("base", "rl"):
        ids = stats[f"top_{side}_ids"].tolist()
        data[f"top_{side}_tokens"] = [[text(t) for t in row] for row in ids]
        data[f"top_{side}_probs"] = stats[f"top_{side}_probs"].astype(np.float64).tolist()
        data[f"top_{side}_ids"] = ids
    return pd.DataFrame({c: data[c] for c in COLUMNS})


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

def _fraction_at_least(values: np.ndarray, thresholds) -> list[dict]:
    n = max(len(values), 1)
    return [{"threshold": float(t), "fraction": float((values >= t).sum() / n)} for t in thresholds]


def _entropy_bins(entropy: np.ndarray, js: np.ndarray, shifted: np.ndarray) -> list[dict]:
    """Mean JS and shifted fraction per base-entropy bin [a, b) (the last bin closed); empty bins
    are left out."""
    top = float(entropy.max()) if len(entropy) else ENTROPY_EDGES[-1]
    edges = list(ENTROPY_EDGES) + [max(top, ENTROPY_EDGES[-1])]
    out = []
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = i == len(edges) - 2
        inside = (entropy >= lo) & ((entropy <= hi) if last else (entropy < hi))
        if i == 0:
            inside |= entropy < lo   # rounding can leave an entropy a hair below 0
        count = int(inside.sum())
        if count:
            out.append({"entropy_low": float(lo), "entropy_high": float(hi), "count": count,
                        "mean_js": float(js[inside].mean()),
                        "shifted_fraction": float(shifted[inside].mean())})
    return out


def _top_tokens(df, shifted: np.ndarray) -> tuple[list[dict], list[dict]]:
    """(tokens with the most negative then the most positive mean Δlog p among tokens seen at least
    MIN_TOKEN_COUNT times, tokens most often shifted), grouped by token id."""
    import pandas as pd

    frame = pd.DataFrame({"token_id": df["token_id"].to_numpy(), "token": df["token"].to_numpy(),
                          "dlogp": df["dlogp"].to_numpy(), "shifted": shifted})
    groups = frame.groupby("token_id", sort=True).agg(
        token=("token", "first"), n=("dlogp", "size"), mean_dlogp=("dlogp", "mean"),
        n_shifted=("shifted", "sum"))
    frequent = groups[groups["n"] >= MIN_TOKEN_COUNT].sort_values(
        ["mean_dlogp", "n"], ascending=[True, False], kind="stable")
    if len(frequent) > 2 * TOP_TOKENS:
        frequent = pd.concat([frequent.head(TOP_TOKENS), frequent.tail(TOP_TOKENS)])
    by_dlogp = [{"token": str(row["token"]), "token_id": int(tid), "count": int(row["n"]),
                 "mean_dlogp": float(row["mean_dlogp"])} for tid, row in frequent.iterrows()]
    often = groups[groups["n_shifted"] > 0].sort_values(["n_shifted", "n"], ascending=False,
                                                        kind="stable").head(TOP_TOKENS)
    by_count = [{"token": str(row["token"]), "token_id": int(tid), "count": int(row["n_shifted"]),
                 "occurrences": int(row["n"])} for tid, row in often.iterrows()]
    return by_dlogp, by_count


def summary(df, responses: list[Response], *, base: str, rl: str, source: str,
            shift_threshold: float = SHIFT_THRESHOLD, shift_metric: str = SHIFT_METRIC,
            js_thresholds=JS_THRESHOLDS, abs_dlogp_thresholds=ABS_DLOGP_THRESHOLDS,
            extra: dict | None = None) -> dict:
    """summary.json of a token table (see the shared spec): sparsity curves, where the shifted
    positions are, how shift relates to base entropy, which tokens shift, how much mass moved.

    A position is "shifted" when its `shift_metric` ("js" or "abs_dlogp") is >= shift_threshold;
    sparsity fractions count values >= each threshold (so the curve at the shift threshold equals
    shifted_fraction).
    """
    if shift_metric not in ("js", "abs_dlogp"):
        raise ValueError(f"shift_metric must be 'js' or 'abs_dlogp', got {shift_metric!r}")
    js = df["js"].to_numpy(dtype=np.float64)
    abs_dlogp = np.abs(df["dlogp"].to_numpy(dtype=np.float64))
    shifted = (js if shift_metric == "js" else abs_dlogp) >= shift_threshold
    rel = df["rel_position"].to_numpy(dtype=np.float64)
    edges = np.linspace(0.0, 1.0, POSITION_BINS + 1)
    by_dlogp, by_count = _top_tokens(df, shifted)
    known = [r.correct for r in responses if r.correct is not None]

    def mean(values) -> float | None:
        return float(np.mean(values)) if len(values) else None

    mass_b = df["topk_mass_base"].to_numpy(dtype=np.float64)
    mass_r = df["topk_mass_rl_on_base_topk"].to_numpy(dtype=np.float64)
    out = {
        "base": base, "rl": rl, "n_responses": len(responses), "n_tokens": len(df),
        "source": source,
        "accuracy": (sum(known) / len(known)) if known else None,
        "thresholds": {"js": [float(t) for t in js_thresholds],
                       "abs_dlogp": [float(t) for t in abs_dlogp_thresholds]},
        "sparsity": {"js": _fraction_at_least(js, js_thresholds),
                     "abs_dlogp": _fraction_at_least(abs_dlogp, abs_dlogp_thresholds)},
        "shift_definition": {"metric": shift_metric, "threshold": float(shift_threshold)},
        "shifted_fraction": float(shifted.mean()) if len(df) else 0.0,
        "position_histogram": {
            "bin_edges": [float(e) for e in edges],
            "all": [int(c) for c in np.histogram(rel, bins=edges)[0]],
            "shifted": [int(c) for c in np.histogram(rel[shifted], bins=edges)[0]]},
        "divergence_by_entropy": _entropy_bins(df["entropy_base"].to_numpy(dtype=np.float64), js,
                                               shifted),
        "top_tokens_by_dlogp": by_dlogp,
        "top_tokens_by_count": by_count,
        "mass_moved": {"mean_topk_mass_base": mean(mass_b),
                       "mean_topk_mass_rl_on_base_topk": mean(mass_r),
                       "shifted_mean_topk_mass_base": mean(mass_b[shifted]),
                       "shifted_mean_topk_mass_rl_on_base_topk": mean(mass_r[shifted])},
    }
    out.update(extra or {})
    return out


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def _atomic(path: Path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place, so a
    reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite(value):
    """JSON-safe copy: non-finite floats (an infinite KL, say) become null, not invalid 'NaN'."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def response_records(responses: list[Response]) -> list[dict]:
    """The responses.jsonl lines: response index, problem_id, prompt, text, correct, length."""
    return [{"response": i, "problem_id": r.problem_id, "prompt": r.prompt, "text": r.text,
             "correct": r.correct, "length": r.length, **r.extra}
            for i, r in enumerate(responses)]


def write_outputs(out_dir: str | Path, df, responses: list[Response],
                  summary_dict: dict) -> dict[str, Path]:
    """Write tokens.parquet, responses.jsonl and summary.json (last) into out_dir, each atomically.
    Returns {"tokens": path, "responses": path, "summary": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tokens": out / "tokens.parquet", "responses": out / "responses.jsonl",
             "summary": out / "summary.json"}
    _atomic(paths["tokens"], lambda tmp: df.to_parquet(tmp, index=False))

    def write_jsonl(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in response_records(responses))

    _atomic(paths["responses"], write_jsonl)

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump(_finite(summary_dict), f, indent=2, allow_nan=False)

    _atomic(paths["summary"], write_json)
    return paths

