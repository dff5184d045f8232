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
