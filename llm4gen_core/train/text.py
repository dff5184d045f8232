"""Captions to UNet context, exactly as ComfyUI's CLIP and the nodes compute it at inference.

SD1.x (one CLIP):
    clip = CLIP(caption).last_hidden_state               # [B, 77, 768]: start, text, end, padded with end
SDXL (our design; ComfyUI's SDXL CLIP):
    clip = concat(CLIP-L(caption).hidden_states[-2],     # [B, 77, 768], no final norm
                  bigG(caption).hidden_states[-2])        # [B, 77, 1280], no final norm, padded with 0
    pooled = bigG(caption).text_embeds                    # [B, 1280], for SDXL's added conditioning
Both:
    llm  = LLM.encode(caption, recipe).hidden_states      # [B, Tl, Dl]: prefix, padding kept
    ctx  = CAM(clip, llm)                                 # [B, 77 + depth * Tl, Dc]

Classifier-free-guidance dropout replaces a caption by "" on every side at once (CLIP, pooled,
LLM): the same "" that the nodes send through CLIP, the LLM and the CAM as the negative prompt.
The frozen encoders run without gradients; only the CAM (and the UNet) learn.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..llm import LLMEncoder
from ..recipe import LLMRecipe


@dataclass
class TextFeatures:
    clip: torch.Tensor                  # [B, 77, Dc]
    llm: torch.Tensor                   # [B, Tl, Dl]
    pooled: torch.Tensor | None = None  # [B, Dp] (SDXL) or None

    def rows(self, index) -> TextFeatures:
        pick = (lambda t: None if t is None else t[index])
        return TextFeatures(pick(self.clip), pick(self.llm), pick(self.pooled))

    def to(self, device, dtype) -> TextFeatures:
        move = (lambda t: None if t is None else t.to(device, dtype))
        return TextFeatures(move(self.clip), move(self.llm), move(self.pooled))


class FrozenTextEncoders:
    """CLIP (one, or SDXL's two) and the LLM, frozen, giving the features the CAM fuses."""

    def __init__(self, base, llm: LLMEncoder, recipe: LLMRecipe):
        self.tokenizer, self.text_encoder = base.tokenizer, base.text_encoder
        self.tokenizer_2, self.text_encoder_2 = base.tokenizer_2, base.text_encoder_2
        self.llm, self.recipe = llm, recipe
        self.clip_tokens = int(self.text_encoder.config.max_position_embeddings)
        self._empty: TextFeatures | None = None

    def _ids(self, tokenizer, texts: Sequence[str], encoder) -> torch.Tensor:
        ids = tokenizer(list(texts), padding="max_length", max_length=self.clip_tokens, truncation=True,
                        return_tensors="pt").input_ids
        return ids.to(encoder.get_input_embeddings().weight.device)

    @torch.no_grad()
    def clip_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-token CLIP features, pooled or None), as ComfyUI's CLIP gives them (clip skip -1)."""
        if self.text_encoder_2 is None:
            return self.text_encoder(self._ids(self.tokenizer, texts, self.text_encoder)).last_hidden_state, None
        small = self.text_encoder(self._ids(self.tokenizer, texts, self.text_encoder), output_hidden_states=True)
        big = self.text_encoder_2(self._ids(self.tokenizer_2, texts, self.text_encoder_2), output_hidden_states=True)
        return torch.cat([small.hidden_states[-2], big.hidden_states[-2]], dim=-1), big.text_embeds

    @torch.no_grad()
    def llm_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.llm.encode(list(texts), recipe=self.recipe).hidden_states

    def features(self, texts: Sequence[str]) -> TextFeatures:
        clip, pooled = self.clip_features(texts)
        return TextFeatures(clip, self.llm_features(texts), pooled)

    def empty(self) -> TextFeatures:
        """Features of the empty caption, batch 1: computed once, used for dropped captions."""
        if self._empty is None:
            self._empty = self.features([""])
        return self._empty


def drop_captions(features: TextFeatures, drop: torch.Tensor, empty: TextFeatures) -> TextFeatures:
    """Rows where ``drop`` is True get the empty caption's features on every side."""
    if not bool(drop.any()):
        return features

    def swap(values, blank):
        if values is None:
            return None
        keep = (~drop).to(values.device).view(-1, *([1] * (values.ndim - 1)))
        return torch.where(keep, values, blank.to(values.device, values.dtype).expand_as(values))

    return TextFeatures(swap(features.clip, empty.clip), swap(features.llm, empty.llm),
                        swap(features.pooled, empty.pooled))
