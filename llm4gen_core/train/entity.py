"""Entity-guided regularisation (--entity-loss-weight): OUR READING of the AAAI version.

The paper says it penalises a mismatch between the cross-attention maps of entities and their
attributes; its formula is not public. We use the form SynGen (arXiv 2306.08877) applies at
inference: for each (attribute, entity) pair of a caption, e.g. ("red", "apple"), take the UNet's
cross-attention to each word's CLIP tokens, averaged over heads and summed over the word's
sub-tokens, normalise each over the pixels to a distribution P (attribute) and Q (entity), and add

    L_entity = mean over pairs and cross-attention layers of  0.5 * (KL(P || Q) + KL(Q || P))

to the denoising loss, times the weight. Only the CLIP part of the context (its first 77 tokens)
is used: that is where each word has a position. Pairs come from the data ("pairs" in
metadata.jsonl or a shard's json) or from spaCy's English parser (adjectival modifiers of nouns).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import LLM4GENError

EPS = 1e-8


class AttentionRecorder:
    """Keeps, during one forward pass, the cross-attention probabilities of chosen context tokens."""

    def __init__(self):
        self.positions: torch.Tensor | None = None   # [B, K] token indices to keep, -1 for none
        self.maps: list[torch.Tensor] = []            # per layer: [B, pixels, K]

    def install(self, unet: torch.nn.Module) -> int:
        """Route every cross-attention layer (attn2) of ``unet`` through the recorder."""
        from diffusers.models.attention_processor import AttnProcessor

        count = 0
        for name, module in unet.named_modules():
            if name.endswith("attn2") and hasattr(module, "get_attention_scores"):
                module.set_processor(AttnProcessor())  # the processor that computes the probabilities
                original = module.get_attention_scores
                module.get_attention_scores = self._wrap(original, module)
                count += 1
        if not count:
            raise LLM4GENError("--entity-loss-weight: this UNet has no cross-attention layers (attn2) to regularise")
        return count

    def _wrap(self, original, module):
        def scores(query, key, attention_mask=None):
            probs = original(query, key, attention_mask)
            if self.positions is not None:
                batch = self.positions.shape[0]
                per_head = probs.reshape(batch, module.heads, *probs.shape[1:]).mean(dim=1)   # [B, pixels, T]
                index = self.positions.clamp(min=0)[:, None, :].expand(-1, per_head.shape[1], -1)
                self.maps.append(per_head.gather(2, index))
            return probs
        return scores

    def begin(self, positions: torch.Tensor | None) -> None:
        self.positions, self.maps = positions, []

    def end(self) -> list[torch.Tensor]:
        maps, self.positions, self.maps = self.maps, None, []
        return maps


def word_positions(tokenizer, caption: str, word: str, max_tokens: int) -> list[int]:
    """Positions of ``word``'s sub-tokens in CLIP's tokenization of ``caption`` (start token = 0)."""
    ids = tokenizer(caption, truncation=True, max_length=max_tokens).input_ids
    piece = tokenizer(word, add_special_tokens=False).input_ids
    for start in range(1, len(ids) - len(piece) + 1):
        if ids[start:start + len(piece)] == piece:
            return list(range(start, start + len(piece)))
    return []


def pair_layout(tokenizer, captions: Sequence[str], pairs: Sequence[Sequence[tuple[str, str]]], max_tokens: int):
    """(positions [B, K], groups): for each sample, the token positions to record and, per pair, which
    columns of the recording belong to the attribute and to the entity. Pairs whose words are not
    in the caption's first ``max_tokens`` tokens are left out."""
    columns, groups = [], []
    for caption, sample_pairs in zip(captions, pairs):
        cols: list[int] = []
        sample_groups = []
        for attribute, entity in sample_pairs:
            a, e = (word_positions(tokenizer, caption, w, max_tokens) for w in (attribute, entity))
            if a and e:
                sample_groups.append((list(range(len(cols), len(cols) + len(a))),
                                      list(range(len(cols) + len(a), len(cols) + len(a) + len(e)))))
                cols += a + e
        columns.append(cols)
        groups.append(sample_groups)
    width = max((len(c) for c in columns), default=0)
    if width == 0:
        return None, groups
    positions = torch.full((len(columns), width), -1, dtype=torch.long)
    for row, cols in enumerate(columns):
        positions[row, : len(cols)] = torch.tensor(cols, dtype=torch.long)
    return positions, groups


def symmetric_kl(maps: list[torch.Tensor], groups) -> torch.Tensor | None:
    """The mean symmetric KL between attribute and entity maps over pairs and layers (None: no pair)."""
    terms = []
    for layer in maps:
        for row, sample_groups in enumerate(groups):
            for attribute_cols, entity_cols in sample_groups:
                p = layer[row][:, attribute_cols].sum(-1).float()
                q = layer[row][:, entity_cols].sum(-1).float()
                p, q = p / (p.sum() + EPS) + EPS, q / (q.sum() + EPS) + EPS
                terms.append(0.5 * ((p * (p / q).log()).sum() + (q * (q / p).log()).sum()))
    return torch.stack(terms).mean() if terms else None


class SpacyPairs:
    """Adjective-noun pairs from a spaCy English pipeline, for data that carries none: each
    adjectival modifier (dependency ``amod``) with the noun it modifies (its head, tagged NOUN or
    PROPN). ``model`` is what ``spacy.load`` takes: a package name or a pipeline folder."""

    def __init__(self, model: str = "en_core_web_sm"):
        try:
            import spacy
        except ImportError:
            raise LLM4GENError("--entity-pairs spacy needs spaCy and an English pipeline: "
                               f"pip install spacy && python -m spacy download {model}") from None
        try:
            self.nlp = spacy.load(model)
        except OSError as exc:  # spaCy's "can't find model" is an OSError (E050)
            raise LLM4GENError(f"--entity-pairs spacy: no spaCy pipeline {model!r} (install it with "
                               f"python -m spacy download {model}, or give --spacy-model a pipeline "
                               f"folder): {exc}") from None
        missing = {"parser", "tagger/morphologizer"} - self._parts()
        if missing:
            raise LLM4GENError(f"--entity-pairs spacy: the pipeline {model!r} has no {' or '.join(sorted(missing))}; "
                               "adjective-noun pairs need dependencies and part-of-speech tags")

    def _parts(self) -> set[str]:
        names = set(self.nlp.pipe_names)
        parts = {"parser"} if "parser" in names else set()
        if names & {"tagger", "morphologizer", "attribute_ruler"}:
            parts.add("tagger/morphologizer")
        return parts

    def __call__(self, caption: str) -> list[tuple[str, str]]:
        doc = self.nlp(caption)
        return [(t.text, t.head.text) for t in doc if t.dep_ == "amod" and t.head.pos_ in ("NOUN", "PROPN")]
