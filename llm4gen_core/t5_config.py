"""T5 encoder weights: which keys they have, and the config their shapes imply.

RankGen's checkpoint wraps a T5 encoder under ``t5_encoder.`` and ships a config.json for its own
custom code, not a T5 config; a bare ``.safetensors`` file has no config at all. So the T5 config
is read off the tensors: d_model and the attention width from the q projection, the head count and
bucket count from the relative attention bias, d_ff and the activation from the feed-forward
weights (``wi_0``/``wi_1`` = gated-GELU as in T5 v1.1, ``wi`` = ReLU as in the original T5), the
layer count from the block numbers. What shapes cannot tell (layer-norm epsilon, maximum relative
distance) is T5's default, the same for every released T5.
"""
from __future__ import annotations

import re

import torch

from .errors import LLMLoadError
from .safe_files import listed

WRAPPER_PREFIXES = ("t5_encoder.", "model.", "transformer.")
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_ATTN = "encoder.block.0.layer.0.SelfAttention."
_FF = "encoder.block.0.layer.1.DenseReluDense."


def looks_like_t5_encoder(keys) -> bool:
    keys = list(keys)
    return any(k.endswith("layer.0.SelfAttention.relative_attention_bias.weight") for k in keys)


def t5_encoder_state(state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """The encoder's tensors under HF ``T5EncoderModel`` names: wrapper prefix stripped, decoder
    and LM head dropped, the token embedding as ``shared.weight``."""
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix + "encoder.block.") for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    kept = {k: v for k, v in state.items() if k.startswith("encoder.") or k in ("shared.weight", "shared.scale_weight")}
    if not any(_BLOCK.match(k) for k in kept):
        raise LLMLoadError(
            f"{source}: no T5 encoder weights found (expected keys like encoder.block.0.layer.0.SelfAttention.q.weight, "
            f"optionally under t5_encoder.); found {listed(sorted(state))}"
        )
    # The encoder runs on encoder.embed_tokens; T5 ties it to shared. Checkpoints hold either or
    # both (the same tensor when saved from a tied model).
    # A scaled-fp8 embedding has its scale beside it (``<name>.scale_weight``); it goes with its weight.
    embed = kept.pop("encoder.embed_tokens.weight", None)
    shared = kept.pop("shared.weight", None)
    embed_scale = kept.pop("encoder.embed_tokens.scale_weight", None)
    shared_scale = kept.pop("shared.scale_weight", None)
    if embed is None and shared is None:
        raise LLMLoadError(f"{source}: the token embedding is missing (neither shared.weight nor encoder.embed_tokens.weight)")
    kept["shared.weight"], scale = (embed, embed_scale) if embed is not None else (shared, shared_scale)
    if scale is not None:
        kept["shared.scale_weight"] = scale
    return kept


def infer_t5_config(state: dict[str, torch.Tensor], source):
    """A ``T5Config`` for the encoder whose tensors (as returned by :func:`t5_encoder_state`) these are."""
    from transformers import T5Config

    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if blocks != list(range(len(blocks))):
        raise LLMLoadError(f"{source}: encoder blocks are not numbered 0..{len(blocks) - 1}: found {blocks}")
    per_layer_bias = [k for k in state if k.endswith("relative_attention_bias.weight") and not k.startswith("encoder.block.0.")]
    if per_layer_bias:
        raise LLMLoadError(
            f"{source}: every layer has its own relative attention bias ({per_layer_bias[0]}): that is UMT5, "
            "not a T5 encoder; it is not supported"
        )
    try:
        inner, d_model = state[_ATTN + "q.weight"].shape
        buckets, heads = state[_ATTN + "relative_attention_bias.weight"].shape
        vocab = state["shared.weight"].shape[0]
        gated = _FF + "wi_0.weight" in state
        d_ff = state[_FF + ("wi_0.weight" if gated else "wi.weight")].shape[0]
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise LLMLoadError(f"{source}: malformed T5 encoder weights in block 0 (missing or misshapen {exc})") from None
    if heads <= 0 or inner % heads:
        raise LLMLoadError(f"{source}: attention width {inner} does not split into {heads} heads")
    return T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=len(blocks),
        num_heads=heads, relative_attention_num_buckets=buckets,
        feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=False,
    )


def check_shapes(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], source, config_source) -> None:
    """Every tensor the model needs is there with the model's shape; nothing else is."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (config wants {tuple(expected[k])})"
             for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k]]
    problems = []
    if wrong:
        problems.append(f"shapes that do not match the config: {listed(wrong, 4)}")
    if missing:
        problems.append(f"missing weights: {listed(missing, 4)}")
    if unexpected:
        problems.append(f"unexpected weights: {listed(unexpected, 4)}")
    if problems:
        raise LLMLoadError(
            f"{source}: the weights do not fit the model described by {config_source}: " + "; ".join(problems)
            + " (are the config and the weights from the same model?)"
        )
