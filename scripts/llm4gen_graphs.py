"""LLM4GEN additions to the stock prompts of scripts.stock_graphs (ComfyUI API format).

``with_apply`` keeps the stock CLIPTextEncode nodes and fuses their conditioning with Apply
LLM4GEN Conditioning; ``with_cross_adapter`` replaces them with CLIP+LLM Cross-Adapter nodes.
Both give positive and negative the same path, as the release does.
"""
from __future__ import annotations

import copy

from . import stock_graphs as g

LOAD_LLM, LOAD_CAM, ENC_POS, ENC_NEG, FUSE_POS, FUSE_NEG = (
    "llm", "cam", "llm_pos", "llm_neg", "fuse_pos", "fuse_neg")


def _fusion(adapter_from, embeds_from, strength=1.0, clip_tokens="first 77 (release)", controlnet_context="clip"):
    return {"adapter": adapter_from, "llm_embeds": embeds_from, "strength": strength,
            "clip_tokens": clip_tokens, "controlnet_context": controlnet_context}


def _with_llm(prompt: dict, llm_name: str, adapter_name: str, max_tokens: int) -> dict:
    prompt = copy.deepcopy(prompt)
    prompt[LOAD_LLM] = {"class_type": "LLM4GENLoadLLM", "inputs": {"model": llm_name, "dtype": "auto", "device": "default"}}
    prompt[LOAD_CAM] = {"class_type": "LLM4GENLoadCrossAdapter", "inputs": {"adapter_name": adapter_name}}
    for node, source in ((ENC_POS, g.POS), (ENC_NEG, g.NEG)):
        prompt[node] = {"class_type": "LLM4GENLLMEncode", "inputs": {
            "llm": [LOAD_LLM, 0], "text": prompt[source]["inputs"]["text"], "max_tokens": max_tokens}}
    return prompt


def with_apply(prompt: dict, llm_name: str, adapter_name: str, max_tokens: int = 256, **fusion) -> dict:
    """CLIPTextEncode -> Apply LLM4GEN Conditioning (pos and neg) -> sampler."""
    prompt = _with_llm(prompt, llm_name, adapter_name, max_tokens)
    for node, cond, enc, side in ((FUSE_POS, g.POS, ENC_POS, "positive"), (FUSE_NEG, g.NEG, ENC_NEG, "negative")):
        prompt[node] = {"class_type": "LLM4GENApplyConditioning",
                        "inputs": {"conditioning": [cond, 0], **_fusion([LOAD_CAM, 0], [enc, 0], **fusion)}}
        prompt[g.SAMPLER]["inputs"][side] = [node, 0]
    return prompt


def with_cross_adapter(prompt: dict, llm_name: str, adapter_name: str, max_tokens: int = 256, **fusion) -> dict:
    """CLIP+LLM Cross-Adapter (pos and neg) in place of CLIPTextEncode -> sampler."""
    prompt = _with_llm(prompt, llm_name, adapter_name, max_tokens)
    for node, cond, enc, side in ((FUSE_POS, g.POS, ENC_POS, "positive"), (FUSE_NEG, g.NEG, ENC_NEG, "negative")):
        clip, text = prompt[cond]["inputs"]["clip"], prompt[cond]["inputs"]["text"]
        prompt[node] = {"class_type": "LLM4GENCLIPLLMCrossAdapter",
                        "inputs": {"clip": clip, "text": text, **_fusion([LOAD_CAM, 0], [enc, 0], **fusion)}}
        prompt[g.SAMPLER]["inputs"][side] = [node, 0]
        del prompt[cond]
    return prompt
