"""Building LLM text encoders from local files, without running any code that came with them.

T5 encoders (the release's RankGen, any HF T5 folder, a bare safetensors file) are built here:
the weights are read with :mod:`.safe_files` (safetensors, or ``torch.load(weights_only=True)``),
the model is made on the meta device and the tensors are assigned into it, so memory holds one
copy of the weights. Decoder-only LLMs go through transformers' Auto classes with
``local_files_only=True`` and never ``trust_remote_code``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import CheckpointError, LLMLoadError
from .safe_files import first_line, listed, read_json, read_tensor_file, sniff_format
from .t5_config import check_shapes, infer_t5_config, looks_like_t5_encoder, t5_encoder_state

T5_TYPES = ("t5", "mt5")
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
# T5's fp16 overflow guard, as transformers applies it (T5PreTrainedModel._keep_in_fp32_modules):
# the feed-forward output projection stays fp32; T5's blocks clamp what overflows in between.
_KEEP_FP32_IN_FP16 = re.compile(r"\.DenseReluDense\.wo\.weight$")

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device) -> torch.device:
    if device is None or device in ("auto", "default"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise LLMLoadError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """``None``/"auto": fp32 on CPU; on CUDA bf16 where the GPU has it, else fp16."""
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise LLMLoadError(f"unsupported dtype {dtype!r}; use 'auto', 'fp32', 'bf16' or 'fp16'")


def model_type_of(folder: Path) -> tuple[str | None, dict]:
    """The folder's config.json model_type (None when there is no config.json)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None, {}
    try:
        config = read_json(config_file)
    except CheckpointError as exc:
        raise LLMLoadError(str(exc)) from None
    return config.get("model_type"), config


# ---- weights ---------------------------------------------------------------------------------

def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: a sharded index, the standard names, or a lone file."""
    for name in _INDEXES:
        if (folder / name).is_file():
            index = read_json(folder / name)
            shards = sorted(set((index.get("weight_map") or {}).values()))
            if not shards:
                raise LLMLoadError(f"{folder / name}: the shard index lists no files")
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise LLMLoadError(f"{folder / name}: shard files missing: {listed(missing)} (was the download complete?)")
            return [folder / s for s in shards]
    for name in _SINGLES:
        if (folder / name).is_file():
            return [folder / name]
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    preferred = [p for p in candidates if p.suffix in (".safetensors", ".sft")] or candidates
    if len(preferred) == 1:
        return preferred
    if not preferred:
        raise LLMLoadError(f"{folder}: no weight files (model.safetensors, pytorch_model.bin or a sharded index) in this folder")
    raise LLMLoadError(f"{folder}: several weight files and no index to say which belong together: {listed(p.name for p in preferred)}")


def read_weights(files: list[Path], dtype: torch.dtype, keep=lambda key: True) -> dict[str, torch.Tensor]:
    """Tensors whose key ``keep`` accepts, cast to ``dtype`` as they are read (one file at a time,
    so a fp32 checkpoint loaded as bf16 never sits in memory whole in fp32)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        tensors = _read_file(file, keep)
        while tensors:  # popped, so each source tensor is freed once cast
            key, tensor = tensors.popitem()
            state[key] = _cast(key, tensor, dtype)
    return state


def _read_file(path: Path, keep) -> dict[str, torch.Tensor]:
    if path.is_file() and sniff_format(path) == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: f.get_tensor(key) for key in f.keys() if keep(key)}
        except Exception as exc:
            raise CheckpointError(path, f"corrupt safetensors file: {first_line(exc)}") from None
    tensors, _ = read_tensor_file(path)
    return {k: v for k, v in tensors.items() if keep(k)}


def _cast(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not tensor.is_floating_point():
        return tensor
    if dtype == torch.float16 and _KEEP_FP32_IN_FP16.search(key):
        return tensor.to(torch.float32)
    return tensor.to(dtype)


def _encoder_only(key: str) -> bool:
    return "decoder." not in key and not key.endswith("lm_head.weight")


# ---- T5 encoders ------------------------------------------------------------------------------

def load_t5_encoder(path: Path, dtype: torch.dtype, config: dict | None = None):
    """A ``transformers.T5EncoderModel`` from a folder or a single weights file.

    ``config`` is the folder's config.json when it is a plain T5/mT5 config: the weights are then
    checked against it; otherwise (RankGen's custom config, a bare file) it is read off the shapes.
    """
    from transformers import T5Config, T5EncoderModel

    files = [path] if path.is_file() else weight_files(path)
    state = read_weights(files, dtype, keep=_encoder_only)
    if not looks_like_t5_encoder(state):
        raise LLMLoadError(
            f"{path}: not a T5 encoder (no encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight); "
            f"found {listed(sorted(state))}"
        )
    state = t5_encoder_state(state, path)
    if config and config.get("model_type") in T5_TYPES:
        t5_config = T5Config.from_dict({k: v for k, v in config.items() if k != "model_type"})
        t5_config.is_encoder_decoder, t5_config.use_cache = False, False
        config_source = path / "config.json"
    else:
        t5_config = infer_t5_config(state, path)
        config_source = "the shapes of its tensors"
    with torch.device("meta"):
        model = T5EncoderModel(t5_config)
    model.set_input_embeddings(model.shared)  # one embedding, as in T5 (encoder.embed_tokens is shared)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    check_shapes(expected, state, path, config_source)
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval().requires_grad_(False)


# ---- decoder-only LLMs ------------------------------------------------------------------------

def load_decoder(folder: Path, dtype: torch.dtype):
    """The base model (no LM head) of a decoder-only LLM folder, through transformers' Auto classes."""
    from transformers import AutoConfig, AutoModel

    weight_files(folder)  # a clear error when there are none, before transformers' own
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the unused LM head; real problems are raised below
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        model, info = AutoModel.from_pretrained(
            str(folder), config=config, **{_dtype_kwarg(): dtype}, local_files_only=True, trust_remote_code=False,
            output_loading_info=True, ignore_mismatched_sizes=True,  # reported below, with our wording
        )
    except Exception as exc:  # corrupt files, missing classes, ...: worded by transformers
        raise LLMLoadError(f"{folder}: cannot load the LLM ({first_line(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = []
    if info.get("mismatched_keys"):
        wrong = [_mismatch(entry) for entry in sorted(info["mismatched_keys"], key=str)]
        problems.append(f"shapes that do not match config.json: {listed(wrong, 4)}")
    if info.get("missing_keys"):
        problems.append(f"weights missing from the files: {listed(sorted(info['missing_keys']), 4)}")
    if problems:
        raise LLMLoadError(f"{folder}: the weights do not fit config.json: " + "; ".join(problems)
                           + " (are the config and the weights from the same model?)")
    return model.eval().requires_grad_(False)


def _mismatch(entry) -> str:
    if isinstance(entry, tuple) and len(entry) == 3:  # (key, shape in the file, shape the config wants)
        key, found, wanted = entry
        return f"{key} {tuple(found)} (config.json wants {tuple(wanted)})"
    return str(entry)


def _dtype_kwarg() -> str:
    """transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise LLMLoadError(f"{type(model).__name__}: no .layers list of transformer blocks; this LLM family is not supported")
    return layers
