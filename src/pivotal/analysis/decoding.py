"""Two-model decoding: cross-sampling and test-time extrapolation between a base and an RL model.

Both methods step two causal LMs (roles **base** and **rl**, same tokenizer) in lockstep over the
same prefix, each with its own KV cache; at every step both give next-token logits and a per-step
rule picks the token that is appended for both. Batched over prompts exactly like
`pivotal.rollout.TransformersEngine` (left-padded prompts, one prefill per prompt whose cache is
copied `num_samples` times, finished rows dropped from the batch and from both caches), and the
engines below reuse that class's batch assembly, so they plug into `pivotal.evaluation.evaluate(...,
engine=engine)` and give cross-sampled accuracy directly.

Methods (see docs/methods.md, "Diagnostics"):
  * Cross-sampling ["Sparse but Critical", abstract + summaries; details reconstruction] and
    selective token replacement ["Δlog p: the direction of RLVR updates", Huang et al. 2026,
    arXiv:2603.22117, paper + code]: decode with one model, take the other model's token at chosen
    positions. Criteria: divergence (JS(base||rl) >= tau), dlogp (Δlog p of the decoder's proposed
    token <= tau), entropy (H(base) >= tau), random (probability tau).
  * Test-time extrapolation [Δlog p paper, released code]: the base model proposes each token
    (the RL model with propose="rl"); where the proposed token's Δlog p <= tau the token is redrawn
    from z = (1 + gamma) log p_rl - gamma log p_base restricted to the base model's top-n tokens,
    then temperature / top-p.

Conventions shared by every rule (chosen here; they matter at the margins):
  * The criteria (JS, Δlog p, entropy) are computed on the models' own distributions, softmax of
    the raw logits (temperature 1), whatever the sampling temperature: the criterion asks how the
    two *models* differ, not how the sampler is set. Δlog p = log p_rl(y) - log p_base(y).
  * Proposals and replacements are drawn like rollout.py: greedy (argmax) when
    params.temperature == 0, else sampled from softmax(logits / T) after top-k / top-p filtering.
    When sampling, both models' candidate tokens are drawn at every step (the random stream then
    does not depend on which positions the rule selects).
  * old_logprobs of the returned batch: the log-prob of the emitted token under the distribution
    it was drawn from (the emitting model, temperature-scaled, before top-k/top-p; for an
    extrapolated token the restricted extrapolated distribution), the convention of rollout.py.
  * A position "counts as replaced" (or extrapolated) when the rule fires there, even if the
    other model happens to propose the same token: that is the budget the papers report.
    `changed` separately counts positions whose token actually differs from the proposal.
  * Every emitted token is a position, EOS included.

Counters (`replaced`, `changed`, `positions`, `budget`) accumulate over generate calls, so one
`evaluate` run over several chunks reports its total; call `reset()` before a new measurement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..divergence import distribution_divergences
from ..logprobs import entropy_from_logits
from ..models import eos_token_ids
from ..rollout import SamplingParams, StepChoice, assemble_batch, encode_prompts, filter_logits, kv_decode
from ..rollout.base import draw_categorical, seeded_generator

CRITERIA = ("divergence", "dlogp", "entropy", "random")
DIRECTIONS = ("forward", "reverse")
WHERE = ("selected", "all")
PROPOSERS = ("base", "rl")   # which model proposes each token under test-time extrapolation
DEFAULT_TAUS: dict[str, list[float]] = {
    "divergence": [0.5, 0.3, 0.2, 0.1, 0.05],
    "dlogp": [-2.0, -1.0, -0.5, -0.3, -0.1],
    "entropy": [3.0, 2.0, 1.5, 1.0, 0.5],
}
# used for "random" only when no dlogp points exist to match budgets against
FALLBACK_RANDOM_TAUS = [0.02, 0.05, 0.1, 0.2]


# ----------------------------------------------------------------------------------------------
# Per-step math (pure functions)
# ----------------------------------------------------------------------------------------------

def choose_tokens(logits: Tensor, params: SamplingParams,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Pick one token per row the way rollout.py does: (N, V) logits -> (tokens (N,) long,
    log-probs (N,) float32 of those tokens under softmax(logits / T), before top-k/top-p).

    Greedy (argmax, no randomness) when params.temperature == 0, else a draw from the
    top-k/top-p-filtered softmax(logits / T) with `generator`. -inf logits are never chosen.
    """
    scaled = logits.float()
    if params.temperature > 0:
        scaled = scaled / params.temperature
        tokens = draw_categorical(_draw_probabilities(logits, params), generator)
    else:
        tokens = scaled.argmax(dim=-1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, logp


def js_divergence(logits_base: Tensor, logits_rl: Tensor) -> Tensor:
    """JS(base || rl) per row, natural log, in [0, ln 2]: (N, V), (N, V) -> (N,) float32.

    The symmetric divergence of "Sparse but Critical" (reuses pivotal.divergence)."""
    return distribution_divergences(logits_base, logits_rl)["js"]


def token_dlogp(logits_base: Tensor, logits_rl: Tensor, tokens: Tensor) -> Tensor:
    """Δlog p = log p_rl(y) - log p_base(y) of token y per row: (N, V), (N, V), (N,) -> (N,).

    Distributions are softmax of the raw logits (temperature 1) [Δlog p paper, paper + code]."""
    index = tokens.unsqueeze(-1)
    lp_rl = torch.log_softmax(logits_rl.float(), dim=-1).gather(-1, index)
    lp_base = torch.log_softmax(logits_base.float(), dim=-1).gather(-1, index)
    return (lp_rl - lp_base).squeeze(-1)


def base_entropy(logits_base: Tensor) -> Tensor:
    """H(base) per row in nats: (N, V) -> (N,) float32."""
    return entropy_from_logits(logits_base)


def extrapolated_logits(logits_base: Tensor, logits_rl: Tensor, gamma: float,
                        top_n: int = 50) -> Tensor:
    """z = (1 + gamma) log p_rl - gamma log p_base, -inf outside the base's top_n tokens.

    (N, V), (N, V) -> (N, V) float32 [Δlog p paper, test-time extrapolation, paper + code].
    log p are log-softmaxes of the raw logits, so z is a log-linear extrapolation of the RL policy
    along Δlog p: z = log p_rl + gamma * Δlog p. The candidate set is the base model's top_n
    tokens (ties at the n-th logit all kept); top_n <= 0 or >= V keeps the whole vocabulary.
    Temperature and top-p are applied to z by the caller (`choose_tokens`).
    """
    lp_rl = torch.log_softmax(logits_rl.float(), dim=-1)
    lp_base = torch.log_softmax(logits_base.float(), dim=-1)
    z = (1.0 + gamma) * lp_rl - gamma * lp_base
    if 0 < top_n < z.shape[-1]:
        kth = torch.topk(lp_base, top_n, dim=-1).values[..., -1:]
        z = z.masked_fill(lp_base < kth, float("-inf"))
    return z


def replacement_mask(criterion: str, tau: float, logits_base: Tensor, logits_rl: Tensor,
                     proposed: Tensor, uniform: Tensor | None = None,
                     decoder: str = "base") -> Tensor:
    """Which rows replace the decoder's proposed token: (N, V), (N, V), (N,) -> (N,) bool.

    divergence: JS(base||rl) >= tau     entropy: H(base) >= tau
    random:     uniform < tau (uniform: (N,) draws in [0, 1))
    dlogp:      log p_other(proposed) - log p_decoder(proposed) <= tau (tau < 0 in the paper):
                the other model strongly disfavours the decoder's token. With the base model
                decoding (forward) this is the paper's Δlog p(proposed) <= tau; with the rl model
                decoding (reverse) it is -Δlog p <= tau, the tokens RL promoted most (our
                symmetric extension: the rl model's own token rarely has Δlog p < 0).
    """
    if criterion == "divergence":
        return js_divergence(logits_base, logits_rl) >= tau
    if criterion == "dlogp":
        sign = 1.0 if decoder == "base" else -1.0
        return sign * token_dlogp(logits_base, logits_rl, proposed) <= tau
    if criterion == "entropy":
        return base_entropy(logits_base) >= tau
    if criterion == "random":
        if uniform is None:
            raise ValueError("criterion 'random' needs uniform draws")
        return uniform < tau
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------

class _TwoModelEngine:
    """A RolloutEngine over two models decoding in lockstep; subclasses supply `_rule`.

    Uses the shared KV-cache loop (`pivotal.rollout.kv_decode`) with both models and the shared
    batch assembly, so its batches have the fields of the transformers engine's. `self.model` is
    the decoding model.
    """

    def __init__(self, base, rl, tokenizer, decoder: str):
        self.base, self.rl, self.tokenizer = base, rl, tokenizer
        self._decoder_role = decoder
        self.model = base if decoder == "base" else rl
        eos = set(eos_token_ids(base, tokenizer)) | set(eos_token_ids(rl, tokenizer))
        self.eos_ids = torch.tensor(sorted(eos))
        dev_b, dev_r = next(base.parameters()).device, next(rl.parameters()).device
        if dev_b != dev_r:
            raise ValueError(f"base and rl models must be on the same device, got base on {dev_b} "
                             f"and rl on {dev_r}")
        self._last_fired: list[list[int]] = []
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset(self) -> None:
        """Zero the counters (they accumulate over generate calls)."""
        self.replaced = 0    # positions where the rule fired
        self.changed = 0     # positions whose token differs from the decoder's own proposal
        self.positions = 0   # emitted tokens, EOS included

    @property
    def budget(self) -> float:
        """Realised fraction of positions where the rule fired (0.0 before any position)."""
        return self.replaced / self.positions if self.positions else 0.0

    def sync_weights(self, model) -> None:
        """Take new RL weights (the trainer's policy plays the rl role)."""
        self.rl = model
        self.model = self.base if self._decoder_role == "base" else self.rl

    def _start_call(self, seed: int | None) -> None:
        """Per-generate-call state (e.g. seeded random generators)."""

    @torch.no_grad()
    def generate(self, prompts: list[str], num_samples: int, params: SamplingParams,
                 seed: int | None = None):
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, self.device)
        generator = seeded_generator(self.device, seed)
        was = (self.base.training, self.rl.training)
        self.base.eval()
        self.rl.eval()
        self._start_call(seed)
        try:
            tokens, logps, fired, changed = kv_decode(
                [self.base, self.rl], prompt_ids, prompt_mask, num_samples, params, self.eos_ids,
                lambda logits, p, g: self._rule(logits[0], logits[1], p, g), generator)
        finally:
            self.base.train(was[0])
            self.rl.train(was[1])
        self.positions += sum(len(t) for t in tokens)
        self.replaced += sum(sum(f) for f in fired)
        self.changed += sum(sum(c) for c in changed)
        # per row, the response positions where the rule fired (for later inspection)
        self._last_fired = [[i for i, f in enumerate(row) if f] for row in fired]
        batch, texts = assemble_batch(self.tokenizer, prompt_ids, prompt_mask, tokens, logps,
                                      num_samples, self.eos_ids.tolist())
        batch.extras["fired_positions"] = self._last_fired
        return batch, texts

    def _rule(self, logits_base, logits_rl, params, generator) -> StepChoice:
        raise NotImplementedError


class CrossSamplingEngine(_TwoModelEngine):
    """Decode with one model; at chosen positions emit the other model's token.

    ["Sparse but Critical" cross-sampling, details reconstruction; Δlog p paper selective token
    replacement, paper + code.] direction "forward": the decoder is base, replacements come from
    rl (recovers RL gains with few tokens); "reverse": decoder rl, replacements from base.

    criterion / tau (the position is replaced when):
      divergence  JS(base || rl) >= tau          (tau in [0, ln 2]; 0 replaces everywhere)
      dlogp       Δlog p of the decoder's proposed token <= tau   (tau < 0, e.g. -0.3)
      entropy     H(base) >= tau (nats)
      random      with probability tau, drawn from a generator seeded by (seed, generate's seed)

    Counters `replaced`, `changed`, `positions` and `budget` accumulate over generate calls;
    `reset()` zeros them. sync_weights(model) replaces the rl model.
    """

    def __init__(self, base, rl, tokenizer, direction: str = "forward",
                 criterion: str = "dlogp", tau: float = -0.3, seed: int = 0):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        if criterion == "random" and not 0.0 <= tau <= 1.0:
            raise ValueError(f"criterion 'random' takes a probability tau in [0, 1], got {tau}")
        self.direction, self.criterion, self.tau, self.seed = direction, criterion, float(tau), seed
        super().__init__(base, rl, tokenizer, "base" if direction == "forward" else "rl")
        self._uniform_gen: torch.Generator | None = None

    def _start_call(self, seed: int | None) -> None:
        if self.criterion == "random":
            self._uniform_gen = torch.Generator(device=self.device)
            # a distinct stream per (engine seed, call seed): evaluate passes seed + chunk offset
            self._uniform_gen.manual_seed(self.seed * 1_000_003 + (seed or 0))

    def _rule(self, logits_base, logits_rl, params, generator) -> StepChoice:
        own, other = ((logits_base, logits_rl) if self.direction == "forward"
                      else (logits_rl, logits_base))
        proposed, proposed_lp = choose_tokens(own, params, generator)
        alternative, alternative_lp = choose_tokens(other, params, generator)
        uniform = None
        if self.criterion == "random":
            uniform = torch.rand(proposed.shape, generator=self._uniform_gen,
                                 device=proposed.device)
        fire = replacement_mask(self.criterion, self.tau, logits_base, logits_rl, proposed,
                                uniform, decoder="base" if self.direction == "forward" else "rl")
        tokens = torch.where(fire, alternative, proposed)
        return StepChoice(tokens=tokens, logprobs=torch.where(fire, alternative_lp, proposed_lp),
                          fired=fire, changed=tokens != proposed)


class ExtrapolationEngine(_TwoModelEngine):
    """Test-time extrapolation [Δlog p paper, arXiv:2603.22117; released code:
    Hesse73/RLVR-Directions extrapolate/extrapolate.py, run as in scripts/run_extrapolate.sh].

    propose="base" (the released rule, default): the base model proposes each token (sampled with
    the call's temperature / top-p, or greedy), the criterion Δlog p = log p_rl - log p_base <= tau
    is tested on that token, and only where it fires is the token redrawn from
    z = (1 + gamma) log p_rl - gamma log p_base over the base model's top_n tokens, then
    temperature and top-p. propose="rl": the RL model proposes and its own token is tested (the
    rule pivotal had first; the RL model's token seldom has negative Δlog p, so it rarely fires).
    where="all" fires at every position. The released settings: gamma 0.05 at tau -0.3 (DAPO-32B),
    gamma 0.1 at tau -0.4 (ORZ-32B), top-p 0.7, top-50 candidates.

    `extrapolation_probabilities` gives the exact distribution this rule emits.

    Differences from the released script, by design: log p are exact log-softmaxes of the raw
    logits (temperature 1) of both models, where the script has each model's top-50 log-probs and
    pads a missing one with the smallest of them; the candidate set is the base's top_n (ties at
    the n-th logit kept), without the script's extra slot for a proposed token outside them; a
    fired position counts as extrapolated even when the redraw returns the proposal (`changed`
    counts real changes); old_logprobs at a redrawn position is the log-prob under softmax(z / T)
    over the candidates. Counters accumulate like CrossSamplingEngine's (`extrapolated` =
    `replaced`).
    """

    def __init__(self, base, rl, tokenizer, gamma: float = 0.05, tau: float = -0.3,
                 where: str = "selected", top_n: int = 50, propose: str = "base"):
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        if propose not in PROPOSERS:
            raise ValueError(f"propose must be one of {PROPOSERS}, got {propose!r}")
        self.gamma, self.tau, self.where, self.top_n = float(gamma), float(tau), where, int(top_n)
        self.propose = propose
        super().__init__(base, rl, tokenizer, propose)

    @property
    def extrapolated(self) -> int:
        return self.replaced

    def _rule(self, logits_base, logits_rl, params, generator) -> StepChoice:
        own = logits_base if self.propose == "base" else logits_rl
        proposed, proposed_lp = choose_tokens(own, params, generator)
        if self.where == "all":
            fire = torch.ones_like(proposed, dtype=torch.bool)
        else:
            fire = token_dlogp(logits_base, logits_rl, proposed) <= self.tau
        tokens, logprobs = proposed.clone(), proposed_lp.clone()
        rows = fire.nonzero().squeeze(-1)
        if rows.numel():  # the extrapolated distribution only where it is used
            z = extrapolated_logits(logits_base[rows], logits_rl[rows], self.gamma, self.top_n)
            tokens[rows], logprobs[rows] = choose_tokens(z, params, generator)
        return StepChoice(tokens=tokens, logprobs=logprobs, fired=fire,
                          changed=tokens != proposed)


def _draw_probabilities(logits: Tensor, params: SamplingParams) -> Tensor:
    """(N, V) the probability `choose_tokens` draws each token with (one-hot argmax when greedy):
    softmax of the top-k / top-p filtered logits / T."""
    if params.temperature > 0:
        scaled = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
        return torch.softmax(scaled, dim=-1)
    return torch.nn.functional.one_hot(logits.float().argmax(-1), logits.shape[-1]).float()


def extrapolation_probabilities(logits_base: Tensor, logits_rl: Tensor, params: SamplingParams,
                                gamma: float = 0.05, tau: float = -0.3, top_n: int = 50,
                                propose: str = "base", where: str = "selected"
                                ) -> tuple[Tensor, Tensor]:
    """The exact law of one `ExtrapolationEngine` step: (N, V), (N, V) -> (P(fire) (N,),
    P(emitted token) (N, V)), summing over every proposal y:
        P(fire) = sum_y p_prop(y) 1[fires at y]
        P(v)    = p_prop(v) 1[not fires at v] + P(fire) q(v),   q = draw law of z over the candidates
    (q does not depend on y: z is the same at every proposal of the row).
    """
    own = logits_base if propose == "base" else logits_rl
    p_prop = _draw_probabilities(own, params)
    N, V = p_prop.shape
    if where == "all":
        fires = torch.ones(N, V, dtype=torch.bool, device=own.device)
    else:  # Δlog p of every token at once, as token_dlogp computes it for one
        fires = (torch.log_softmax(logits_rl.float(), -1)
                 - torch.log_softmax(logits_base.float(), -1)) <= tau
    q = _draw_probabilities(extrapolated_logits(logits_base, logits_rl, gamma, top_n), params)
    p_fire = (p_prop * fires).sum(-1)
    return p_fire, p_prop * ~fires + p_fire[:, None] * q


# ----------------------------------------------------------------------------------------------
# The sweep behind cross_sampling.json
# ----------------------------------------------------------------------------------------------

def _ordered_criteria(taus: dict) -> list[str]:
    """Criteria in a fixed order, random last (its matched budgets need the dlogp points)."""
    unknown = [c for c in taus if c not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown criterion {unknown[0]!r} in taus; choose from "
                         f"{', '.join(CRITERIA)}")
    return [c for c in CRITERIA if c in taus]


def cross_sampling_sweep(base, rl, tokenizer, problems, taus: dict | None = None,
                         directions: Iterable[str] = DIRECTIONS, max_new_tokens: int = 48,
                         batch_size: int = 32, progress: bool = True, *,
                         base_name: str = "base", rl_name: str = "rl",
                         instruction: str | None = None, system_prompt: str | None = None,
                         seed: int = 0) -> dict:
    """Greedy accuracy against realised replacement budget, per direction x criterion x tau.

    taus: criterion -> list of thresholds; a criterion mapped to None (or an empty list) takes
    DEFAULT_TAUS, except "random", which then takes the realised budgets of the same direction's
    dlogp points as its probabilities (a matched budget; FALLBACK_RANDOM_TAUS when no dlogp
    point is swept). taus=None sweeps all four criteria with defaults.
    Accuracy is evaluate()'s greedy_lenient (accuracy_strict is stored beside it).
    Returns the cross_sampling.json dict (see /tmp/issue4_spec.md), with extra keys
    "accuracy_metric", "accuracy_base_strict", "accuracy_rl_strict", "max_new_tokens", and per
    point "accuracy_strict", "changed", "seconds".
    """
    from ..evaluation import evaluate
    from ..tasks.base import DEFAULT_INSTRUCTION

    if not problems:
        raise ValueError("cross-sampling needs at least one problem")
    taus = {c: None for c in CRITERIA} if taus is None else dict(taus)
    criteria = _ordered_criteria(taus)
    directions = list(directions)
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"unknown direction {d!r}; choose from {', '.join(DIRECTIONS)}")
    eval_kw = {"n_samples": 1, "temperature": 0.0, "max_new_tokens": max_new_tokens,
               "batch_size": batch_size, "instruction": instruction or DEFAULT_INSTRUCTION,
               "system_prompt": system_prompt, "seed": seed, "progress": False}

    def n_points(c):
        if taus[c]:
            return len(taus[c])
        if c == "random":
            return len(taus["dlogp"] or DEFAULT_TAUS["dlogp"]) if "dlogp" in taus \
                else len(FALLBACK_RANDOM_TAUS)
        return len(DEFAULT_TAUS[c])

    total = 2 + len(directions) * sum(n_points(c) for c in criteria)
    bar = tqdm(total=total, desc="cross-sampling", disable=not progress)
    say = bar.write if progress else (lambda s: None)

    accuracy = {}
    for role, model in (("base", base), ("rl", rl)):
        start = time.perf_counter()
        summary, _ = evaluate(model, tokenizer, problems, **eval_kw)
        accuracy[role] = summary
        bar.update(1)
        say(f"{role} alone: accuracy {summary['greedy_lenient']:.3f} "
            f"({time.perf_counter() - start:.1f}s)")

    points = []
    for direction in directions:
        dlogp_budgets: list[float] = []
        for criterion in criteria:
            values = taus[criterion]
            if not values:
                if criterion != "random":
                    values = DEFAULT_TAUS[criterion]
                elif "dlogp" in taus:
                    values = dlogp_budgets  # matched budgets (already computed: random is last)
                else:
                    values = FALLBACK_RANDOM_TAUS
            for tau in list(values):
                engine = CrossSamplingEngine(base, rl, tokenizer, direction, criterion,
                                             float(tau), seed=seed)
                start = time.perf_counter()
                summary, _ = evaluate(rl if direction == "reverse" else base, tokenizer,
                                      problems, engine=engine, **eval_kw)
                point = {"direction": direction, "criterion": criterion, "tau": float(tau),
                         "budget": engine.budget, "accuracy": summary["greedy_lenient"],
                         "accuracy_strict": summary["greedy_strict"],
                         "replaced": engine.replaced, "positions": engine.positions,
                         "changed": engine.changed,
                         "seconds": round(time.perf_counter() - start, 3)}
                points.append(point)
                if criterion == "dlogp":
                    dlogp_budgets.append(engine.budget)
                bar.update(1)
                say(f"{direction:7s} {criterion:10s} tau {tau:+.4g}: budget "
                    f"{point['budget']:.4f} ({engine.replaced}/{engine.positions}), accuracy "
                    f"{point['accuracy']:.3f} ({point['seconds']:.1f}s)")
    bar.close()
    return {"base": base_name, "rl": rl_name, "n_problems": len(problems),
            "accuracy_base": accuracy["base"]["greedy_lenient"],
            "accuracy_rl": accuracy["rl"]["greedy_lenient"],
            "accuracy_base_strict": accuracy["base"]["greedy_strict"],
            "accuracy_rl_strict": accuracy["rl"]["greedy_strict"],
            "accuracy_metric": "greedy_lenient", "max_new_tokens": max_new_tokens,
            "points": points}


__all__ = [
    "CRITERIA",
    "DEFAULT_TAUS",
    "DIRECTIONS",
    "CrossSamplingEngine",
    "ExtrapolationEngine",
    "StepChoice",
    "base_entropy",
    "choose_tokens",
    "cross_sampling_sweep",
    "extrapolated_logits",
    "js_divergence",
    "replacement_mask",
    "token_dlogp",
]
