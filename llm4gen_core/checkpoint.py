"""Cross-Adapter weights: the release's ``projector.pth`` and safetensors copies of it.

The release stores a plain state dict with keys ``CrossFusionModule.<i>.<layer>.<weight|bias>``.
Everything else about the model (widths, FFN size, depth) is read off the tensor shapes; the
head count cannot be, so it comes from the file's metadata (written by :func:`save_cross_adapter`)
or defaults to the release's 8.

An adapter trained by ``llm4gen_core.train`` also records the LLM recipe it was trained with
(``llm4gen.llm.*`` metadata, :mod:`.recipe`); it comes back as the loaded adapter's ``recipe``.
A file without one (the release's projector.pth) gives ``None``: callers treat that as
:data:`.recipe.RELEASE`.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .cam import CrossAdapter, CrossAdapterConfig
from .errors import CheckpointError, LLM4GENError
from .recipe import LLMRecipe
from .safe_files import check_weight, listed, read_tensor_file

DEFAULT_HEADS = 8
META_PREFIX = "llm4gen."
LAYERS = ("llm_proj", "q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "kv_norm", "norm", "FFN.0", "FFN.2")
_KEY = re.compile(r"^CrossFusionModule\.(\d+)\.(" + "|".join(re.escape(n) for n in LAYERS) + r")\.(weight|bias)$")


def expected_shapes(cfg: CrossAdapterConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a CAM with this config and its shape: the checkpoint's contract."""
    d, dl, f = cfg.clip_dim, cfg.llm_dim, cfg.ffn_dim
    per_layer = {
        "llm_proj": ((d, dl), (d,)), "q_proj": ((d, d), (d,)), "k_proj": ((d, d), (d,)),
        "v_proj": ((d, d), (d,)), "out_proj": ((d, d), (d,)), "q_norm": ((d,), (d,)),
        "kv_norm": ((d,), (d,)), "norm": ((d,), (d,)), "FFN.0": ((f, d), (f,)), "FFN.2": ((d, f), (d,)),
    }
    return {
        f"CrossFusionModule.{i}.{layer}.{kind}": shape
        for i in range(cfg.depth)
        for layer, shapes in per_layer.items()
        for kind, shape in zip(("weight", "bias"), shapes)
    }


def infer_config(state: dict[str, torch.Tensor], path, heads: int | None = None,
                 metadata: dict[str, str] | None = None) -> CrossAdapterConfig:
    """Read the CAM's dimensions off a state dict and check every tensor against them."""
    unknown = [k for k in state if not _KEY.match(k)]
    if unknown:
        hint = "this is not an LLM4GEN Cross-Adapter file"
        if any(k.startswith(("model.diffusion_model", "down_blocks", "encoder.block", "t5_encoder")) for k in unknown):
            hint = "this looks like a UNet or text-encoder file: put it in its own model folder"
        raise CheckpointError(path, f"unexpected keys: {listed(sorted(unknown))}", hint)
    blocks = sorted({int(_KEY.match(k).group(1)) for k in state})
    if not blocks:
        raise CheckpointError(path, "holds no Cross-Adapter weights (no CrossFusionModule.* keys)")
    if blocks != list(range(len(blocks))):
        raise CheckpointError(path, f"fusion blocks are not numbered 0..{len(blocks) - 1}: found {blocks}")
    try:
        clip_dim, llm_dim = state["CrossFusionModule.0.llm_proj.weight"].shape
        ffn_dim = state["CrossFusionModule.0.FFN.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        raise CheckpointError(path, "missing or malformed llm_proj / FFN.0 weights in block 0") from None
    heads = heads or _heads_from_metadata(metadata or {}, path)
    try:
        cfg = CrossAdapterConfig(int(clip_dim), int(llm_dim), int(heads), int(ffn_dim), len(blocks))
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in state]
    if missing:
        raise CheckpointError(path, f"missing keys: {listed(missing)}", "the file is incomplete or from another model")
    for key, shape in want.items():
        t = state[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(path, f"{key} has shape {list(t.shape)}, expected {list(shape)} "
                                        f"for CLIP {clip_dim} / LLM {llm_dim} / FFN {ffn_dim}")
        check_weight(path, key, t)
    return cfg


def _heads_from_metadata(metadata: dict[str, str], path) -> int:
    raw = metadata.get(META_PREFIX + "heads")
    if raw is None:
        return DEFAULT_HEADS
    try:
        return int(raw)
    except ValueError:
        raise CheckpointError(path, f"metadata {META_PREFIX}heads is not an integer: {raw!r}") from None


def read_cross_adapter_file(path, heads: int | None = None
                            ) -> tuple[dict[str, torch.Tensor], CrossAdapterConfig, LLMRecipe | None]:
    """Load and validate a CAM state dict without building the module: (state, config, recipe).
    ``recipe`` is None when the file records none (the release)."""
    state, metadata = read_tensor_file(path)
    cfg = infer_config(state, path, heads, metadata)
    return state, cfg, recipe_from_metadata(metadata, path)


def read_cross_adapter_state(path, heads: int | None = None) -> tuple[dict[str, torch.Tensor], CrossAdapterConfig]:
    """Load and validate a CAM state dict without building the module (its recipe is checked too;
    :func:`read_cross_adapter_file` returns it)."""
    state, cfg, _ = read_cross_adapter_file(path, heads)
    return state, cfg


def recipe_from_metadata(metadata: dict[str, str], path) -> LLMRecipe | None:
    """The LLM recipe a file records, None when it records none; a malformed one names the file."""
    try:
        return LLMRecipe.from_metadata(metadata)
    except LLM4GENError as exc:
        raise CheckpointError(path, f"malformed LLM recipe in its metadata: {exc}",
                              "the file was not written by llm4gen_core, or was edited") from None


def load_cross_adapter(path, heads: int | None = None, dtype: torch.dtype | None = torch.float32,
                       device: torch.device | str | None = None) -> CrossAdapter:
    """Build the CAM from a weights file, ready for inference (eval mode, no gradients).

    ``dtype=None`` keeps the file's dtype; the default float32 is what the release ran in.
    The adapter's ``recipe`` is the LLM recipe the file records (None: the release's).
    """
    state, cfg, recipe = read_cross_adapter_file(path, heads)
    with torch.device("meta"):
        adapter = CrossAdapter(cfg)
    file_dtype = next(iter(state.values())).dtype
    state = {k: v.to(device=device or "cpu", dtype=dtype or file_dtype) for k, v in state.items()}
    adapter.load_state_dict(state, strict=True, assign=True)
    adapter.recipe = recipe
    return adapter.eval().requires_grad_(False)


def save_cross_adapter(state: dict[str, torch.Tensor], path, cfg: CrossAdapterConfig, source: str = "",
                       recipe: LLMRecipe | None = None) -> None:
    """Write a CAM state dict as safetensors, with the head count and dims as metadata, and the
    LLM recipe it was trained with when given (the nodes then encode as it says)."""
    from safetensors.torch import save_file

    metadata = {"format": "pt", **{META_PREFIX + k: str(v) for k, v in vars(cfg).items()}}
    if source:
        metadata[META_PREFIX + "source"] = Path(source).name
    if recipe is not None:
        if not isinstance(recipe, LLMRecipe):
            raise TypeError(f"recipe must be an LLMRecipe, got {type(recipe).__name__}")
        metadata.update(recipe.to_metadata())
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path), metadata=metadata)
