"""Tiny random LLM text encoders and tokenizers, saved in every layout ``load_llm`` reads.

Everything is built with transformers / sentencepiece / tokenizers directly (never through
``llm4gen_core``), small (d_model 32) and deterministic, so tests can compare the pack's output with
a reference they compute themselves. Each builder returns the path it wrote. The T5 encoder and the
sentencepiece tokenizer come from ``scripts.smoke_models`` (the runner's smoke mode and the
benchmarks use them too); the rest is the tests' own.

    tok = tiny_spm_tokenizer(tmp / "tok")                 # folder with a T5-style spiece.model
    model = tiny_t5_encoder()                             # transformers.T5EncoderModel, random
    folder = tiny_t5_rankgen_folder(tmp / "rankgen", model)   # RankGen layout (t5_encoder.* keys)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# The T5 encoder and sentencepiece builders are shared with the headless runner's smoke mode and
# the benchmarks.
from scripts.smoke_models import (  # noqa: F401  (re-exported)
    T5_TINY, t5_state, tiny_corpus, tiny_spm_model, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_rankgen_folder,
)

T5_VOCAB = 512  # >= tiny spm pieces + 100 sentinels, like T5's 32128 >= 32100


def tiny_t5_tokenizer_json(folder, spm_folder) -> Path:
    """A tokenizer.json-only folder (as ComfyUI ships T5's), converted from ``spm_folder``'s
    spiece.model by transformers' own converter."""
    from transformers import T5Tokenizer

    folder = Path(folder)
    T5Tokenizer.from_pretrained(str(spm_folder), extra_ids=100, local_files_only=True).save_pretrained(str(folder))
    for extra in folder.iterdir():
        if extra.name not in ("tokenizer.json", "tokenizer_config.json"):
            extra.unlink()
    return folder


def tiny_t5_hf_folder(folder, model, tokenizer_from=None, max_shard_size=None) -> Path:
    """An HF T5 encoder folder (``save_pretrained``: config.json + safetensors, sharded if asked)."""
    folder = Path(folder)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), **kwargs)
    if tokenizer_from is not None:
        (folder / "spiece.model").write_bytes((Path(tokenizer_from) / "spiece.model").read_bytes())
    return folder


def tiny_t5_safetensors(path, model, key_prefix: str = "") -> Path:
    """A single .safetensors file with a T5 encoder state dict (as ComfyUI's t5 files are)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = t5_state(model)
    del state["encoder.embed_tokens.weight"]
    save_file({key_prefix + k: v for k, v in state.items()}, str(path))
    return path


def in_file_mapping(tensor: torch.Tensor, path) -> bool:
    """Whether all of ``tensor``'s bytes lie in this process's mapping of the file ``path`` (Linux:
    /proc/self/maps), i.e. it was loaded in place rather than copied."""
    from llm4gen_core.weight_stream import _mappings_of

    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    return any(lo <= start and end <= hi for lo, hi in _mappings_of(Path(path)))


# ---- decoder-only ---------------------------------------------------------------------------

CHAT_TEMPLATE = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"


def tiny_bpe_tokenizer(folder) -> Path:
    """A byte-level BPE tokenizer (tokenizer.json + config with a chat template), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(tiny_corpus(), trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(folder))
    return Path(folder)


def tiny_decoder(family: str = "llama", seed: int = 0, vocab_size: int = 512):
    """A random causal LM of the family (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text), in eval mode."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=3)
    classes = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {"sliding_window": None}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {"head_dim": 8}),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 8}),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 8, "query_pre_attn_scalar": 8}),
        "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {"head_dim": 8, "query_pre_attn_scalar": 8}),
    }
    config_cls, model_cls, extra = classes[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**common, **extra)).eval()


def tiny_decoder_folder(folder, model, with_tokenizer: bool = True) -> Path:
    """An HF causal-LM folder: config.json, model.safetensors and (optionally) the tokenizer."""
    folder = Path(folder)
    model.save_pretrained(str(folder))
    if with_tokenizer:
        tiny_bpe_tokenizer(folder)
    return folder


def tiny_llama_folder(folder, seed: int = 0) -> Path:
    """A tiny Llama folder with its tokenizer (chat template included), ready for ``load_llm``."""
    return tiny_decoder_folder(folder, tiny_decoder("llama", seed))


# ---- larger encoders (memory tests) ---------------------------------------------------------------

def sized_t5_encoder(seed: int = 0, vocab_size: int = 32128, **dims):
    """A random T5 v1.1-style encoder of the given dims, built on the meta device and filled in
    place (one copy of its weights, fp32): for tests that need a model of a few hundred MB."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", **dims)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    model.set_input_embeddings(model.shared)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
    return model.eval().requires_grad_(False)
