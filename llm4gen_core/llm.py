"""The LLM side of LLM4GEN: load a text encoder from local files, turn prompts into token features.

    from llm4gen_core import load_llm
    llm = load_llm("models/text_encoders/rankgen-t5-xl-all", tokenizer_path="comfy/.../t5_tokenizer")
    out = llm.encode(["a long, dense prompt ..."])      # out.hidden_states: [B, 256, 2048]

For the release (RankGen's T5-XL encoder) this is the release's rule exactly (docs/reference.md,
section 1): each prompt gets the prefix ``"pre "``, is tokenized with ``</s>``, cut to its first 256
ids (a longer prompt loses ``</s>``) or right-padded with id 0, and the encoder's last hidden state
is returned at all 256 positions, padding included, with the attention mask that was passed to the
encoder.

Decoder-only LLMs (Llama, Qwen2/3, Gemma, Mistral folders) go the same way for adapters trained on
them: their own tokenizer (plain, or the chat template around the prompt), right padding, and the
hidden state of a chosen layer.

An adapter records how its LLM features were made (:class:`~.recipe.LLMRecipe`: prefix, length,
hidden layer, template). ``llm.encode(texts, recipe=adapter_recipe)`` encodes exactly that way for
this call, whatever the encoder was loaded with; ``llm.recipe(max_tokens)`` describes its own way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LLM4GENError, LLMLoadError
from .llm_loading import (
    DECODER_TYPES, T5_TYPES, decoder_layers, load_decoder, load_t5_encoder, model_type_of, resolve_device,
    resolve_dtype,
)
from .recipe import LLMRecipe
from .tokenization import HFTokenizer, find_t5_tokenizer_file, has_hf_tokenizer, load_t5_tokenizer
from .t5_padding import run_once_per_distinct_position

T5_PREFIX = "pre "  # RankGen's marker for a prefix (as opposed to "suffi " for a suffix)
BATCH_CHUNK = 8     # prompts per encoder call: bounds activation memory for long prompt lists


@dataclass
class EncodedText:
    """LLM token features of a batch of prompts, padded/truncated to ``max_tokens``."""

    hidden_states: torch.Tensor   # [B, max_tokens, D], model's device and dtype, padding positions kept
    attention_mask: torch.Tensor  # [B, max_tokens] long: 1 on tokens, 0 on padding
    input_ids: torch.Tensor       # [B, max_tokens] long
    token_counts: list[int]       # tokens of each prompt before truncation/padding (incl. </s>)
    truncated: list[bool]         # whether a prompt had more than max_tokens tokens
    recipe: LLMRecipe             # how they were encoded (prefix, max_tokens, hidden layer, template)


class LLMEncoder:
    """A loaded LLM text encoder and its tokenizer. ``model`` may be moved between devices (and
    wrapped) by the caller: :meth:`encode` runs wherever the module is at call time."""

    def __init__(self, model: torch.nn.Module, tokenizer, kind: str, prefix: str, hidden_layer: int, source: str):
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.prefix, self.hidden_layer, self.source = prefix, hidden_layer, source
        config = model.config
        self.hidden_size = int(config.d_model if kind == "t5-encoder" else config.hidden_size)

    def __repr__(self) -> str:
        held = "" if self.weights == str(self.dtype).removeprefix("torch.") else f" ({self.weights} weights)"
        return f"LLMEncoder({self.kind}, D={self.hidden_size}, {self.dtype}{held}, {self.device}, from {self.source})"

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (T5 in fp16 keeps its feed-forward output projections in fp32; scaled fp8
        weights are stored in fp8 and computed in this dtype)."""
        return getattr(self.model, "llm4gen_compute_dtype", None) or self.model.get_input_embeddings().weight.dtype

    @property
    def weights(self) -> str:
        """How the weights are held: their dtype, or "fp8 e4m3fn scaled"."""
        return getattr(self.model, "llm4gen_weights", None) or str(self.dtype).removeprefix("torch.")

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.encoder.block if self.kind == "t5-encoder" else decoder_layers(self.model)

    @property
    def template(self) -> str:
        """How prompts are wrapped: "plain", or "chat" (a decoder's chat template)."""
        return getattr(self.tokenizer, "template", "plain")

    def recipe(self, max_tokens: int = 256) -> LLMRecipe:
        """How this encoder encodes at ``max_tokens``: what an adapter trained on its features records."""
        _check_max_tokens(max_tokens)
        return LLMRecipe(kind=self.kind, prefix=self.prefix, max_tokens=max_tokens, hidden_layer=self.hidden_layer,
                         template=self.template, llm_name=Path(self.source).name)

    def _resolve(self, recipe: LLMRecipe | None, max_tokens: int) -> LLMRecipe:
        """The recipe one call encodes with: the given one (checked against this LLM), else our own."""
        if recipe is None:
            return self.recipe(max_tokens)
        if not isinstance(recipe, LLMRecipe):
            raise LLM4GENError(f"recipe must be an LLMRecipe, got {type(recipe).__name__}")
        if recipe.kind != self.kind:
            trained = recipe.llm_name or "an LLM"
            raise LLM4GENError(
                f"the adapter was trained with {trained} (a {KIND_NAMES[recipe.kind]}), but the loaded LLM is "
                f"{Path(self.source).name} (a {KIND_NAMES[self.kind]}): load {trained} in Load LLM (LLM4GEN), "
                "or use an adapter trained on this LLM"
            )
        if recipe.template != "plain":
            if not hasattr(self.tokenizer, "check_template"):
                raise LLM4GENError(f"the adapter's recipe wraps prompts in the {recipe.template!r} template, but "
                                   f"{Path(self.source).name}'s tokenizer has none")
            self.tokenizer.check_template(recipe.template)
        n_states = len(self.layers) + 1  # embeddings + one per layer
        if not -n_states <= recipe.hidden_layer < n_states:
            raise LLM4GENError(
                f"the adapter's recipe takes hidden state {recipe.hidden_layer}, but {Path(self.source).name} has "
                f"hidden states 0..{n_states - 1} (or -{n_states}..-1 from the end): it was trained on another LLM "
                f"({recipe.llm_name or 'unnamed'})"
            )
        return recipe

    def tokenize(self, texts: str | Sequence[str], max_tokens: int = 256, *, recipe: LLMRecipe | None = None):
        """(input_ids, attention_mask, token_counts, truncated) for the prompts, on the CPU. With a
        ``recipe``, its prefix, template and max_tokens are used instead of this encoder's."""
        texts = _as_prompt_list(texts)
        _check_max_tokens(max_tokens)
        recipe = self._resolve(recipe, max_tokens)
        return self._tokenize(texts, recipe)

    def _tokenize(self, texts: list[str], recipe: LLMRecipe):
        max_tokens = recipe.max_tokens
        pad_id = self.tokenizer.pad_id if self.kind == "decoder" else 0  # the release pads T5 with 0
        ids = torch.full((len(texts), max_tokens), pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_tokens), dtype=torch.long)
        counts = []
        for row, text in enumerate(texts):
            if recipe.template == self.template:
                tokens = self.tokenizer.tokenize(recipe.prefix + text)
            else:
                tokens = self.tokenizer.tokenize(recipe.prefix + text, template=recipe.template)
            counts.append(len(tokens))
            kept = tokens[:max_tokens]
            ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
            mask[row, : len(kept)] = 1
        return ids, mask, counts, [n > max_tokens for n in counts]

    def encode(self, texts: str | Sequence[str], max_tokens: int = 256,
               step_callback: Callable[[int, int], None] | None = None, *,
               recipe: LLMRecipe | None = None, device: torch.device | str | None = None) -> EncodedText:
        """Features of ``texts`` ([B, max_tokens, D]). ``step_callback(done, total)`` is called after
        each transformer layer of each batch chunk; an exception it raises aborts the encode.

        ``recipe``: encode exactly as it says (its prefix, max_tokens, hidden layer and template win
        over ``max_tokens`` and this encoder's own settings, for this call only; nothing is changed
        on the encoder). It must be of this LLM's kind. The result's ``recipe`` is what was used.

        ``device``: where the ids go and the features come out; default: where the input embedding's
        weight is. A host that leaves some layers on another device and moves their weights per
        layer (ComfyUI's low-VRAM loading) passes its compute device here."""
        texts = _as_prompt_list(texts)
        _check_max_tokens(max_tokens)
        recipe = self._resolve(recipe, max_tokens)
        input_ids, attention_mask, counts, truncated = self._tokenize(texts, recipe)
        device = self.device if device is None else torch.device(device)
        chunks = list(zip(input_ids.split(BATCH_CHUNK), attention_mask.split(BATCH_CHUNK)))
        hooks = []
        if step_callback is not None:
            total, done = len(chunks) * len(self.layers), [0]

            def report(*_):
                done[0] += 1
                step_callback(done[0], total)

            hooks = [layer.register_forward_hook(report) for layer in self.layers]
        try:
            with torch.no_grad():
                outputs = [self._forward(ids.to(device), mask.to(device), recipe.hidden_layer)
                           for ids, mask in chunks]
        finally:
            for hook in hooks:
                hook.remove()
        hidden = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if not torch.isfinite(hidden).all():  # NaNs would reach the UNet as a black image, silently
            raise LLM4GENError(f"{self.source}: the LLM gave NaN or infinite features (its weights overflow in "
                               f"{self.dtype}); load it in fp32 or bf16")
        return EncodedText(hidden, attention_mask.to(device), input_ids.to(device), counts, truncated, recipe)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden_layer: int) -> torch.Tensor:
        def forward(ids, mask):
            if hidden_layer == -1:
                return self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[hidden_layer]

        if self.kind == "t5-encoder":  # pad positions with equal outputs computed once (t5_padding)
            return run_once_per_distinct_position(self.model, input_ids, attention_mask, forward)
        return forward(input_ids, attention_mask)


KIND_NAMES = {"t5-encoder": "T5 encoder", "decoder": "decoder-only LLM"}  # recipe kinds, for messages


def _check_max_tokens(max_tokens) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise LLM4GENError(f"max_tokens must be a positive integer, got {max_tokens!r}")


def load_llm(path, tokenizer_path=None, dtype=None, device=None, *, hidden_layer: int = -1,
             template: str = "plain", prefix: str | None = None, mmap: bool = True) -> LLMEncoder:
    """Load an LLM text encoder from local files.

    path: a model folder (HF layout, or RankGen's with weights under ``t5_encoder.``) or a single
        ``.safetensors``/``.bin``/``.pth`` file holding a T5 encoder state dict.
    tokenizer_path: a tokenizer folder or file, used when the model folder has no tokenizer of its
        own (a tokenizer in the model's folder wins). Required for a single weights file.
    dtype: the compute dtype: None/"auto" (on CUDA bf16 where supported, else fp16; on a CPU bf16
        where it has native bf16 matrix units, AVX512-BF16 or AMX, else fp32: see :mod:`.dtypes`),
        "fp32", "bf16", "fp16" or a torch dtype. A scaled-fp8 file keeps its weights in fp8 and
        computes in this dtype. device: None (CUDA if available, else CPU) or a torch device.
    hidden_layer / template ("plain" | "chat"): which hidden state, and how the prompt is wrapped,
        for decoder-only LLMs; T5 encoders ignore them and give their last hidden state (an
        adapter's recipe passed to ``encode`` may still ask a T5 for another layer).
        hidden_layer -1 is the last (after the final norm), k is ``hidden_states[k]`` (0: the
        embeddings). prefix: put before every prompt; None = "pre " for T5, "" for decoders.
    mmap: a T5 weight stored in the compute dtype stays where it lies in the file's (private,
        copy-on-write) mapping instead of being copied; the file must then not be overwritten in
        place while the model is alive (rename a new file over it instead). False copies everything.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise LLMLoadError(f"{path}: no such file or folder (put the LLM under models/text_encoders or models/LLM)")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model_type, config = model_type_of(path) if path.is_dir() else (None, {})
    if model_type in DECODER_TYPES:
        return _load_decoder(path, tokenizer_path, dtype, device, hidden_layer, template, prefix)
    if path.is_dir() and model_type is not None and model_type not in T5_TYPES and not _custom_config(config):
        raise LLMLoadError(
            f"{path}: unsupported architecture {model_type!r} (config.json); supported: T5 encoders "
            f"(RankGen, t5, mt5) and decoder-only LLMs ({', '.join(DECODER_TYPES)})"
        )
    tokenizer = load_t5_tokenizer(_t5_tokenizer_source(path, tokenizer_path))
    model = load_t5_encoder(path, dtype, config, mmap=mmap).to(device)
    _check_vocab_fits(tokenizer, model, path)
    return LLMEncoder(model, tokenizer, "t5-encoder", T5_PREFIX if prefix is None else prefix, -1, str(path))


def needs_tokenizer_path(path) -> bool:
    """Whether ``load_llm(path)`` needs ``tokenizer_path`` to get a T5 tokenizer: a T5 encoder (folder or
    single file) with no T5 tokenizer file of its own (spiece.model, tokenizer.model,
    sentencepiece.model, tokenizer.json; a tokenizer_config.json alone is none). False for a
    decoder-only LLM, which needs its own tokenizer. The rule load_llm itself follows, for callers
    holding a fallback T5 tokenizer (the Load LLM node: ComfyUI's)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return True
    model_type, _ = model_type_of(path)
    return model_type not in DECODER_TYPES and find_t5_tokenizer_file(path) is None


def _load_decoder(path, tokenizer_path, dtype, device, hidden_layer, template, prefix) -> LLMEncoder:
    if has_hf_tokenizer(path):
        tokenizer_source = path
    elif tokenizer_path is not None:
        tokenizer_source = Path(tokenizer_path)
    else:
        raise LLMLoadError(f"{path}: no tokenizer in the model folder and no tokenizer_path given")
    tokenizer = HFTokenizer(tokenizer_source, template)
    model = load_decoder(path, dtype).to(device)
    n_states = len(decoder_layers(model)) + 1  # embeddings + one per layer
    if isinstance(hidden_layer, bool) or not isinstance(hidden_layer, int) or not -n_states <= hidden_layer < n_states:
        raise LLMLoadError(f"{path}: hidden_layer {hidden_layer!r} out of range: this model has hidden states "
                           f"0..{n_states - 1} (or -{n_states}..-1 from the end)")
    _check_vocab_fits(tokenizer, model, path)
    return LLMEncoder(model, tokenizer, "decoder", "" if prefix is None else prefix, hidden_layer, str(path))


def _custom_config(config: dict) -> bool:
    """RankGen's own config.json (custom code we never run): weights decide whether it is a T5."""
    return bool(config.get("auto_map")) or "model_size" in config


def _t5_tokenizer_source(path: Path, tokenizer_path) -> Path:
    if path.is_dir() and find_t5_tokenizer_file(path) is not None:
        return path
    if tokenizer_path is not None:
        return Path(tokenizer_path).expanduser()
    where = "this folder has none" if path.is_dir() else "a single weights file carries none"
    raise LLMLoadError(
        f"{path}: no tokenizer ({where}); pass tokenizer_path: T5's tokenizer folder (spiece.model or "
        "tokenizer.json), e.g. ComfyUI's comfy/text_encoders/t5_tokenizer"
    )


def _check_vocab_fits(tokenizer, model, path: Path) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > rows:
        raise LLMLoadError(
            f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but the model at {path} embeds only "
            f"{rows}: they do not belong together (use the tokenizer the model was trained with)"
        )


def _as_prompt_list(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
        raise LLM4GENError(f"texts must be a string or a non-empty list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. "\\ud800" in a JSON prompt
            raise LLM4GENError(f"prompt {i} is not valid Unicode: {exc.object[exc.start:exc.end]!r} at character "
                               f"{exc.start} is half of a surrogate pair; remove it") from None
    return list(texts)
