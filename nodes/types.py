"""The pack's ComfyUI socket types and the objects that travel through them.

Types are namespaced (``LLM4GEN_*``) so they never connect to another pack's look-alikes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..llm4gen_core import EncodedText

LLM4GENLLM = io.Custom("LLM4GEN_LLM")
LLM4GENAdapter = io.Custom("LLM4GEN_ADAPTER")
LLM4GENEmbeds = io.Custom("LLM4GEN_EMBEDS")


@dataclass(frozen=True)
class LoadedLLM:
    """What "Load LLM (LLM4GEN)" hands on: the encoder and the patcher ComfyUI moves it with."""

    llm: Any          # llm4gen_core LLM encoder (see llm4gen_core.load_llm)
    patcher: Any      # comfy.model_patcher.ModelPatcher around it
    name: str


@dataclass(frozen=True)
class LoadedAdapter:
    """What "Load LLM4GEN Cross-Adapter" hands on."""

    adapter: Any      # llm4gen_core.CrossAdapter
    patcher: Any
    name: str


@dataclass
class LLMEmbeds(EncodedText):
    """What "LLM Encode" hands on: the features (an ``EncodedText``, whose ``recipe`` says how they
    were encoded) and what is needed to encode the same text again, should an adapter's recorded
    recipe differ. The fusing nodes also take a bare ``EncodedText`` (nothing to encode again)."""

    texts: tuple[str, ...] = ()          # the prompts, one per batch row
    loaded_llm: LoadedLLM | None = None  # the LLM that encoded them
