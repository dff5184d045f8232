"""Captions to UNet context, exactly as the nodes compute it at inference.

    clip = CLIP(caption).last_hidden_state               # [B, 77, Dc]: start, text, end, padded with end
    llm  = LLM.encode(caption, recipe).hidden_states      # [B, Tl, Dl]: prefix, padding kept
    ctx  = CAM(clip, llm)                                 # [B, 77 + depth * Tl, Dc]

Classifier-free-guidance dropout replaces a caption by "" on both sides at once: the same ""
that the nodes send through CLIP, the LLM and the CAM as the negative prompt. The frozen encoders
run without gradients; only the CAM (and the UNet) learn.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..llm import LLMEncoder
from ..recipe import LLMRecipe


class FrozenTextEncoders:
    """CLIP and the LLM, frozen, giving the features the CAM fuses."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, llm: LLMEncoder, recipe: LLMRecipe):
        self.tokenizer, self.text_encoder, self.llm, self.recipe = tokenizer, text_encoder, llm, recipe
        self.clip_tokens = int(text_encoder.config.max_position_embeddings)
        self._empty: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def clip_features(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP's last hidden state (after the final layer norm), [B, 77, Dc], as ComfyUI gives it
        with clip skip -1: the ids are start, text, end, then the end token as padding."""
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.clip_tokens, truncation=True,
                             return_tensors="pt").input_ids
        device = self.text_encoder.get_input_embeddings().weight.device
        return self.text_encoder(ids.to(device)).last_hidden_state

    @torch.no_grad()
    def llm_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.llm.encode(list(texts), recipe=self.recipe).hidden_states

    def features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip_features(texts), self.llm_features(texts)

    def empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the empty caption, [1, ...] each: computed once, used for dropped captions."""
        if self._empty is None:
            self._empty = self.features([""])
        return self._empty


def drop_captions(clip: torch.Tensor, llm: torch.Tensor, drop: torch.Tensor,
                  empty: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows where ``drop`` is True get the empty caption's features on both sides."""
    if not bool(drop.any()):
        return clip, llm
    keep = (~drop).to(clip.device)
    empty_clip, empty_llm = (e.to(t.device, t.dtype) for e, t in zip(empty, (clip, llm)))
    clip = torch.where(keep[:, None, None], clip, empty_clip.expand_as(clip))
    llm = torch.where(keep.to(llm.device)[:, None, None], llm, empty_llm.expand_as(llm))
    return clip, llm
