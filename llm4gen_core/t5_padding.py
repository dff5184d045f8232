"""A T5 encoder's outputs at padding positions, computed once per distinct position.

The release pads every prompt to 256 tokens and keeps all 256 outputs, padding included.
Padding is masked as a key, so what the encoder gives at a pad position ``p`` depends only on the
real tokens and on the relative-position bias row ``bias[:, p, real keys]``: two pad positions
with equal rows have equal outputs at every layer. T5's buckets grow logarithmically and stop at
``max_distance`` (128), so most pad positions share a row with their neighbour. Positions computed
of 256 (T5's 32 buckets): 16 for a 1-token prompt, 24 for the empty prompt ("pre" and ``</s>``),
104 for 20 tokens, 165 for 74 tokens; at 200 tokens and more nothing is saved.

:func:`padding_plan` picks the positions to compute (every real position of the batch, and the
first pad position of each run of equal rows); :func:`run_once_per_distinct_position` runs the
encoder on those alone, with the full sequence's bias, and spreads the outputs back to all
positions. The values are those of the full forward up to float summation order (masked keys add
exact zeros either way).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PaddingPlan:
    keep: torch.Tensor   # [M] positions computed, ascending
    index: torch.Tensor  # [N] for every position, the row of ``keep`` whose output it takes


def padding_plan(bias: torch.Tensor, attention_mask: torch.Tensor) -> PaddingPlan | None:
    """From the encoder's relative-position bias for the full length (``[1, heads, N, N]``) and the
    batch's right-padded mask (``[B, N]``): which positions to compute. None where nothing is saved
    or the mask is not right padding (then the full forward runs)."""
    n = attention_mask.shape[-1]
    mask = attention_mask.bool()
    lengths = mask.sum(-1)
    positions = torch.arange(n, device=mask.device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        return None  # not "real tokens, then padding" in every row
    real = int(lengths.max())
    if real == 0 or real >= n - 1:
        return None
    rows = bias[0, :, real:, :real]  # [heads, pad positions, real keys]: what tells pads apart
    new_run = torch.ones(n - real, dtype=torch.bool)
    new_run[1:] = (rows[:, 1:] != rows[:, :-1]).any(dim=-1).any(dim=0).cpu()
    firsts = torch.nonzero(new_run).flatten() + real
    if len(firsts) == n - real:
        return None
    keep = torch.cat([torch.arange(real), firsts])
    run_of = torch.cumsum(new_run.long(), 0) - 1  # which run each pad position is in
    index = torch.cat([torch.arange(real), real + run_of])
    return PaddingPlan(keep=keep, index=index)


@contextmanager
def full_length_bias(attention, keep: torch.Tensor, bias: torch.Tensor):
    """While active, ``attention`` (the encoder's first self-attention, which computes the bias every
    layer reuses) gives the full sequence's bias at the kept positions, whatever length it sees."""
    kept = bias[:, :, keep][:, :, :, keep]

    def compute_bias(query_length, key_length, *args, **kwargs):
        if (query_length, key_length) != (kept.shape[-2], kept.shape[-1]):
            raise RuntimeError(f"T5 padding plan: bias asked for {query_length}x{key_length}, planned for "
                               f"{kept.shape[-2]}x{kept.shape[-1]}")
        return kept

    attention.compute_bias = compute_bias
    try:
        yield
    finally:
        del attention.compute_bias  # the class's own method again


def first_self_attention(model):
    """The self-attention that holds T5's relative-position bias (block 0), or None."""
    try:
        attention = model.encoder.block[0].layer[0].SelfAttention
    except (AttributeError, IndexError, TypeError):
        return None
    if not getattr(attention, "has_relative_attention_bias", False) or getattr(attention, "is_decoder", True):
        return None
    return attention


def run_once_per_distinct_position(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, forward):
    """``forward(ids, mask)`` (a callable returning ``[B, n, D]``) on the positions worth computing,
    spread back to ``[B, N, D]``; the full forward where the model or the mask allows no saving."""
    attention = first_self_attention(model)
    if attention is None:
        return forward(input_ids, attention_mask)
    n = input_ids.shape[-1]
    with torch.no_grad():
        bias = attention.compute_bias(n, n, device=input_ids.device)
    plan = padding_plan(bias, attention_mask)
    if plan is None:
        return forward(input_ids, attention_mask)
    keep = plan.keep.to(input_ids.device)
    with full_length_bias(attention, keep, bias):
        out = forward(input_ids[:, keep], attention_mask[:, keep])
    return out[:, plan.index.to(out.device)]
