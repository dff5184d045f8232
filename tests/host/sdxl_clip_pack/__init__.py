"""Test-only ComfyUI node pack: SDXL's two text encoders of any depth as one SDXL CLIP.

Linked into the test host's ``custom_nodes/`` as ``llm4gen_test_sdxl_clip``; never shipped.
Stock DualCLIPLoader (type sdxl) tells OpenCLIP bigG from CLIP-L by its 31st layer
(``comfy.sd.detect_te_model``), so it cannot load the tests' 3-layer stand-ins
(``scripts/smoke_models.py``: full widths, random weights). "LLM4GENTestSDXLCLIPLoader" builds
what DualCLIPLoader builds for SDXL, ComfyUI's own ``comfy.sdxl_clip.SDXLClipModel`` and
``SDXLTokenizer`` in a ``comfy.sd.CLIP``, with each encoder's layer count read from its file and
passed through ComfyUI's ``<name>_model_config`` option, and loads the two files into it. It
runs in fp32 (ComfyUI's CPU default for text encoders is fp16, ~20x slower here), so references
computed with transformers agree to float32 rounding.
"""
from __future__ import annotations

import re

import torch
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")


def _layers(state: dict, name: str) -> int:
    found = {int(m.group(1)) for m in map(_LAYER.match, state) if m}
    if not found:
        raise ValueError(f"{name}: no text_model.encoder.layers.* keys, not a CLIP text encoder in transformers' layout")
    return max(found) + 1


class SDXLCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        files = folder_paths.get_filename_list("text_encoders")
        return io.Schema(
            node_id="LLM4GENTestSDXLCLIPLoader",
            display_name="SDXL CLIP of any depth (LLM4GEN tests)",
            category="_for_testing/llm4gen",
            description="Test-only: SDXL's CLIP-L and OpenCLIP bigG from models/text_encoders, any layer count.",
            inputs=[io.Combo.Input("clip_l_name", options=files), io.Combo.Input("clip_g_name", options=files)],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_l_name, clip_g_name) -> io.NodeOutput:
        import comfy.sd
        import comfy.sdxl_clip
        import comfy.supported_models_base
        import comfy.utils
        import folder_paths

        state, options = {}, {"dtype": torch.float32}
        for part, name in (("clip_l", clip_l_name), ("clip_g", clip_g_name)):
            part_state = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("text_encoders", name),
                                                     safe_load=True)
            options[f"{part}_model_config"] = {"num_hidden_layers": _layers(part_state, name)}
            state.update({f"{part}.transformer.{key}": value for key, value in part_state.items()})
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        clip = comfy.sd.CLIP(target, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                             parameters=comfy.utils.calculate_parameters(state), model_options=options)
        missing, unexpected = clip.load_sd(state, full_model=True)
        # As ComfyUI's checkpoint loader: no logit scale, and CLIP-L files carry no projection.
        missing = [k for k in missing if not k.endswith(".logit_scale") and k != "clip_l.transformer.text_projection.weight"]
        if missing or unexpected:
            raise ValueError(f"SDXL CLIP from {clip_l_name} + {clip_g_name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return io.NodeOutput(clip)


class SDXLCLIPExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [SDXLCLIPLoader]


async def comfy_entrypoint() -> SDXLCLIPExtension:
    return SDXLCLIPExtension()
