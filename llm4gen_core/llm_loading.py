"""Building LLM text encoders from local files, without running any code that came with them.

T5 encoders (the release's RankGen, any HF T5 folder, a bare safetensors file) are built here:
the weights are read with :mod:`.safe_files` (safetensors, or ``torch.load(weights_only=True)``),
the model is made on the meta device and the tensors are assigned into it, so memory holds one
copy of the weights. Decoder-only LLMs go through transformers' Auto classes with
``local_files_only=True`` and never ``trust_remote_code``.

A config.json is as untrusted as the weights: before any model is built from it, its layer count
must match the layers the weight files hold, and (decoders) the parameters it describes must fit
in the bytes of those files, so that a config cannot make the loader build or allocate more than
the download itself holds. Every weight must be a float tensor with finite values.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from . import fp8
from .dtypes import auto_dtype
from .errors import CheckpointError, LLMLoadError
from .safe_files import (
    FLOAT_DTYPES, check_weight, check_zip_records, first_line, listed, read_json, read_tensor_file, sniff_format,
    torch_load,
)
from .t5_config import check_shapes, infer_t5_config, looks_like_t5_encoder, t5_encoder_state
from .weight_stream import WeightFiles

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
    """``None``/"auto": on CUDA bf16 where the GPU has it, else fp16; on a CPU bf16 only where it has
    native bf16 matrix units, else fp32 (:mod:`.dtypes`; the choice and its reason are logged once)."""
    if dtype is None or dtype == "auto":
        return auto_dtype(device).dtype
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
            shards = _shards(folder / name)
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


def _shards(index_file: Path) -> list[str]:
    """The shard files a ``*.index.json`` names: plain file names inside its folder."""
    index = read_json(index_file)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise LLMLoadError(f"{index_file}: malformed shard index (weight_map must map tensor names to file names)")
    shards = sorted(set(weight_map.values()))
    if not shards:
        raise LLMLoadError(f"{index_file}: the shard index lists no files")
    outside = [s for s in shards if Path(s).is_absolute() or ".." in Path(s).parts or "\\" in s]
    if outside:
        raise LLMLoadError(f"{index_file}: shard paths outside the model folder refused: {listed(outside)}")
    return shards


def _cast_dtype(key: str, stored: torch.dtype, dtype: torch.dtype) -> torch.dtype:
    """The dtype a stored tensor is loaded in: ``dtype``; fp8 weights and their scales as they are;
    under fp16, T5's feed-forward output projection in fp32 (its overflow guard)."""
    if stored == fp8.FP8:
        return fp8.FP8
    if key.endswith("." + fp8.SCALE):
        return torch.float32
    if dtype == torch.float16 and _KEEP_FP32_IN_FP16.search(key):
        return torch.float32
    return dtype


def _encoder_only(key: str) -> bool:
    return "decoder." not in key and not key.endswith("lm_head.weight")


# ---- T5 encoders ------------------------------------------------------------------------------

META_T5_CONFIG = "llm4gen.t5.config"  # a converted file's T5 config (JSON), see llm_convert
T5_CONFIG_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                    "relative_attention_max_distance", "feed_forward_proj", "layer_norm_epsilon")


def load_t5_encoder(path: Path, dtype: torch.dtype, config: dict | None = None, *, mmap: bool = True):
    """A ``transformers.T5EncoderModel`` from a folder or a single weights file.

    ``config`` is the folder's config.json when it is a plain T5/mT5 config: the weights are then
    checked against it; a single file converted by ``llm4gen_core.convert llm`` carries its config in
    its metadata; otherwise (RankGen's custom config, a bare file) it is read off the shapes.

    The files are opened memory-mapped and every tensor's shape and dtype is checked against the
    model before any data is read; then each tensor is read, checked and cast to ``dtype`` on its
    own (:mod:`.weight_stream`), so the load holds about one copy of the weights in ``dtype``; a
    tensor stored in ``dtype`` is used where it lies in the file's mapping (no copy) unless ``mmap``
    is False. A file of scaled fp8 weights (:mod:`.fp8`) keeps them in fp8; its layers compute in
    ``dtype``.
    """
    files = [path] if path.is_file() else weight_files(path)
    with WeightFiles(files, keep=_encoder_only, in_place=mmap) as weights:
        model, state, fp8_weights = open_t5_encoder(weights, path, config, dtype)
        tensors = {}
        for key in sorted(state):
            ref = state.pop(key)
            tensors[key] = weights.load(ref, _cast_dtype(key, ref.dtype, dtype), _checker(ref))
    model.load_state_dict(tensors, strict=False, assign=True)
    if fp8_weights:
        model.llm4gen_compute_dtype = dtype  # the embedding's dtype says fp8: LLMEncoder.dtype reads this
        model.llm4gen_weights = "fp8 e4m3fn scaled"
    return model.eval().requires_grad_(False)


def open_t5_encoder(weights: WeightFiles, path: Path, config: dict | None, dtype: torch.dtype):
    """From opened weight files, before any tensor data is read: (the T5 encoder built on the meta
    device, with scaled-fp8 modules where the file has fp8 weights; its tensors as
    :class:`~.weight_stream.WeightRef` under HF names, every shape and dtype checked against the
    model; the keys of the fp8 weights)."""
    from transformers import T5EncoderModel

    refs = dict(weights.refs)
    scaled = _scaled_fp8_marker(refs, path)
    if not looks_like_t5_encoder(refs):
        raise LLMLoadError(
            f"{path}: not a T5 encoder (no encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight); "
            f"found {listed(sorted(refs))}"
        )
    state = t5_encoder_state(refs, path)
    fp8_weights = _check_stored_dtypes(state, scaled, path)
    t5_config, config_source = _t5_config(path, config, weights.metadata, state)
    try:
        with torch.device("meta"):
            model = T5EncoderModel(t5_config)
    except Exception as exc:  # sizes transformers refuses (negative, zero heads, ...)
        raise LLMLoadError(f"{path}: cannot build a T5 encoder from {config_source} ({first_line(exc)})") from None
    model.set_input_embeddings(model.shared)  # one embedding, as in T5 (encoder.embed_tokens is shared)
    if fp8_weights:
        fp8.use_scaled_fp8(model, fp8_weights, dtype)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("encoder.embed_tokens.")}
    check_shapes(expected, state, path, config_source)
    return model, state, fp8_weights


def _scaled_fp8_marker(refs: dict, path: Path) -> bool:
    """Whether the file says its fp8 weights are scaled (ComfyUI's ``scaled_fp8`` key, at the root
    or under a wrapper prefix; its dtype is the weights' fp8 type, float32 meaning float8_e4m3fn as
    in ComfyUI); the marker keys are taken out of ``refs``."""
    markers = [k for k in refs if k == fp8.MARKER or k.endswith("." + fp8.MARKER)]
    for key in markers:
        ref = refs.pop(key)
        if ref.dtype not in (fp8.FP8, torch.float32):
            raise CheckpointError(path, f"{key} says the weights are scaled {ref.dtype}; only float8_e4m3fn scaled "
                                        "weights are supported")
    return bool(markers)


def _check_stored_dtypes(state: dict, scaled: bool, path: Path) -> set[str]:
    """Every tensor is float32/16, bfloat16 or float64, from the header, before any data is read;
    in a scaled-fp8 file also float8_e4m3fn weights of linear layers and the embedding, each with
    its ``scale_weight``. Returns the keys of the fp8 weights."""
    fp8_weights = set()
    for key, ref in sorted(state.items()):
        if ref.dtype in FLOAT_DTYPES:
            continue
        if scaled and ref.dtype == fp8.FP8 and key.endswith(".weight") and len(ref.shape) == 2 \
                and "layer_norm" not in key and "relative_attention_bias" not in key:
            fp8_weights.add(key)
            continue
        if ref.dtype == fp8.FP8 and not scaled:
            problem = (f"{key} has dtype {ref.dtype}, but the file has no {fp8.MARKER!r} marker: float8 weights "
                       "are read only as scaled fp8 (with a scale_weight per layer, as llm4gen_core.convert llm "
                       "--dtype fp8 writes them)")
        elif ref.dtype == fp8.FP8:
            problem = f"{key} has dtype {ref.dtype}; only linear-layer and embedding weights may be fp8"
        else:
            kind = "quantized weights are not supported" if "float8" in str(ref.dtype) else "weights must be floating point"
            problem = f"{key} has dtype {ref.dtype}; {kind} (float32, float16, bfloat16 or float64)"
        raise CheckpointError(path, problem)
    scales = {k for k in state if k.endswith("." + fp8.SCALE)}
    wanted = {k[: -len("weight")] + fp8.SCALE for k in fp8_weights}
    if wanted - scales:
        raise CheckpointError(path, f"fp8 weights without their scale: {listed(sorted(wanted - scales))}")
    if scales - wanted:
        raise CheckpointError(path, f"scales of weights that are not fp8: {listed(sorted(scales - wanted))}")
    return fp8_weights


def _checker(ref):
    """What every chunk of a tensor must pass as it is read."""
    path, key = ref.path, ref.key
    if ref.dtype == fp8.FP8:
        def check(part):
            if fp8.has_nan(part):
                raise CheckpointError(path, f"{key} contains NaN values", "the file is damaged")
    elif key.endswith("." + fp8.SCALE):
        def check(part):
            check_weight(path, key, part)
            if not bool((part > 0).all()):
                raise CheckpointError(path, f"{key} is {part.flatten()[:1].tolist()}: a scale must be positive",
                                      "the file is damaged")
    else:
        def check(part):
            check_weight(path, key, part)
    return check


def _t5_config(path: Path, config: dict | None, metadata: dict[str, str], state: dict):
    """(T5Config, where it came from): the folder's config.json, a converted file's metadata, or
    the shapes of the tensors. A declared config is checked against the layers the files hold
    before anything is built from it."""
    from transformers import T5Config

    if config and config.get("model_type") in T5_TYPES:
        source = path / "config.json"
        fields = {k: v for k, v in config.items() if k != "model_type"}
    elif META_T5_CONFIG in metadata:
        source = f"{path} (metadata {META_T5_CONFIG})"
        try:
            declared = json.loads(metadata[META_T5_CONFIG])
        except (ValueError, RecursionError) as exc:
            raise LLMLoadError(f"{source}: not JSON ({first_line(exc)})") from None
        if not isinstance(declared, dict):
            raise LLMLoadError(f"{source}: expected a JSON object")
        fields = {k: declared[k] for k in T5_CONFIG_FIELDS if k in declared}
    else:
        return infer_t5_config(state, path), "the shapes of its tensors"
    _check_layer_count(fields.get("num_layers"), state, source, "num_layers", "encoder.block.", missing="missing weights")
    try:
        t5_config = T5Config.from_dict(fields)
    except Exception as exc:  # transformers validates field types and values
        raise LLMLoadError(f"{source}: not a usable T5 config ({first_line(exc)})") from None
    t5_config.is_encoder_decoder, t5_config.use_cache = False, False
    return t5_config, source


def _check_layer_count(declared, state_keys, config_source, field: str, prefix: str,
                       missing: str = "weights missing from the files") -> None:
    """config.json's layer count must be the number of layers the weights hold: a model is built
    (on the meta device, but still one Python object per layer) before its weights are checked,
    so a config claiming a million layers would otherwise hang the loader."""
    pattern = re.compile(rf"(?:^|\.){re.escape(prefix)}(\d+)\.")
    found = sorted({int(m.group(1)) for k in state_keys if (m := pattern.search(k))})
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise LLMLoadError(f"{config_source}: {field} must be a positive integer, got {declared!r}")
    if declared == len(found):
        return
    if declared > len(found):
        problem = (f"{missing}: {prefix}{len(found)}.* to {prefix}{declared - 1}.* "
                   f"({field} is {declared}, the files hold {len(found)} layers)")
    else:
        problem = f"{field} is {declared} but the files hold {len(found)} layers ({prefix}0.* to {prefix}{found[-1]}.*)"
    declared_in = "config.json" if str(config_source).endswith("config.json") else "the config"
    raise LLMLoadError(f"{config_source}: the weights do not fit {declared_in}: {problem} "
                       "(are the config and the weights from the same model?)")


# ---- decoder-only LLMs ------------------------------------------------------------------------

def load_decoder(folder: Path, dtype: torch.dtype):
    """The base model (no LM head) of a decoder-only LLM folder, through transformers' Auto classes."""
    from transformers import AutoConfig, AutoModel

    files = weight_files(folder)  # a clear error when there are none, before transformers' own
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the unused LM head; real problems are raised below
    try:
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # malformed or unknown config: worded by transformers
            raise LLMLoadError(f"{folder}: cannot load the LLM ({first_line(exc)})") from None
        _check_decoder_files(folder, config, files)
        try:
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
    for name, parameter in model.named_parameters():
        check_weight(folder, name, parameter)
    return model.eval().requires_grad_(False)


_SAFETENSORS_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _tensor_index(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name) of every tensor in the files, read without the tensor data where
    the format allows it (safetensors headers; torch zip files on the meta device)."""
    index: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        fmt = sniff_format(file)
        if fmt == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for key in f.keys():
                        info = f.get_slice(key)
                        index[key] = (tuple(info.get_shape()), info.get_dtype())
            except Exception as exc:
                raise CheckpointError(file, f"corrupt safetensors file: {first_line(exc)}") from None
            continue
        tensors = None
        if fmt == "torch-zip":
            check_zip_records(file)  # transformers reads it with torch.load as well
            try:
                tensors = torch_load(file, map_location="meta")
            except Exception:
                tensors = None
            if not (isinstance(tensors, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in tensors.items())):
                tensors = None
        if tensors is None:  # legacy pickles and anything odd: read in full, which checks it and says what is wrong
            tensors, _ = read_tensor_file(file)
        for key, t in tensors.items():
            index[key] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
    return index


def _check_decoder_files(folder: Path, config, files: list[Path]) -> None:
    """Before transformers builds anything from config.json: float weights only, the same number of
    layers in the config as in the files, and no more parameters described than the files hold
    (transformers allocates what the config describes, whatever the files contain)."""
    index = _tensor_index(files)
    floats = set(_SAFETENSORS_FLOATS) | {str(d).removeprefix("torch.") for d in FLOAT_DTYPES}
    bad = [f"{k} ({dtype})" for k, (_, dtype) in sorted(index.items()) if dtype not in floats]
    if bad:
        raise LLMLoadError(f"{folder}: weights that are not float32, float16, bfloat16 or float64: {listed(bad, 4)} "
                           "(quantized or damaged files are not supported)")
    _check_layer_count(getattr(config, "num_hidden_layers", None), index, folder / "config.json",
                       "num_hidden_layers", "layers.")
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            described = AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:  # sizes the model class refuses (zero heads, ...)
        raise LLMLoadError(f"{folder / 'config.json'}: cannot build the model it describes ({first_line(exc)})") from None
    needed = sum(p.numel() for p in described.parameters())
    # what the headers declare, and never more than the files' bytes hold at 2 bytes a value
    held = min(sum(math.prod(shape) for shape, _ in index.values()), sum(f.stat().st_size for f in files) // 2)
    if needed > held:
        raise LLMLoadError(f"{folder / 'config.json'}: describes a model of {needed:,} parameters but the weight files "
                           f"hold only {held:,} values (are the config and the weights from the same model?)")


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
