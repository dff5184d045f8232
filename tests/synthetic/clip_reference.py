"""SD1.5 CLIP text features computed without ComfyUI, as a reference for host tests.

transformers' ``CLIPTextModel`` (ViT-L/14 text config), loaded from a checkpoint's text
encoder (``sd15.clip_l_file``), tokenised with the CLIP vocabulary ComfyUI ships
(``comfy/sd1_tokenizer``: local files, nothing downloaded): start token, text, end token,
padded with the end token to 77. The output is the last hidden state after the final layer
norm, [B, 77, 768] in fp32: what ComfyUI's CLIPTextEncode gives with clip skip -1 (ComfyUI
computes it in fp16 on CPU, so compare with a tolerance of a few 1e-3 relative).
"""
from __future__ import annotations

import os

import torch

from synthetic import comfy_env


class ClipLReference:
    """Loaded once, called per batch of prompts: ``ref(["a cat", ""]) -> [2, 77, 768]``."""

    def __init__(self, clip_l_file: str | os.PathLike):
        from safetensors.torch import load_file
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        vocab = comfy_env.comfyui_root() / "comfy" / "sd1_tokenizer"
        self.tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token="<|endoftext|>")
        config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        self.model = CLIPTextModel(config).eval()
        state = {k: v.float() for k, v in load_file(str(clip_l_file)).items()}
        if not any(k.startswith("text_model.") for k in self.model.state_dict()):
            # transformers 5 dropped the text_model. level of CLIPTextModel's own keys.
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{clip_l_file}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def token_ids(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids

    def __call__(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=self.token_ids(texts)).last_hidden_state


class SDXLClipReference:
    """SDXL's text conditioning computed with transformers, as ComfyUI's SDXL CLIP must give it:
    ``ref(["a cat", ""]) -> (context [B, 77, 2048], pooled [B, 1280])``.

    CLIP-L (``CLIPTextModel``, 768 wide, QuickGELU) and OpenCLIP bigG
    (``CLIPTextModelWithProjection``, 1280 wide, 20 heads, GELU) are loaded from the same files
    (transformers' key names; the layer count read from the keys) and each read at its
    penultimate layer, ``hidden_states[-2]``, without the final layer norm; the per-token context
    is the two side by side, CLIP-L first. The pooled output is bigG's text embedding (final
    norm at the first end token, then its projection). Tokens as ComfyUI's SDXLTokenizer makes
    them: start, text, end, then CLIP-L pads with the end token and bigG with id 0 ("!").
    """

    HIDDEN = {"clip_l": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, hidden_act="quick_gelu"),
              "clip_g": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, hidden_act="gelu",
                             projection_dim=1280)}

    def __init__(self, clip_l_file: str | os.PathLike, clip_g_file: str | os.PathLike):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        vocab = comfy_env.comfyui_root() / "comfy" / "sd1_tokenizer"
        files = (str(vocab / "vocab.json"), str(vocab / "merges.txt"))
        self.tokenizers = {"clip_l": CLIPTokenizer(*files, pad_token="<|endoftext|>"),
                           "clip_g": CLIPTokenizer(*files, pad_token="!")}
        self.models = {"clip_l": _load_text_model(CLIPTextModel, self.HIDDEN["clip_l"], clip_l_file),
                       "clip_g": _load_text_model(CLIPTextModelWithProjection, self.HIDDEN["clip_g"], clip_g_file)}

    def token_ids(self, part: str, texts: list[str]) -> torch.Tensor:
        return self.tokenizers[part](texts, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            l_out = self.models["clip_l"](input_ids=self.token_ids("clip_l", texts), output_hidden_states=True)
            g_out = self.models["clip_g"](input_ids=self.token_ids("clip_g", texts), output_hidden_states=True)
        return torch.cat([l_out.hidden_states[-2], g_out.hidden_states[-2]], dim=-1), g_out.text_embeds


def _load_text_model(model_class, hidden: dict, path):
    """A transformers CLIP text model of ``hidden``'s widths, as deep as the file, holding its weights."""
    import re

    from safetensors.torch import load_file
    from transformers import CLIPTextConfig

    state = {k: v.float() for k, v in load_file(str(path)).items()}
    layers = 1 + max(int(m.group(1)) for m in map(re.compile(r"text_model\.encoder\.layers\.(\d+)\.").match, state) if m)
    config = CLIPTextConfig(vocab_size=49408, num_hidden_layers=layers, max_position_embeddings=77, layer_norm_eps=1e-5,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1, **hidden)
    model = model_class(config).eval()
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}  # transformers 5's CLIPTextModel
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
