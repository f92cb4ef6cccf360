"""Packed responses: a group's responses side by side after one copy of their shared prompt.

The padded layout (`pivotal.logprobs.response_states`) gives every response a row of its own:
left-padded prompt, response, right padding to the longest response. With G responses per prompt
of varied lengths, a third of the positions can be padding, and with `share_prompt` each distinct
prompt runs again in every micro-batch that holds one of its rows. Packed, a row holds

    [prompt_g | r_1[:-1] | r_2[:-1] | ... | r_G[:-1] | padding to the longest packed row]

and a block mask lets each response's tokens see their group's prompt and their own earlier
tokens, nothing else; position ids restart after the prompt for every response, so each token sees
exactly the keys, values and positions it has in the padded layout, and its state equals the
padded layout's to float rounding (the matmuls have other shapes). A response's last token
predicts nothing the loss reads, so it is left out; its first token is predicted by the prompt's
last state, which the group's rows share (autograd sums their gradients through the index).

The mask is dense (sdpa and eager attention take a 4D mask as it is), so attention grows with the
square of a packed row's length. The attention kernels that skip masked blocks (flash-attention's
variable-length form) cannot express a shared prefix, so models loaded with those keep the padded
layout (`usable_for`). The update orders a mini-batch's rows by group (`pivotal.update`), so a
micro-batch holds whole groups and each prompt runs once per mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import RolloutBatch

# attention implementations that read a 4D mask as given (transformers' masking_utils returns a
# 4D mask untouched); sdpa takes it as bool, eager adds it (0 / dtype min)
_MASKED_ATTENTION = {"sdpa", "eager"}


@dataclass
class PackedLayout:
    input_ids: torch.Tensor     # (R, L) long
    position_ids: torch.Tensor  # (R, L) long
    allowed: torch.Tensor       # (R, 1, L, L) bool, query i may read key j
    source: torch.Tensor        # (B, T) long: flat index into the (R * L) packed states of the
    #                             state predicting response token t of row b; R * L (one zero
    #                             state appended by `gather_states`) past the row's length

    def attention_mask(self, model, dtype: torch.dtype) -> torch.Tensor:
        """The 4D mask in the form `model`'s attention implementation reads."""
        if _attention_implementation(model) == "eager":
            blocked = torch.finfo(dtype).min
            return torch.zeros(self.allowed.shape, dtype=dtype,
                               device=self.allowed.device).masked_fill(~self.allowed, blocked)
        return self.allowed


def _attention_implementation(model) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def usable_for(model, layout: PackedLayout) -> bool:
    """Whether `model` reads `layout` exactly: an attention implementation that takes a 4D mask,
    and no sliding window shorter than the positions used (a 4D mask given as-is stands in for
    the window's own mask, so the window must not cut anything)."""
    if _attention_implementation(model) not in _MASKED_ATTENTION:
        return False
    window = getattr(model.config, "sliding_window", None)
    if window is None or getattr(model.config, "use_sliding_window", True) is False:
        return True
    return int(layout.position_ids.max()) + 1 <= window


def packing_saves_work(model, batch: RolloutBatch, layout: PackedLayout) -> bool:
    """Whether the packed rows cost fewer forward FLOPs than the shared-prompt padded layout.

    Per layer, a position costs about 2 (4 H^2 + 3 H I) in the projections and the MLP, and a
    query-key pair 4 H in attention; the dense packed mask pays for every pair of its rows, so
    with long responses and a narrow model its attention can outgrow the padding it saves.
    Padded (shared prompt): each group's prompt attends to itself, each response row's T queries
    to P + T keys."""
    h = model.config.hidden_size
    per_position = 2 * (4 * h * h + 3 * h * getattr(model.config, "intermediate_size", 4 * h))
    per_pair = 4 * h
    rows, width = layout.input_ids.shape
    packed = rows * width * per_position + rows * width * width * per_pair
    P, T = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    groups = len(torch.unique(batch.group_ids))
    padded = ((groups * P + batch.size * T) * per_position
              + (groups * P * P + batch.size * T * (P + T)) * per_pair)
    return packed <= padded


def pack_responses(batch: RolloutBatch) -> PackedLayout:
    """The packed layout of `batch`: one row per group (rows with equal `group_ids` share their
    prompt), groups in order of their first row. One group per row measured fastest on the
    built-in model (benchmarks/train_profile.py; docs/results.md): several groups per row add
    attention over blocked pairs, fewer rows per micro-batch make smaller matmuls."""
    device = batch.response_ids.device
    prompt_ids, prompt_mask = batch.prompt_ids.cpu(), batch.prompt_mask.cpu().bool()
    response_ids, lengths = batch.response_ids.cpu(), batch.response_mask.cpu().sum(1).long().tolist()
    inputs = [max(n - 1, 0) for n in lengths]
    groups: dict[int, list[int]] = {}
    for row, gid in enumerate(batch.group_ids.tolist()):
        groups.setdefault(gid, []).append(row)

    width = max(int(prompt_mask[m[0]].sum()) + sum(inputs[b] for b in m) for m in groups.values())
    n_rows, T = len(groups), batch.response_ids.shape[1]
    input_ids = torch.zeros(n_rows, width, dtype=torch.long)
    positions = torch.zeros(n_rows, width, dtype=torch.long)
    segment = torch.full((n_rows, width), -2, dtype=torch.long)  # -2 padding, -1 prompt, else row
    source = torch.full((batch.size, T), n_rows * width, dtype=torch.long)  # the zero state
    for r, members in enumerate(groups.values()):
        prompt = prompt_ids[members[0]][prompt_mask[members[0]]]
        p = len(prompt)
        input_ids[r, :p], positions[r, :p], segment[r, :p] = prompt, torch.arange(p), -1
        at = p
        for b in members:
            n = inputs[b]
            input_ids[r, at:at + n] = response_ids[b, :n]
            positions[r, at:at + n] = torch.arange(p, p + n)
            segment[r, at:at + n] = b
            if lengths[b]:  # token 0 from the prompt's last state, token t from token t - 1
                source[b, 0] = r * width + p - 1
                source[b, 1:n + 1] = r * width + at + torch.arange(n)
            at += n

    q, k = torch.arange(width).view(-1, 1), torch.arange(width).view(1, -1)
    seg_q, seg_k = segment.unsqueeze(2), segment.unsqueeze(1)
    allowed = (k <= q) & ((seg_k == seg_q) | ((seg_k == -1) & (seg_q != -2)))  # pads: pads only
    allowed |= torch.eye(width, dtype=torch.bool)  # so no query row is blocked whole
    return PackedLayout(input_ids.to(device), positions.to(device),
                        allowed.unsqueeze(1).to(device), source.to(device))


def gather_states(packed: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """(R, L, H) states of the packed rows -> (B, T, H) in the padded layout's places (zero past
    each response's length)."""
    flat = packed.reshape(-1, packed.shape[-1])
    flat = torch.cat([flat, flat.new_zeros(1, flat.shape[-1])])
    return flat[layout.source]
