"""LLM4GEN's model code, free of ComfyUI: the Cross-Adapter Module, its checkpoints, and the LLM
text encoders. Plain torch + transformers + safetensors + einops.

    from llm4gen_core import load_cross_adapter
    adapter = load_cross_adapter("projector.pth")
    fused = adapter(clip_embeds, llm_embeds)        # [B, Tc + Tl, Dc]

    from llm4gen_core import load_llm
    llm = load_llm("rankgen-t5-xl-all", tokenizer_path="t5_tokenizer")
    llm_embeds = llm.encode(prompts).hidden_states  # [B, 256, 2048]
"""
from .cam import CrossAdapter, CrossAdapterConfig
from .checkpoint import load_cross_adapter, read_cross_adapter_file, read_cross_adapter_state, save_cross_adapter
from .errors import CheckpointError, FeatureMismatchError, LLM4GENError, LLMLoadError
from .llm import EncodedText, LLMEncoder, load_llm, needs_tokenizer_path
from .recipe import RELEASE, LLMRecipe

__all__ = [
    "CrossAdapter", "CrossAdapterConfig", "load_cross_adapter", "read_cross_adapter_state",
    "save_cross_adapter", "CheckpointError", "FeatureMismatchError", "LLM4GENError", "LLMLoadError",
    "load_llm", "needs_tokenizer_path", "EncodedText", "LLMEncoder", "read_cross_adapter_file", "LLMRecipe", "RELEASE",
]
