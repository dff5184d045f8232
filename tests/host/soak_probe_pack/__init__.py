"""Test-only ComfyUI node pack for the server soak: what is alive in the server process.

Linked into the soak's own base directory as ``custom_nodes/llm4gen_soak_probe``; never shipped.
"LLM4GENTestLiveObjects" (an output node that runs on every prompt) collects garbage, then counts
the live instances of the pack's classes (Cross-Adapters, LLM encoders and their transformers
models, the loaders' outputs, the ModelPatcher holders) and the bytes of the weights those modules
hold, and reports them in its UI output, so ``/history`` shows whether models from earlier prompts
are still alive. Classes are matched by name: ComfyUI imports the pack under a path-derived module
name. It also reports the process's resident memory before and after ``malloc_trim(0)``, which
hands the C heap's free pages back to the system: after it, RSS measures memory in use rather
than what glibc keeps cached for reuse.
"""
from __future__ import annotations

import gc
import json
import os

from comfy_api.latest import ComfyExtension, io

COUNTED = ("CrossAdapter", "LLMEncoder", "T5EncoderModel", "LoadedLLM", "LoadedAdapter", "_Holder")
MODULES = ("CrossAdapter", "T5EncoderModel")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class LiveObjects(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENTestLiveObjects",
            display_name="Live LLM4GEN objects (tests)",
            category="_for_testing/llm4gen",
            description="Test-only: counts live LLM4GEN objects after a garbage collection.",
            inputs=[io.String.Input("label", default=""),
                    io.AnyType.Input("anything", optional=True, tooltip="Wire anything here to run after it.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return os.urandom(8).hex()  # never cached: counts afresh on every prompt

    @classmethod
    def execute(cls, label, anything=None) -> io.NodeOutput:
        del anything
        gc.collect()
        counts = dict.fromkeys(COUNTED, 0)
        weight_bytes = dict.fromkeys(MODULES, 0)
        for obj in gc.get_objects():
            name = type(obj).__name__
            if name in counts:
                counts[name] += 1
            if name in weight_bytes:
                weight_bytes[name] += sum(t.numel() * t.element_size() for t in obj.state_dict().values())
        rss_untrimmed = _rss_bytes()
        _malloc_trim()
        report = {"label": label, "counts": counts, "weight_bytes": weight_bytes, "rss_untrimmed": rss_untrimmed,
                  "rss": _rss_bytes()}
        return io.NodeOutput(ui={"llm4gen_live": [json.dumps(report)]})


class ProbeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LiveObjects]


async def comfy_entrypoint() -> ProbeExtension:
    return ProbeExtension()
