"""LLM Encode: prompt text to LLM token features, as the release computes them."""
from __future__ import annotations

import dataclasses
import logging

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from .patching import load_for_inference
from .types import LLM4GENEmbeds, LLM4GENLLM, LoadedLLM

log = logging.getLogger("LLM4GEN")


class LLMEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENLLMEncode",
            display_name="LLM Encode",
            category="conditioning/llm4gen",
            description="Encodes a prompt with the LLM into token features for the Cross-Adapter. For the "
                        "release (RankGen T5-XL) the prompt gets RankGen's \"pre \" prefix and is padded or cut "
                        "to 256 tokens; padding positions are kept, as the release does.",
            inputs=[
                LLM4GENLLM.Input("llm", tooltip="The LLM from Load LLM (LLM4GEN)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt. Use the same text as the CLIP prompt, as the release does; "
                                        "long, detailed prompts are what LLM4GEN is for."),
                io.Int.Input("max_tokens", default=256, min=1, max=4096,
                             tooltip="LLM sequence length. The release was trained with 256: longer prompts are "
                                     "cut (with a warning), shorter ones padded."),
            ],
            outputs=[LLM4GENEmbeds.Output(display_name="llm_embeds",
                                          tooltip="LLM token features [batch, max_tokens, width].")],
        )

    @classmethod
    def execute(cls, llm: LoadedLLM, text: str, max_tokens: int) -> io.NodeOutput:
        load_for_inference(llm.patcher)
        progress = comfy.utils.ProgressBar(1)

        def on_step(done: int, total: int) -> None:
            mm.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)

        encoded = llm.llm.encode([text], max_tokens=max_tokens, step_callback=on_step)
        if any(encoded.truncated):
            log.warning("LLM4GEN: the LLM prompt has %d tokens; only the first %d are used (max_tokens)",
                        encoded.token_counts[0], max_tokens)
        # Kept off the compute device so that offloading the LLM frees all of its memory.
        device = mm.intermediate_device()
        embeds = dataclasses.replace(
            encoded,
            hidden_states=encoded.hidden_states.to(device),
            attention_mask=encoded.attention_mask.to(device),
            input_ids=encoded.input_ids.to(device),
        )
        return io.NodeOutput(embeds)
