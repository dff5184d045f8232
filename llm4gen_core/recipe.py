"""How prompts were turned into LLM features for an adapter: the LLM recipe.

An adapter only works with features encoded the way it was trained: the same kind of LLM, the
same prefix before the prompt, the same sequence length, hidden layer and prompt template. The
trainer writes this recipe into the adapter file's metadata (``llm4gen.llm.*`` keys); the nodes
read it back and encode accordingly, so a user cannot encode differently from training by
mistake. The release's ``projector.pth`` carries no metadata: its recipe is :data:`RELEASE`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import LLM4GENError

META_PREFIX = "llm4gen.llm."
KINDS = ("t5-encoder", "decoder")
TEMPLATES = ("plain", "chat")


@dataclass(frozen=True)
class LLMRecipe:
    kind: str = "t5-encoder"   # "t5-encoder" (RankGen, T5) or "decoder" (Llama, Qwen, ...)
    prefix: str = "pre "        # put before every prompt (RankGen's prefix marker)
    max_tokens: int = 256       # sequence length: truncate or pad to it, padding kept
    hidden_layer: int = -1      # decoders: which hidden state (-1: last, after the final norm)
    template: str = "plain"     # decoders: "plain" prompt or wrapped in the chat template
    llm_name: str = ""          # the LLM's folder/file name at training time (informative only)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise LLM4GENError(f"LLM recipe: kind must be one of {KINDS}, got {self.kind!r}")
        if self.template not in TEMPLATES:
            raise LLM4GENError(f"LLM recipe: template must be one of {TEMPLATES}, got {self.template!r}")
        for name in ("max_tokens", "hidden_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise LLM4GENError(f"LLM recipe: {name} must be an integer, got {value!r}")
        if self.max_tokens < 1:
            raise LLM4GENError(f"LLM recipe: max_tokens must be positive, got {self.max_tokens}")

    def to_metadata(self) -> dict[str, str]:
        return {META_PREFIX + k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> LLMRecipe | None:
        """The recipe stored in a file's metadata, or None when the file has none (the release)."""
        if not any(k.startswith(META_PREFIX) for k in metadata):
            return None
        values = {}
        for f in fields(cls):
            raw = metadata.get(META_PREFIX + f.name)
            if raw is None:
                continue
            if f.type == "int":
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise LLM4GENError(f"metadata {META_PREFIX}{f.name} is not an integer: {raw!r}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def differences(self, other: LLMRecipe) -> list[str]:
        """What encodes differently between two recipes (the name is not compared)."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(self) if f.name != "llm_name" and getattr(self, f.name) != getattr(other, f.name)]


RELEASE = LLMRecipe()
