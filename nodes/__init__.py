"""The ComfyUI face of LLM4GEN: five nodes over ``llm4gen_core`` (V3 node API)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import model_folders
from .conditioning import ApplyLLM4GENConditioning, CLIPLLMCrossAdapter
from .encode import LLMEncode
from .loaders import LoadCrossAdapter, LoadLLM

NODES: list[type[io.ComfyNode]] = [
    LoadLLM, LoadCrossAdapter, LLMEncode, CLIPLLMCrossAdapter, ApplyLLM4GENConditioning,
]


class LLM4GENExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LLM4GENExtension:
    model_folders.register_model_folders()
    return LLM4GENExtension()
