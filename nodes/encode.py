"""LLM Encode: prompt text to LLM token features, as the release computes them."""
from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..llm4gen_core.llm import BATCH_CHUNK
from .patching import load_for_inference, offload_after_use
from .types import LLM4GENEmbeds, LLM4GENLLM, LLMEmbeds, LoadedLLM

log = logging.getLogger("LLM4GEN")


def encode_memory(llm, prompts: int, tokens: int) -> int:
    """An upper bound of the activations of one encode call, for ``load_models_gpu`` to keep free
    besides the weights (it keeps at least ~1.2 GB anyway; this matters for long decoder prompts):
    per token of one batch chunk, in float32, three copies of the attention scores, three of the
    feed-forward's width, eight hidden states and every layer's output (kept when the recipe takes
    a middle layer)."""
    config = llm.model.config
    width = llm.hidden_size
    ff = getattr(config, "d_ff", None) or getattr(config, "intermediate_size", None) or 4 * width
    heads = getattr(config, "num_heads", None) or getattr(config, "num_attention_heads", None) or 1
    per_token = 3 * heads * tokens + 3 * ff + 8 * width + (len(llm.layers) + 1) * width
    return min(prompts, BATCH_CHUNK) * tokens * per_token * 4


def encode_texts(llm: LoadedLLM, texts: list[str], max_tokens: int, recipe=None) -> LLMEmbeds:
    """Encode under ComfyUI's model management (the LLM loaded onto its device, in part if VRAM is
    short, and offloaded again afterwards; progress shown, interrupts honoured), as the given recipe
    says if any; features kept off the compute device."""
    tokens = recipe.max_tokens if recipe is not None else max_tokens
    device = load_for_inference(llm.patcher, memory_required=encode_memory(llm.llm, len(texts), tokens))
    progress = comfy.utils.ProgressBar(1)

    def on_step(done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        progress.update_absolute(done, total)

    try:
        encoded = llm.llm.encode(texts, max_tokens=max_tokens, step_callback=on_step, recipe=recipe, device=device)
    finally:
        # Sampling comes next: the UNet finds the VRAM it would find without LLM4GEN.
        offload_after_use(llm.patcher)
    for count, cut in zip(encoded.token_counts, encoded.truncated):
        if cut:
            log.warning("LLM4GEN: the LLM prompt has %d tokens; only the first %d are used (max_tokens)",
                        count, encoded.recipe.max_tokens)
    # Kept off the compute device: the LLM's VRAM is freed whole.
    device = mm.intermediate_device()
    return LLMEmbeds(
        hidden_states=encoded.hidden_states.to(device),
        attention_mask=encoded.attention_mask.to(device),
        input_ids=encoded.input_ids.to(device),
        token_counts=encoded.token_counts,
        truncated=encoded.truncated,
        recipe=encoded.recipe,
        texts=tuple(texts),
        loaded_llm=llm,
    )


class LLMEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENLLMEncode",
            display_name="LLM Encode",
            category="conditioning/llm4gen",
            description="Encodes a prompt with the LLM into token features for the Cross-Adapter. For the "
                        "release (RankGen T5-XL) the prompt gets RankGen's \"pre \" prefix and is padded or cut "
                        "to 256 tokens; padding positions are kept, as the release does. An adapter that records "
                        "the LLM recipe it was trained with has the text encoded again that way when they differ.",
            inputs=[
                LLM4GENLLM.Input("llm", tooltip="The LLM from Load LLM (LLM4GEN)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt. Use the same text as the CLIP prompt, as the release does; "
                                        "long, detailed prompts are what LLM4GEN is for."),
                io.Int.Input("max_tokens", default=256, min=1, max=4096,
                             tooltip="LLM sequence length. The release was trained with 256: longer prompts are "
                                     "cut (with a warning), shorter ones padded. The adapter decides: one that "
                                     "records its training recipe (and the release's, which records none: 256) "
                                     "has the text encoded again at its own length if this differs."),
            ],
            outputs=[LLM4GENEmbeds.Output(display_name="llm_embeds",
                                          tooltip="LLM token features [batch, max_tokens, width].")],
        )

    @classmethod
    def execute(cls, llm: LoadedLLM, text: str, max_tokens: int) -> io.NodeOutput:
        return io.NodeOutput(encode_texts(llm, [text], max_tokens))
