"""The fusing nodes: CLIP+LLM Cross-Adapter and Apply LLM4GEN Conditioning.

Both turn CLIP conditioning into LLM4GEN conditioning entry by entry: the CLIP tokens of each
``[tensor, dict]`` go through the Cross-Adapter with the LLM features, and the dict is copied
with every key kept (pooled output, areas, masks, strengths, timestep ranges, ControlNets,
hooks). Inputs are never modified.

The CLIP tokens are whatever the conditioning holds: SD1.5's CLIP-L gives 768 per token, SDXL's
CLIP gives CLIP-L's 768 and OpenCLIP bigG's 1280 side by side (2048), with bigG's pooled output
in the dict, which passes through, so SDXL's size and crop conditioning stays stock. The adapter
must have been made for that width; another is one error naming both widths.

An adapter decides how its LLM features are made: its file's LLM recipe (none recorded: the
release's, :data:`RELEASE`). Features from LLM Encode made another way (another max_tokens, say)
are encoded again from the same text through the same LLM, as the adapter's recipe says; an LLM
of another kind or width than the adapter's is an error.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from comfy_api.latest import io

from ..llm4gen_core import RELEASE, LLM4GENError
from ..llm4gen_core.llm import KIND_NAMES
from .encode import encode_texts
from .patching import load_for_inference
from .types import LLM4GENAdapter, LLM4GENEmbeds, LoadedAdapter

log = logging.getLogger("LLM4GEN")

CLIP_CHUNK = 77
RELEASE_TOKENS = "first 77 (release)"
ALL_TOKENS = "all chunks"
MARKER = "llm4gen"  # records what a fused entry holds, so fusing twice starts from CLIP again
CONTROLNET_KEY = "cross_attn_controlnet"
# The per-token width of the CLIP conditioning each model family's text encoder gives in ComfyUI,
# to name both sides when an adapter does not fit it.
CLIP_WIDTHS = {
    768: ("SD1.5", "SD1.5's CLIP-L"),
    1024: ("SD2.x", "SD2.x's OpenCLIP-H"),
    1280: ("SDXL refiner", "the SDXL refiner's OpenCLIP bigG alone"),
    2048: ("SDXL", "SDXL's CLIP-L 768 + OpenCLIP bigG 1280"),
}


def fusion_inputs() -> list:
    """The inputs both fusing nodes share, after their own CLIP-side inputs."""
    return [
        LLM4GENAdapter.Input("adapter", tooltip="The Cross-Adapter from Load LLM4GEN Cross-Adapter."),
        LLM4GENEmbeds.Input("llm_embeds", tooltip="LLM features from LLM Encode (batch 1 is repeated over "
                                                  "a larger CLIP batch and vice versa)."),
        io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05,
                       tooltip="Scales the LLM tokens the Cross-Adapter appends (the paper's lambda). "
                               "1.0 is the release; 0 leaves CLIP alone plus zeros."),
        io.Combo.Input("clip_tokens", options=[RELEASE_TOKENS, ALL_TOKENS], default=RELEASE_TOKENS,
                       tooltip="Which CLIP tokens to fuse. The release saw exactly 77; a prompt longer than 77 "
                               "CLIP tokens gives ComfyUI 154+, which 'all chunks' keeps."),
        io.Combo.Input("controlnet_context", options=["clip", "fused"], default="clip",
                       tooltip="What a ControlNet attends to. clip: the plain CLIP tokens its training saw "
                               "(stock SD1.5 and SDXL ControlNets); fused: the same 333 tokens as the UNet."),
    ]


def fuse_conditioning(conditioning: list, adapter: LoadedAdapter, llm_embeds, strength: float,
                      clip_tokens: str, controlnet_context: str) -> list:
    """New CONDITIONING whose tensors are the CAM's fusion of each entry's CLIP tokens."""
    if not conditioning:
        raise ValueError("the conditioning input is empty: connect a CLIP Text Encode (or similar) output")
    for index, (cond, _) in enumerate(conditioning):  # before any LLM work
        _check_clip_width(cond, adapter, index)
    llm_embeds = embeds_for_adapter(adapter, llm_embeds)
    load_for_inference(adapter.patcher)
    llm = llm_embeds.hidden_states
    fused_entries = []
    for index, (cond, options) in enumerate(conditioning):
        clip = _clip_part(cond, options, clip_tokens, index)
        fused = adapter.adapter(clip, llm, strength=strength)
        new_options = options.copy()
        if controlnet_context == "clip":
            new_options.setdefault(CONTROLNET_KEY, clip)
        else:
            new_options.pop(CONTROLNET_KEY, None)
        if "attention_mask" in options:  # only some models carry one; the release fuses unmasked
            mask = options["attention_mask"][..., : clip.shape[1]]
            new_options["attention_mask"] = torch.cat([mask, mask.new_ones(*mask.shape[:-1], fused.shape[1] - clip.shape[1])], -1)
        new_options[MARKER] = {"clip_tokens": clip.shape[1], "llm_tokens": fused.shape[1] - clip.shape[1],
                               "strength": strength, "adapter": adapter.name}
        fused_entries.append([fused, new_options])
    return fused_entries


def _check_clip_width(cond: torch.Tensor, adapter: LoadedAdapter, index: int) -> None:
    """One clear error when the conditioning's CLIP tokens are not the width the adapter fuses:
    an SD1.5 adapter on SDXL's CLIP, an SDXL adapter on SD1.5's, the SDXL refiner's conditioning."""
    want = adapter.adapter.config.clip_dim
    got = cond.shape[-1] if isinstance(cond, torch.Tensor) and cond.ndim == 3 else want
    if got == want:
        return  # the Cross-Adapter itself reports tensors of another rank or type

    def width(w):
        return f"{w} wide ({CLIP_WIDTHS[w][1]})" if w in CLIP_WIDTHS else f"{w} wide"

    def family(w, fallback):
        return CLIP_WIDTHS[w][0] if w in CLIP_WIDTHS else fallback

    if got == 1280:
        advice = ("the refiner's conditioning cannot be fused, LLM4GEN conditions the base model: fuse the SDXL base "
                  "model's conditioning (CLIP Text Encode or CLIP Text Encode (SDXL) with the base checkpoint's CLIP) "
                  "and give the refiner its own, unfused")
    else:
        advice = (f"use a Cross-Adapter made for {family(got, 'this text encoder')} (CLIP width {got}) with this "
                  f"conditioning, or this adapter with {family(want, 'its own model')}'s CLIP and UNet")
    raise LLM4GENError(f"conditioning entry {index} has CLIP tokens {width(got)}, but Cross-Adapter {adapter.name} "
                       f"fuses CLIP tokens {width(want)}: {advice}")


def embeds_for_adapter(adapter: LoadedAdapter, embeds):
    """``embeds`` if they were encoded as the adapter's recipe says, else the same text encoded
    again that way through the same LLM. Features that do not say how they were made (not from
    LLM Encode) are used as they are."""
    recorded = getattr(adapter.adapter, "recipe", None)
    wanted = recorded or RELEASE
    used = getattr(embeds, "recipe", None)
    if used is None or not used.differences(wanted):
        return embeds
    if recorded is not None:
        trained = f"adapter {adapter.name} was trained with"
        trained_llm = f"{wanted.llm_name or 'an LLM'} (a {KIND_NAMES[wanted.kind]})"
    else:
        trained = f"adapter {adapter.name} records no LLM recipe, so the release's applies:"
        trained_llm = "RankGen's T5-XL encoder (a T5 encoder)"
    loaded, texts = getattr(embeds, "loaded_llm", None), getattr(embeds, "texts", ())
    llm = loaded.llm if loaded is not None else None
    llm_name = loaded.name if loaded is not None else (used.llm_name or "another LLM")
    if used.kind != wanted.kind:
        raise LLM4GENError(
            f"{trained} {trained_llm}, but the LLM features come from {llm_name} (a {KIND_NAMES[used.kind]}): "
            "load the adapter's LLM in Load LLM (LLM4GEN), or use an adapter trained on this LLM"
        )
    llm_dim = adapter.adapter.config.llm_dim
    if llm is not None and llm.hidden_size != llm_dim:
        raise LLM4GENError(
            f"LLM features are {llm.hidden_size} wide but this Cross-Adapter expects {llm_dim}: {trained} "
            f"{trained_llm}, and {llm_name} is not it; load the adapter's LLM in Load LLM (LLM4GEN)"
        )
    changed = [f.name for f in dataclasses.fields(wanted) if f.name != "llm_name"
               and getattr(wanted, f.name) != getattr(used, f.name)]
    if llm is None or not texts:
        raise LLM4GENError(
            f"{trained} {_settings(wanted, changed)}, but these LLM features were encoded with "
            f"{_settings(used, changed)} and do not carry their text and LLM to be encoded again: feed the "
            "fusing node from LLM Encode"
        )
    several = len(changed) > 1
    log.info("LLM4GEN: %s %s; LLM Encode's %s %s overridden (the text is encoded again as the adapter needs)",
             trained, _settings(wanted, changed), _settings(used, changed, with_names=several),
             "are" if several else "is")
    return encode_texts(loaded, list(texts), wanted.max_tokens, recipe=wanted)


def _settings(recipe, names: list[str], *, with_names: bool = True) -> str:
    """'max_tokens 128, prefix ""': the named fields of a recipe, for a message."""
    def value(v):
        return str(v) if isinstance(v, int) else repr(v)
    return ", ".join(f"{n} {value(getattr(recipe, n))}" if with_names else value(getattr(recipe, n)) for n in names)


def _clip_part(cond: torch.Tensor, options: dict, clip_tokens: str, index: int) -> torch.Tensor:
    if MARKER in options:  # already fused upstream: start again from its CLIP tokens
        cond = cond[:, : options[MARKER]["clip_tokens"]]
    if cond.shape[1] > CLIP_CHUNK:
        if clip_tokens == RELEASE_TOKENS:
            log.warning("LLM4GEN: conditioning entry %d has %d CLIP tokens (a prompt longer than 77 tokens, or "
                        "Conditioning Concat); fusing the first 77 as the release was trained. Set clip_tokens to "
                        "'all chunks' to keep all.", index, cond.shape[1])
            return cond[:, :CLIP_CHUNK]
        log.warning("LLM4GEN: fusing %d CLIP tokens; the released UNet was trained on 77 + 256.", cond.shape[1])
    return cond


class CLIPLLMCrossAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENCLIPLLMCrossAdapter",
            display_name="CLIP+LLM Cross-Adapter",
            category="conditioning/llm4gen",
            description="Encodes the prompt with CLIP and fuses it with the LLM features through the "
                        "Cross-Adapter: the release's text path in one node (77 + 256 = 333 tokens).",
            inputs=[
                io.Clip.Input("clip", tooltip="SD1.5 or SDXL CLIP (from the checkpoint or a CLIP loader), matching "
                                              "the adapter; LoRA-patched CLIP works. The release uses SD1.5's last "
                                              "layer (clip skip -1)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt for CLIP: normally the same text as LLM Encode's. Prompt "
                                        "weights like (word:1.2) and embeddings work as in CLIP Text Encode."),
                *fusion_inputs(),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning for the LLM4GEN UNet: fused CLIP+LLM tokens.")],
        )

    @classmethod
    def execute(cls, clip, text, adapter, llm_embeds, strength, clip_tokens, controlnet_context) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("clip input is invalid: None (the checkpoint has no CLIP; load one with a CLIP loader)")
        if getattr(clip, "layer_idx", None) not in (None, -1):
            log.warning("LLM4GEN: CLIP uses clip skip %s; the release was trained on the last layer (-1)",
                        clip.layer_idx)
        tokens = clip.tokenize(text)
        if clip_tokens == RELEASE_TOKENS:
            tokens = _first_chunk_only(tokens)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        return io.NodeOutput(fuse_conditioning(conditioning, adapter, llm_embeds, strength, clip_tokens,
                                               controlnet_context))


def _first_chunk_only(tokens: dict) -> dict:
    """Keep only the first 77-token chunk of each CLIP's tokens before encoding: the release fuses
    only those, and CLIP encodes every chunk it is given (a 100,000-character prompt is ~400 chunks,
    minutes on a CPU) before the rest would be cut off. Chunks are encoded independently, so the
    first one comes out the same."""
    chunks = max((len(v) for v in tokens.values() if isinstance(v, list)), default=0)
    if chunks <= 1:
        return tokens
    log.warning("LLM4GEN: the CLIP prompt is %d chunks of 77 tokens; only the first is encoded and fused, as the "
                "release was trained. Set clip_tokens to 'all chunks' to keep all.", chunks)
    return {key: value[:1] if isinstance(value, list) else value for key, value in tokens.items()}


class ApplyLLM4GENConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENApplyConditioning",
            display_name="Apply LLM4GEN Conditioning",
            category="conditioning/llm4gen",
            description="Fuses LLM features into existing CLIP conditioning through the Cross-Adapter, entry by "
                        "entry, keeping everything else in it (pooled output, areas, masks, timestep ranges, "
                        "ControlNets). Composes with CLIP Text Encode, LoRA, clip skip, combine/area nodes.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="CLIP conditioning, e.g. from CLIP Text Encode."),
                *fusion_inputs(),
            ],
            outputs=[io.Conditioning.Output(tooltip="The same conditioning with fused CLIP+LLM tokens.")],
        )

    @classmethod
    def execute(cls, conditioning, adapter, llm_embeds, strength, clip_tokens, controlnet_context) -> io.NodeOutput:
        return io.NodeOutput(fuse_conditioning(conditioning, adapter, llm_embeds, strength, clip_tokens,
                                               controlnet_context))
