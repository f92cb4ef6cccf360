"""CARE as a label selector: the two probes of `pivotal.algos.care`, scored and trained online.

`reward.labels=care`. Each step: the policy's last prompt- and response-token states
(`pivotal.logprobs.last_token_states`) and the groups' answers go through both probes; after
`warmup_steps` steps the `prob_gate` share of prompts whose vote stage 1 trusts most are gated out;
the `reward.label_budget` share with the highest expected corrective gap is queried. The queried
prompts, whose truth is now known, then train both probes (`train_steps` AdamW steps on them plus
`buffer_batch` examples replayed from a `buffer_size` history; stage 2's replay is stratified by
class; class-balanced cross-entropy; stage 1 adds a per-response correctness loss weighted
`aux_weight`). The defaults are the released CARE recipe (Lumina04/CARE
examples/unsupervised_rlvr/al-rule.sh); the 20-step warm-up is the released code's constant.

Unqueried prompts get the advantage weight of `pivotal.algos.care.soft_weights`
(`reward.unlabeled_weight=soft`, the default under care): clip(soft_adv * E[gap], 0, 1) on
the confident ones, 0 elsewhere, so nothing trains on a pseudo-label during the warm-up.

Differences from the released code, by design: a probe step is skipped when its batch has a
single example (BatchNorm cannot train on one; the released code would fail there), the replay
draws from a seeded generator kept in checkpoints (so a resumed run replays the same examples),
the probes live on the CPU, and with data parallelism every rank scores and trains the same
probes on every rank's groups (gathered), so the choice is one over the global batch.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import Tensor

from .algos.care import (
    ACTIVATIONS,
    GapProbe,
    VoteProbe,
    care_choice,
    class_balance,
    expected_gap,
    group_labels,
    soft_weights,
)
from .algos.labels import LABEL_SELECTORS
from .errors import ConfigError

# the per-group example fields the probes read (inputs) and learn (targets)
EXAMPLE_FIELDS = ("prompt", "features", "responses", "answered_other", "class_mask", "row_correct",
                  "vote_correct", "correct_count")


@LABEL_SELECTORS.register("care")
class CareSelector:
    """Stateful label selector: `choose(inputs, budget, step)` -> (queried group ids,
    {group id: advantage weight}, metrics). Options are keyword arguments (reward.label_options);
    group_size, max_len and seed come from the run."""

    needs_states = True

    def __init__(self, group_size: int, max_len: int, seed: int, *, prob_gate: float = 0.25,
                 warmup_steps: int = 20, soft_adv: float = 1.0, lr: float = 1e-4,
                 weight_decay: float = 0.0, train_steps: int = 3, grad_clip: float = 1.0,
                 aux_weight: float = 1.5, class_balance_power: float = 0.5,
                 class_balance_min: float = 0.25, class_balance_max: float = 4.0,
                 class_balanced: bool = True, buffer_size: int = 2048, buffer_batch: int = 16,
                 prompt_dim: int = 128, mid_dim: int = 256, resp_dim: int = 64,
                 resp_out: int = 512, activation: str = "relu"):
        where = "reward.label_options"
        if not 0.0 <= prob_gate <= 1.0:
            raise ConfigError(f"{where}.prob_gate must be in [0, 1], got {prob_gate}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{where}.activation must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {activation!r}")
        for name, value in (("warmup_steps", warmup_steps), ("soft_adv", soft_adv),
                            ("weight_decay", weight_decay), ("grad_clip", grad_clip),
                            ("aux_weight", aux_weight), ("buffer_size", buffer_size),
                            ("buffer_batch", buffer_batch)):
            if value < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {value}")
        for name, value in (("lr", lr), ("train_steps", train_steps), ("prompt_dim", prompt_dim),
                            ("mid_dim", mid_dim), ("resp_dim", resp_dim), ("resp_out", resp_out)):
            if value <= 0:
                raise ConfigError(f"{where}.{name} must be > 0, got {value}")
        if not 0 < class_balance_min <= class_balance_max:
            raise ConfigError(f"{where}: need 0 < class_balance_min <= class_balance_max, got "
                              f"{class_balance_min} and {class_balance_max}")
        self.group, self.max_len = group_size, max_len
        self.prob_gate, self.warmup_steps, self.soft_adv = prob_gate, warmup_steps, soft_adv
        self.lr, self.weight_decay, self.train_steps = lr, weight_decay, train_steps
        self.grad_clip, self.aux_weight = grad_clip, aux_weight
        self.balance = (class_balance_power, class_balance_min, class_balance_max) if class_balanced else None
        self.buffer: deque[dict] = deque(maxlen=buffer_size)
        self.buffer_batch = buffer_batch
        self.sizes = dict(prompt_dim=prompt_dim, mid_dim=mid_dim, resp_dim=resp_dim,
                          resp_out=resp_out, activation=activation)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.hidden: int | None = None  # the policy's width, known at the first step
        self.vote = self.gap = self.vote_opt = self.gap_opt = None

    # ------------------------------------------------------------------ the probes
    def _build(self, hidden: int) -> None:
        """Both probes and their optimizers, initialised from the run's seed."""
        with torch.random.fork_rng():  # leave the run's global stream where it was
            torch.manual_seed(self.seed)
            self.vote = VoteProbe(hidden, self.group, **self.sizes)
            self.gap = GapProbe(hidden, self.group, **self.sizes)
        self.vote_opt = torch.optim.AdamW(self.vote.parameters(), lr=self.lr,
                                          weight_decay=self.weight_decay)
        self.gap_opt = torch.optim.AdamW(self.gap.parameters(), lr=self.lr,
                                         weight_decay=self.weight_decay)
        self.hidden = hidden

    def examples(self, answers: list, group_ids: Tensor, lengths: Tensor, correct: Tensor,
                 prompt_states: Tensor, response_states: Tensor) -> tuple[list[int], list[dict]]:
        """(group ids in first-row order, one example per group). Rows (B,) of whole groups of
        `group_size`; prompt_states / response_states (B, H)."""
        order: dict[int, list[int]] = {}
        for i, g in enumerate(group_ids.tolist()):
            order.setdefault(int(g), []).append(i)
        gids, out = list(order), []
        for g in gids:
            rows = order[g]
            if len(rows) != self.group:
                raise ValueError(f"care needs whole groups of {self.group} responses; group {g} "
                                 f"has {len(rows)}")
            lab = group_labels([answers[i] for i in rows], lengths[rows].tolist(),
                               correct[rows].tolist(), self.max_len)
            out.append({"prompt": prompt_states[rows[0]], "features": lab.features,
                        "responses": response_states[rows], "answered_other": lab.answered_other,
                        "class_mask": lab.class_mask, "class_gap": lab.class_gap,
                        "row_correct": lab.row_correct.long(),
                        "vote_correct": torch.tensor(int(lab.vote_correct)),
                        "correct_count": torch.tensor(lab.correct_count),
                        "true_gap": lab.true_gap})
        return gids, out

    @torch.no_grad()
    def score(self, examples: list[dict]) -> tuple[Tensor, Tensor]:
        """(N,) P(the vote is right) and (N,) expected gap, both probes in eval mode."""
        b = _stack(examples, ("prompt", "features", "responses", "answered_other", "class_mask",
                              "class_gap"))
        self.vote.eval()
        self.gap.eval()
        vote_right = torch.softmax(self.vote(b["prompt"], b["features"], b["responses"]), -1)[:, 1]
        logits = self.gap(b["prompt"], b["features"], b["responses"], b["answered_other"])
        return vote_right, expected_gap(logits, b["class_mask"], b["class_gap"])

    def _replay(self, n: int, stratified: bool) -> list[dict]:
        """n examples drawn without replacement from the buffer; stratified: an equal share from
        each stage-2 class first (the rest from what is left, at random)."""
        size = len(self.buffer)
        n = min(n, size)
        if n <= 0:
            return []
        if not stratified or n >= size:
            picked = torch.randperm(size, generator=self.generator)[:n].tolist() if n < size else list(range(size))
            return [self.buffer[i] for i in picked]
        by_class: dict[int, list[int]] = {}
        for i, ex in enumerate(self.buffer):
            by_class.setdefault(int(ex["correct_count"]), []).append(i)
        share = max(1, n // len(by_class))
        picked, rest = [], []
        for c in sorted(by_class):
            rows = [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=self.generator)]
            take = min(share, len(rows), n - len(picked))
            picked += rows[:take]
            rest += rows[take:]
        rest = [rest[j] for j in torch.randperm(len(rest), generator=self.generator)]
        picked += rest[: n - len(picked)]
        return [self.buffer[i] for i in picked]

    def _class_weights(self, labels: Tensor, classes: int) -> Tensor | None:
        return None if self.balance is None else class_balance(labels, classes, *self.balance)

    def train(self, current: list[dict]) -> dict:
        """`train_steps` steps of both probes on the queried groups plus replay; then the
        queried groups join the buffer. Returns the mean losses."""
        losses = {"probe_vote_loss": [], "probe_gap_loss": []}
        for _ in range(self.train_steps if current else 0):  # as released: no query, no step
            batch = current + self._replay(self.buffer_batch, stratified=False)
            if len(batch) > 1:  # BatchNorm cannot train on one example
                b = _stack(batch, EXAMPLE_FIELDS)
                self.vote.train()
                logits, rows = self.vote.with_rows(b["prompt"], b["features"], b["responses"])
                loss = F.cross_entropy(logits, b["vote_correct"],
                                       weight=self._class_weights(b["vote_correct"], 2))
                loss = loss + self.aux_weight * F.cross_entropy(rows.reshape(-1, 2),
                                                                b["row_correct"].reshape(-1))
                self._step(self.vote, self.vote_opt, loss)
                losses["probe_vote_loss"].append(loss.item())
            batch = current + self._replay(self.buffer_batch, stratified=True)
            if len(batch) > 1:
                b = _stack(batch, EXAMPLE_FIELDS)
                self.gap.train()
                logits = self.gap(b["prompt"], b["features"], b["responses"], b["answered_other"])
                mask = b["class_mask"].clone()
                mask[torch.arange(len(batch)), b["correct_count"]] = True  # the truth is possible
                loss = F.cross_entropy(logits.masked_fill(~mask, -1e9), b["correct_count"],
                                       weight=self._class_weights(b["correct_count"], self.group + 1))
                self._step(self.gap, self.gap_opt, loss)
                losses["probe_gap_loss"].append(loss.item())
        self.buffer.extend({k: ex[k] for k in EXAMPLE_FIELDS} for ex in current)
        out = {k: sum(v) / len(v) for k, v in losses.items() if v}
        out["probe_buffer"] = len(self.buffer)
        return out

    def _step(self, module, optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
        optimizer.step()

    # ------------------------------------------------------------------ one step's choice
    def choose(self, answers: list, group_ids: Tensor, lengths: Tensor, correct: Tensor,
               prompt_states: Tensor, response_states: Tensor, budget: float,
               step: int) -> tuple[set[int], dict[int, float], dict]:
        """(queried group ids, {group id: advantage weight}, metrics) for one step's groups
        (rows as `examples`). The truth (`correct`) is read only for the queried groups' probe
        training and for diagnostics (vote precision of the gate, share of queried prompts among
        the true top gaps)."""
        if self.vote is None:
            self._build(prompt_states.shape[-1])
        gids, examples = self.examples(answers, group_ids, lengths, correct, prompt_states,
                                       response_states)
        vote_right, gap = self.score(examples)
        gate_open = step >= self.warmup_steps
        queried, confident = care_choice(vote_right, gap, budget, self.prob_gate, gate_open)
        weights = soft_weights(gap, confident, queried, self.soft_adv)
        truth_right = torch.tensor([bool(ex["vote_correct"]) for ex in examples])
        metrics = {"probe_gate_open": float(gate_open), "labels_gated": int(confident.sum()),
                   "probe_expected_gap": float(gap.mean()) if len(gap) else 0.0}
        if confident.any():
            metrics["probe_gate_precision"] = float(truth_right[confident].float().mean())
        if queried:  # diagnostic: how many queried prompts are among the true top gaps (ties in)
            true_gap = torch.tensor([ex["true_gap"] for ex in examples])
            cut = true_gap.sort(descending=True).values[len(queried) - 1]
            metrics["probe_gap_precision"] = float((true_gap[queried] >= cut).float().mean())
        unqueried = torch.ones(len(gids), dtype=torch.bool)
        unqueried[queried] = False
        if unqueried.any():
            metrics["unlabeled_weight_mean"] = float(weights[unqueried].mean())
        metrics.update(self.train([examples[i] for i in queried]))
        return ({gids[i] for i in queried}, {g: float(w) for g, w in zip(gids, weights)}, metrics)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Tensors and plain values only (a checkpoint is loaded with weights_only)."""
        if self.vote is None:
            return {}
        return {"hidden": self.hidden, "vote": self.vote.state_dict(), "gap": self.gap.state_dict(),
                "vote_opt": self.vote_opt.state_dict(), "gap_opt": self.gap_opt.state_dict(),
                "generator": self.generator.get_state(),
                "buffer": {k: torch.stack([ex[k] for ex in self.buffer]) for k in EXAMPLE_FIELDS}
                if self.buffer else {}}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._build(int(state["hidden"]))
        self.vote.load_state_dict(state["vote"])
        self.gap.load_state_dict(state["gap"])
        self.vote_opt.load_state_dict(state["vote_opt"])
        self.gap_opt.load_state_dict(state["gap_opt"])
        self.generator.set_state(state["generator"])
        buffer = state["buffer"]
        self.buffer.clear()
        for i in range(len(buffer["prompt"]) if buffer else 0):
            self.buffer.append({k: buffer[k][i] for k in EXAMPLE_FIELDS})


def _stack(examples: list[dict], keys) -> dict[str, Tensor]:
    return {k: torch.stack([ex[k] for ex in examples]) for k in keys}
