"""The release's text path written out in the tests, independently of ``llm4gen_core``.

Expected values for unit and host tests come from here, never from the code under test:

- :func:`cam_fusion`: the Cross-Adapter's equations (docs/reference.md, section 3) term by term in
  float64, read from a state dict by the release's key names.
- :func:`release_ids`: the release's tokenizer side (docs/reference.md, section 1): ``"pre "`` +
  prompt, ids with ``</s>``, cut to the first ``max_tokens`` or padded with id 0, and the mask.
- :func:`comfy_t5_ids`: ComfyUI's bundled T5 ``tokenizer.json`` applied by the ``tokenizers``
  library (HF's Rust implementation; it appends ``</s>`` itself), for plain prompts.
- :func:`rankgen_t5_encoder`: a RankGen-layout folder's weights loaded into transformers'
  ``T5EncoderModel`` directly (``t5_encoder.`` prefix stripped).
- :func:`llm_features`: that encoder's last hidden state at all positions, padding included.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

PREFIX = "pre "
MAX_TOKENS = 256
PAD_ID = 0


def cam_fusion(state: dict[str, torch.Tensor], clip: torch.Tensor, llm: torch.Tensor, heads: int = 8,
               strength: float = 1.0) -> torch.Tensor:
    """The fused context [B, Tc + depth * Tl, Dc] in float64, with explicit matmuls, softmax and
    layer norms, so a comparison with it measures the module's error alone. A batch of 1 on either
    side is repeated for the other."""
    state = {k: v.double() for k, v in state.items()}
    clip, llm = clip.double(), llm.double()
    if clip.shape[0] != llm.shape[0]:
        batch = max(clip.shape[0], llm.shape[0])
        clip, llm = clip.expand(batch, -1, -1), llm.expand(batch, -1, -1)

    def linear(x, name):
        return x @ state[name + ".weight"].T + state[name + ".bias"]

    def layer_norm(x, name, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * state[name + ".weight"] + state[name + ".bias"]

    def heads_first(x):
        b, t, d = x.shape
        return x.reshape(b, t, heads, d // heads).permute(0, 2, 1, 3)

    c = clip
    depth = len({k.split(".")[1] for k in state})
    for i in range(depth):
        p = f"CrossFusionModule.{i}."
        l = linear(llm, p + "llm_proj")
        q = heads_first(linear(layer_norm(l, p + "kv_norm"), p + "q_proj"))  # queries: the LLM side
        cn = layer_norm(c, p + "q_norm")                                      # q_norm: the CLIP side
        k = heads_first(linear(cn, p + "k_proj"))
        v = heads_first(linear(cn, p + "v_proj"))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        a = (weights @ v).permute(0, 2, 1, 3).reshape(l.shape)
        l = linear(a, p + "out_proj") + l
        h = linear(layer_norm(l, p + "norm"), p + "FFN.0")
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        l = linear(h, p + "FFN.2") + l
        c = torch.cat([c, l], dim=1)
    tc = clip.shape[1]
    return torch.cat([c[:, :tc], c[:, tc:] * strength], dim=1)


def release_ids(tokenize: Callable[[str], list[int]], texts: Sequence[str], max_tokens: int = MAX_TOKENS,
                prefix: str = PREFIX) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, max_tokens] long. ``tokenize(text)`` gives a text's ids
    with ``</s>``; each prompt is prefixed, then cut or padded with id 0."""
    ids = torch.full((len(texts), max_tokens), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(texts), max_tokens), dtype=torch.long)
    for row, text in enumerate(texts):
        kept = tokenize(prefix + text)[:max_tokens]
        ids[row, : len(kept)] = torch.tensor(kept)
        mask[row, : len(kept)] = 1
    return ids, mask


def comfy_t5_ids(tokenizer_folder: str | Path) -> Callable[[str], list[int]]:
    """``text -> ids`` (``</s>`` appended) by the ``tokenizers`` library on ComfyUI's T5
    tokenizer.json. Exact for text without special-token strings."""
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(Path(tokenizer_folder) / "tokenizer.json"))
    return lambda text: rust.encode(text).ids


def rankgen_t5_encoder(folder: str | Path):
    """transformers' ``T5EncoderModel`` holding a RankGen-layout folder's encoder, fp32, eval mode:
    config.json's T5 fields, the ``t5_encoder.*`` tensors of pytorch_model.bin / model.safetensors."""
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    encoder = {k.removeprefix("t5_encoder."): v.float() for k, v in state.items() if k.startswith("t5_encoder.")}
    encoder.setdefault("encoder.embed_tokens.weight", encoder["shared.weight"])
    fields = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
    model = T5EncoderModel(T5Config(**{**fields, "is_encoder_decoder": False, "use_cache": False}))
    model.load_state_dict(encoder, strict=True)
    return model.eval()


def llm_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden state at every position, padding included (the release keeps it)."""
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
