"""OCC: multi-token-prediction (MTP) heads trained jointly with RL, with calibrated coefficients.

Paper: Wang et al. 2026, "Joint Training of Multi-Token Prediction in Reinforcement Learning via
Optimal Coefficient Calibration", https://arxiv.org/abs/2605.28184 (formula from the released code;
docs/algorithms.md, "OCC").

The heads. Head k (k = 1..K) reads the trunk's final hidden state at the position where the main
head predicts response token s, and predicts token s + k. Each head is one residual linear block,
zero at initialisation, followed by the policy's own output embedding: a fresh head is exactly the
main head's distribution at its position (the best guess a model without MTP training has), and it
adds only H^2 parameters (0.33M for SmolLM2-135M). The policy's state dict, its checkpoints'
model.safetensors and the rollout engines never see them; they live in the trainer state.

The coefficients. Trained with its own policy loss, a head's gradient also reaches the shared trunk;
the paper splits that effect on the RL objective into a first-order correlation with the main
policy's update and a second-order perturbation penalty, and shows that a fixed coefficient lets the
penalty win as the correlation decays. OCC scales head k's advantage by a coefficient that tracks
the optimum online from log-probabilities alone (no grad), with s = 0.1 and K heads:

    c_k = (s / K) * mean_t[ (mlp_k - olp)(lp - olp) / ((mlp_k - olp)^2 + 1e-8) ]
    loss = policy_loss(lp, olp, A) + sum_k policy_loss(mlp_k, olp, A * c_k)

where mlp_k is head k's log-prob of the response token, lp the main head's and olp the old policy's,
all of the same token. The sum runs over the tokens head k can score (response mask and at least k
earlier response tokens). The mean's denominator (`algo.occ_normaliser`):
  "padded" (default, the released code: MarkXCloud/RL-MTP verl/workers/actor/megatron_actor.py
           takes an unmasked `.mean()` of the padded (B, T) response tensor, where verl pads every
           response to max_response_length): rows x rollout.max_new_tokens, so c_k shrinks with
           padding, c_padded = c_valid x N_valid / (B T);
  "valid"  the number of tokens head k scores, a mean that does not depend on padding.
The released code supports one MTP layer; K > 1 heads are our extension. Both sums run over the
whole mini-batch: `OCCHeads.minibatch_statistics` computes them in one no-grad pass before the
micro-batches, so c_k does not depend on optim.micro_batch_size (the released code takes the mean
per micro-batch); that pass costs one forward of the mini-batch. Right after a rollout lp == olp exactly, so c_k = 0 on
the first mini-batch and the pass is skipped: the heads contribute once the policy has moved within
the rollout (several mini-batches per rollout, as in `configs/occ.yaml`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pivotal.algos.losses import LOSSES
from pivotal.auxiliary.base import AuxiliaryLoss, register_auxiliary
from pivotal.batch import RolloutBatch
from pivotal.errors import ConfigError, ModelLoadError
from pivotal.logprobs import has_plain_head, logprobs_and_entropy, logprobs_from_states, response_hidden_states

OCC_EPS = 1e-8


class MTPBlock(nn.Module):
    """h -> h + W h with W zero-initialised: the identity at the start."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.proj(hidden)


class MTPHeads(nn.Module):
    """K MTP blocks; `heads[k - 1]` serves the token k positions past the main head's target."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be at least 1, got {num_heads}")
        self.heads = nn.ModuleList(MTPBlock(hidden_size) for _ in range(num_heads))

    def __len__(self) -> int:
        return len(self.heads)


def mtp_logprobs(heads: MTPHeads, output_embeddings: nn.Module, states: Tensor,
                 response_ids: Tensor, response_mask: Tensor,
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Each head's log-prob of the response tokens it can reach.

    states (B, T, H): the trunk's hidden state at the position predicting each response token
    (`pivotal.logprobs.response_hidden_states`); response_ids, response_mask (B, T).
    Returns head_logprobs (K, B, T) and head_mask (K, B, T): head k scores token t >= k from the
    state at t - k; other entries are 0. The LM head runs only on scored tokens.
    """
    B, T = response_ids.shape
    rows, masks = [], torch.zeros(len(heads), B, T, dtype=torch.bool, device=states.device)
    for k, head in enumerate(heads.heads, start=1):
        row = states.new_zeros(B, T, dtype=torch.float32)
        target_mask = response_mask[:, k:].bool()  # (B, T-k); empty when k >= T
        if target_mask.any():
            source = states[:, : T - k][target_mask]  # (N, H): the states k tokens before the targets
            logits = output_embeddings(head(source))
            if temperature and temperature != 1.0:
                logits = logits / temperature
            flat, _ = logprobs_and_entropy(logits, response_ids[:, k:][target_mask], with_entropy=False)
            row = torch.cat([row[:, :k], row[:, k:].masked_scatter(target_mask, flat)], dim=1)
            masks[k - 1, :, k:] = target_mask
        rows.append(row)
    return torch.stack(rows), masks


def occ_sums(head_logprobs: Tensor, logprobs: Tensor, old_logprobs: Tensor,
             head_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Numerators and token counts of the K means in c_k (no gradient): (K,), (K,).

    head_logprobs (K, B, T); logprobs, old_logprobs (B, T); head_mask (K, B, T). Sums over row
    subsets add up, so a mini-batch's coefficients can be assembled from its micro-batches.
    """
    if head_logprobs.dim() != 3:
        raise ValueError(f"head_logprobs must be (K, B, T), got shape {tuple(head_logprobs.shape)}")
    with torch.no_grad():
        head_gap = head_logprobs.detach() - old_logprobs.detach()  # (K, B, T)
        main_gap = (logprobs.detach() - old_logprobs.detach()).unsqueeze(0)  # (1, B, T)
        per_token = head_gap * main_gap / (head_gap.square() + OCC_EPS)
        mask = head_mask.to(per_token.dtype)
        return (per_token * mask).flatten(1).sum(dim=1), mask.flatten(1).sum(dim=1)


def occ_coefficients_from_sums(sums: Tensor, counts: Tensor, scale: float = 0.1) -> Tensor:
    """c_k = (s / K) * sums_k / counts_k; a zero count gives 0. (K,), (K,) -> (K,). `counts` are the
    mean's denominators: tokens head k scores ("valid") or rows x T ("padded")."""
    means = sums / counts.clamp(min=1)
    return (scale / sums.shape[0]) * torch.where(counts > 0, means, torch.zeros_like(means))


def occ_coefficients(head_logprobs: Tensor, logprobs: Tensor, old_logprobs: Tensor,
                     head_mask: Tensor, scale: float = 0.1) -> Tensor:
    """The K OCC coefficients c_k of one batch (no gradient).

    head_logprobs (K, B, T): mlp_k, head k's log-prob of each response token; logprobs (B, T): lp,
    the main head's; old_logprobs (B, T): olp; head_mask (K, B, T): 1 where head k scores the
    token. Returns (K,).
    """
    return occ_coefficients_from_sums(*occ_sums(head_logprobs, logprobs, old_logprobs, head_mask),
                                      scale)


class OCCHeads(AuxiliaryLoss):
    """The MTP heads and their OCC-weighted policy losses (`algo.mtp_heads`, `algo.occ_scale`)."""

    checkpoint_key = "mtp_heads"
    needs_hidden_states = True

    def __init__(self, hidden_size: int, num_heads: int, scale: float, loss: str,
                 loss_options: dict, temperature: float, share_prompt: bool,
                 normaliser: str = "padded", padded_length: int = 0, pack: bool = False):
        super().__init__()
        self.heads = MTPHeads(hidden_size, num_heads)
        self.scale, self.loss, self.loss_options = scale, LOSSES.get(loss), dict(loss_options)
        self.temperature, self.share_prompt, self.pack = temperature, share_prompt, pack
        if normaliser == "padded" and padded_length < 1:
            raise ConfigError("OCC's padded normaliser needs the padded response length (> 0)")
        self.normaliser, self.padded_length = normaliser, padded_length

    def __len__(self) -> int:
        return len(self.heads)

    def checkpoint_state(self) -> dict[str, Tensor]:  # the heads' own keys, as before the merge
        return {k: v.detach().cpu() for k, v in self.heads.state_dict().items()}

    def load_checkpoint_state(self, state, checkpoint) -> None:
        if state is None:
            raise ModelLoadError(f"checkpoint {checkpoint} has no MTP heads, but algo.mtp_heads="
                                 f"{len(self.heads)}")
        self.heads.load_state_dict(state)

    def _head_logprobs(self, model, states: Tensor, micro: RolloutBatch) -> tuple[Tensor, Tensor]:
        return mtp_logprobs(self.heads, model.get_output_embeddings(), states, micro.response_ids,
                            micro.response_mask, self.temperature)

    @torch.no_grad()
    def minibatch_statistics(self, run, micro_batches: list[RolloutBatch], n_real: int,
                             on_policy: bool) -> dict[str, Tensor]:
        """The sums and counts of c_k over the first `n_real` micro-batches; none on policy (then
        c_k = 0). One no-grad forward per entry of `micro_batches`, inside `run`."""
        if on_policy:
            return {}
        sums = counts = None
        for i, micro in enumerate(micro_batches):
            s, n = run(lambda policy, m=micro: self._micro_sums(policy, m))
            if i >= n_real:  # a padding forward: nothing to count (zeros keep the shapes)
                s, n = torch.zeros_like(s), torch.zeros_like(n)
            sums, counts = (s, n) if sums is None else (sums + s, counts + n)
        return {"occ_numerator_sum": sums, "occ_tokens_sum": counts}

    def _micro_sums(self, model, micro: RolloutBatch) -> tuple[Tensor, Tensor]:
        states = response_hidden_states(model, micro, self.share_prompt, self.pack)
        logp, _ = logprobs_from_states(model, states, micro, self.temperature)
        head_lp, head_mask = self._head_logprobs(model, states, micro)
        s, n = occ_sums(head_lp, logp, micro.old_logprobs, head_mask)
        if self.normaliser == "padded":  # every row padded to the rollout's length
            n = torch.full_like(n, float(micro.size * self.padded_length))
        return s, n

    def term(self, model, states, micro, logprobs, old_logprobs, stats):
        head_lp, head_mask = self._head_logprobs(model, states, micro)
        if "occ_numerator_sum" in stats:
            coefs = occ_coefficients_from_sums(stats["occ_numerator_sum"], stats["occ_tokens_sum"],
                                               self.scale)
        else:  # on policy: lp == olp, so every c_k is exactly 0
            coefs = torch.zeros(len(self.heads), dtype=logprobs.dtype, device=logprobs.device)

        def loss(advantages: Tensor) -> tuple[Tensor, dict[str, float]]:
            total, metrics = torch.zeros_like(logprobs), {}
            for k in range(len(self.heads)):
                mask = head_mask[k].to(logprobs.dtype)
                out = self.loss(head_lp[k], old_logprobs, advantages * coefs[k], mask,
                                **self.loss_options)
                total = total + out.per_token_loss * mask
                n = mask.sum().clamp(min=1)
                metrics[f"occ_coef_{k + 1}"] = float(coefs[k])
                metrics[f"mtp_logprob_gap_{k + 1}"] = float(((head_lp[k] - old_logprobs).detach()
                                                             * mask).sum() / n)
            return total, metrics

        return loss


@register_auxiliary("occ")
def build_occ(cfg, model) -> OCCHeads | None:
    """OCC's heads when algo.mtp_heads > 0, else None."""
    if not cfg.algo.mtp_heads:
        return None
    if not has_plain_head(model):
        raise ConfigError(f"algo.mtp_heads needs a model whose LM head is a linear map of its "
                          f"hidden states; '{cfg.model.name}' is a {model.config.model_type} model")
    return OCCHeads(model.config.hidden_size, cfg.algo.mtp_heads, cfg.algo.occ_scale,
                    cfg.algo.loss, cfg.algo.loss_options, cfg.rollout.temperature,
                    cfg.optim.share_prompt, cfg.algo.occ_normaliser, cfg.rollout.max_new_tokens,
                    cfg.optim.pack_responses)
