"""UNet key names between diffusers' ``UNet2DConditionModel`` and ComfyUI's (ldm) layout.

ComfyUI's stock UNETLoader ("Load Diffusion Model", ``models/diffusion_models``) reads a UNet
in the ldm layout of the original Stable Diffusion code (``input_blocks.*``, ``middle_block.*``,
``output_blocks.*``, ``time_embed.*``, ``out.*``, SDXL's ``label_emb.*``; no prefix) for any
shape; a diffusers-layout UNet it loads only when its config equals a known model's exactly
(ComfyUI 0.3.75, ``comfy/model_detection.py``: full SD1.5, SDXL, ...), so a smaller or custom UNet
reaches ComfyUI only in the ldm layout. Training works on diffusers modules, so both directions
are needed:

- :func:`diffusers_to_comfy` / :func:`comfy_to_diffusers`: rename a state dict, driven by the
  diffusers config (block channels, res blocks per level, transformer depths, block types,
  SDXL's addition embedding). Tensors are passed through as they are: both layouts store
  ``proj_in``/``proj_out`` as 1x1 convolutions or as linear layers alike, as the UNet's
  ``use_linear_projection`` says.
- :func:`diffusers_config_from_comfy`: a ``UNet2DConditionModel`` config read from an ldm state
  dict's shapes (SD1.x, SD2.x, SDXL and smaller UNets of the same build).
- :func:`diffusers_key_map`: the whole map, diffusers key -> ldm key.

Every key is accounted for: a key the config does not explain, or a key it expects that the
state dict lacks, is a :class:`UNetLayoutError` naming the keys; nothing is dropped silently.
Diffusers options the ldm UNet cannot express (other block types, ``time_cond_proj_dim``,
``class_embeddings_concat``, ...) are refused by name.

Module names, side by side (n counts ldm's blocks, j a block's res blocks, t transformer layers):

    conv_in                                  input_blocks.0.0
    time_embedding.linear_1 / linear_2       time_embed.0 / time_embed.2
    add_embedding.linear_1 / linear_2        label_emb.0.0 / label_emb.0.2   (SDXL "text_time")
    down_blocks.i.resnets.j                  input_blocks.n.0                (a ResBlock)
    down_blocks.i.attentions.j               input_blocks.n.1                (a SpatialTransformer)
    down_blocks.i.downsamplers.0.conv        input_blocks.n.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1   middle_block.0 / .1 / .2
    up_blocks.i.resnets.j / attentions.j     output_blocks.n.0 / output_blocks.n.1
    up_blocks.i.upsamplers.0.conv            output_blocks.n.1.conv (n.2.conv after a transformer)
    conv_norm_out / conv_out                 out.0 / out.2

    ResBlock:  norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
           ->  in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection
    Transformer (norm, proj_in, transformer_blocks.t.*, proj_out): the same names in both.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import LLM4GENError


class UNetLayoutError(LLM4GENError):
    """A UNet state dict or config does not fit the layout conversion (keys named)."""


# diffusers' UNet2DConditionModel defaults for the options read here (a test checks them
# against diffusers' signature), used when a config dict leaves one out.
DIFFUSERS_DEFAULTS = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "cross_attention_dim": 1280,
    "class_embed_type": None,
    "addition_embed_type": None,
}

# Options the ldm UNet (and so ComfyUI) cannot express: each must keep one of these values
# (diffusers' defaults); a config that changes one is refused by name.
_MUST_KEEP = {
    "center_input_sample": (False,),
    "flip_sin_to_cos": (True,),
    "freq_shift": (0,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1,),
    "act_fn": ("silu",),
    "norm_num_groups": (32,),
    "norm_eps": (1e-5,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "dual_cross_attention": (False,),
    "num_class_embeds": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
}
_DOWN_TYPES = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP_TYPES = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
_MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"))
_SHORTCUT = ("conv_shortcut", "skip_connection")
_TRANSFORMER_OUTER = ("norm", "proj_in", "proj_out")
_BLOCK_WITH_BIAS = ("norm1", "norm2", "norm3", "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
_BLOCK_NO_BIAS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")

# SD1.x uses 8 heads at every level; SD2.x and SDXL heads of 64 channels.
SD1_HEADS = 8
HEAD_DIM = 64
SDXL_TIME_EMBED_DIM = 256  # addition_time_embed_dim: SDXL's size/crop embeddings (no weights say it)


@dataclass(frozen=True)
class _Plan:
    """The UNet's structure, as both layouts need it."""

    channels: tuple[int, ...]                 # block_out_channels, one per level
    down_depths: tuple[tuple[int, ...], ...]  # per level, per res block: transformer layers (0: none)
    up_depths: tuple[tuple[int, ...], ...]    # per up block (deepest first), per res block
    mid: str | None                           # "cross", "plain" (res block only) or None
    mid_depth: int
    embedding: str | None                     # "add_embedding" / "class_embedding" / None


# --- the map --------------------------------------------------------------------------------

def diffusers_key_map(config: Mapping) -> dict[str, str]:
    """Every key of a ``UNet2DConditionModel`` with this config -> its ldm (ComfyUI) key."""
    return _key_map(_plan_from_config(config))


def diffusers_to_comfy(state: Mapping, config: Mapping) -> dict:
    """A diffusers ``UNet2DConditionModel`` state dict (+ its config) in ComfyUI's ldm layout,
    unprefixed: what ComfyUI's UNETLoader reads from ``models/diffusion_models``."""
    key_map = diffusers_key_map(config)
    _check_keys(state, key_map, "diffusers")
    return {key_map[k]: v for k, v in state.items()}


def comfy_to_diffusers(state: Mapping, config: Mapping) -> dict:
    """An ldm-layout UNet state dict (unprefixed) in diffusers' names for ``config``."""
    inverse = {ldm: d for d, ldm in diffusers_key_map(config).items()}
    _check_keys(state, inverse, "ldm")
    return {inverse[k]: v for k, v in state.items()}


def _check_keys(state: Mapping, key_map: Mapping, layout: str) -> None:
    unmapped = sorted(k for k in state if k not in key_map)
    missing = sorted(k for k in key_map if k not in state)
    if unmapped or missing:
        problems = []
        if unmapped:
            problems.append(f"{len(unmapped)} key(s) the config does not explain: {_listed(unmapped)}")
        if missing:
            problems.append(f"{len(missing)} key(s) the config expects but the state dict lacks: {_listed(missing)}")
        raise UNetLayoutError(f"UNet state dict ({layout} layout) does not match its config: " + "; ".join(problems)
                              + " (is the config that of this UNet, and the state dict unprefixed?)")


def _key_map(plan: _Plan) -> dict[str, str]:
    m: dict[str, str] = {}

    def layer(d: str, ldm: str, bias: bool = True) -> None:
        m[f"{d}.weight"] = f"{ldm}.weight"
        if bias:
            m[f"{d}.bias"] = f"{ldm}.bias"

    def resnet(d: str, ldm: str, shortcut: bool) -> None:
        for a, b in _RESNET + ((_SHORTCUT,) if shortcut else ()):
            layer(f"{d}.{a}", f"{ldm}.{b}")

    def transformer(d: str, ldm: str, depth: int) -> None:
        for name in _TRANSFORMER_OUTER:
            layer(f"{d}.{name}", f"{ldm}.{name}")
        for t in range(depth):
            for name in _BLOCK_WITH_BIAS:
                layer(f"{d}.transformer_blocks.{t}.{name}", f"{ldm}.transformer_blocks.{t}.{name}")
            for name in _BLOCK_NO_BIAS:
                layer(f"{d}.transformer_blocks.{t}.{name}", f"{ldm}.transformer_blocks.{t}.{name}", bias=False)

    channels, levels = plan.channels, len(plan.channels)
    layer("conv_in", "input_blocks.0.0")
    layer("time_embedding.linear_1", "time_embed.0")
    layer("time_embedding.linear_2", "time_embed.2")
    if plan.embedding:
        layer(f"{plan.embedding}.linear_1", "label_emb.0.0")
        layer(f"{plan.embedding}.linear_2", "label_emb.0.2")

    n, ch = 1, channels[0]
    for i, depths in enumerate(plan.down_depths):
        for j, depth in enumerate(depths):
            resnet(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", shortcut=ch != channels[i])
            ch = channels[i]
            if depth:
                transformer(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", depth)
            n += 1
        if i < levels - 1:
            layer(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op")
            n += 1

    if plan.mid is not None:
        resnet("mid_block.resnets.0", "middle_block.0", shortcut=False)
    if plan.mid == "cross":
        transformer("mid_block.attentions.0", "middle_block.1", plan.mid_depth)
        resnet("mid_block.resnets.1", "middle_block.2", shortcut=False)

    # Up blocks: res block j takes the previous output (or the block below's) concatenated with
    # a skip from the down path; it has a 1x1 shortcut whenever that sum differs from its width.
    reversed_channels = channels[::-1]
    n, prev = 0, reversed_channels[0]
    for i, depths in enumerate(plan.up_depths):
        out = reversed_channels[i]
        skip_last = reversed_channels[min(i + 1, levels - 1)]
        for j, depth in enumerate(depths):
            skip = skip_last if j == len(depths) - 1 else out
            inp = prev if j == 0 else out
            resnet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", shortcut=inp + skip != out)
            if depth:
                transformer(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", depth)
            if j == len(depths) - 1 and i < levels - 1:
                layer(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{n}.{2 if depth else 1}.conv")
            n += 1
        prev = out

    layer("conv_norm_out", "out.0")
    layer("conv_out", "out.2")
    return m


# --- diffusers config -> structure ----------------------------------------------------------

def _plan_from_config(config: Mapping) -> _Plan:
    cfg = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in dict(config).items() if not k.startswith("_")}}
    changed = [f"{k}={cfg[k]!r}" for k, allowed in _MUST_KEEP.items()
               if k in cfg and not any(_same(cfg[k], a) for a in allowed)]
    if changed:
        raise UNetLayoutError(f"the UNet config sets option(s) the ldm/ComfyUI UNet cannot express: {', '.join(changed)}")

    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    channels = tuple(int(c) for c in cfg["block_out_channels"])
    levels = len(channels)
    if not levels or len(down_types) != levels or len(up_types) != levels:
        raise UNetLayoutError(f"block_out_channels {list(channels)}, down_block_types {down_types} and up_block_types "
                              f"{up_types} must have the same, non-zero length")
    for kind, types, known in (("down", down_types, _DOWN_TYPES), ("up", up_types, _UP_TYPES)):
        bad = [t for t in types if t not in known]
        if bad:
            raise UNetLayoutError(f"{kind} block type(s) {bad} have no ldm layout (known: {sorted(known)})")
    if cfg["mid_block_type"] not in _MID_TYPES:
        raise UNetLayoutError(f"mid_block_type {cfg['mid_block_type']!r} has no ldm layout (known: {list(_MID_TYPES)})")
    cross_dim = cfg["cross_attention_dim"]
    if isinstance(cross_dim, (list, tuple)) and len(set(cross_dim)) > 1:
        raise UNetLayoutError(f"cross_attention_dim differs between blocks ({list(cross_dim)}): the ldm UNet has one context width")

    layers = _per_level(cfg["layers_per_block"], levels, "layers_per_block")
    depths = _per_level(cfg["transformer_layers_per_block"], levels, "transformer_layers_per_block")
    reverse = cfg["reverse_transformer_layers_per_block"]
    if reverse is None:
        if any(isinstance(d, (list, tuple)) for d in depths):
            raise UNetLayoutError("transformer_layers_per_block gives depths per layer: "
                                  "reverse_transformer_layers_per_block must be given too (as diffusers requires)")
        reverse = depths[::-1]
    else:
        reverse = _per_level(reverse, levels, "reverse_transformer_layers_per_block")

    down_depths = tuple(_per_layer(depths[i], layers[i], f"transformer_layers_per_block[{i}]")
                        if _DOWN_TYPES[down_types[i]] else (0,) * layers[i] for i in range(levels))
    up_layers = layers[::-1]
    up_depths = tuple(_per_layer(reverse[i], up_layers[i] + 1, f"reverse_transformer_layers_per_block[{i}]")
                      if _UP_TYPES[up_types[i]] else (0,) * (up_layers[i] + 1) for i in range(levels))
    for name, types, per_block in (("down", down_types, down_depths), ("up", up_types, up_depths)):
        for i, block in enumerate(per_block):
            if types[i].startswith("CrossAttn") and min(block, default=1) < 1:
                raise UNetLayoutError(f"{name} block {i} ({types[i]}) has a transformer of depth 0: no ldm layout")
    time_dim = cfg.get("time_embedding_dim")
    if time_dim is not None and time_dim != 4 * channels[0]:
        raise UNetLayoutError(f"time_embedding_dim {time_dim}: the ldm UNet's is 4 x block_out_channels[0] = {4 * channels[0]}")

    mid_type = cfg["mid_block_type"]
    mid = {"UNetMidBlock2DCrossAttn": "cross", "UNetMidBlock2D": "plain", None: None}[mid_type]
    last = depths[-1]
    mid_depth = int(last[0] if isinstance(last, (list, tuple)) else last) if mid == "cross" else 0
    if mid == "cross" and mid_depth < 1:
        raise UNetLayoutError("the mid block's transformer has depth 0: no ldm layout")

    class_type, addition_type = cfg["class_embed_type"], cfg["addition_embed_type"]
    if class_type not in (None, "projection"):
        raise UNetLayoutError(f"class_embed_type {class_type!r} has no ldm layout (only 'projection')")
    if addition_type not in (None, "text_time"):
        raise UNetLayoutError(f"addition_embed_type {addition_type!r} has no ldm layout (only SDXL's 'text_time')")
    if class_type and addition_type:
        raise UNetLayoutError("class_embed_type and addition_embed_type both set: the ldm UNet has one label_emb")
    embedding = "add_embedding" if addition_type else "class_embedding" if class_type else None
    return _Plan(channels, down_depths, up_depths, mid, mid_depth, embedding)


def _per_level(value, levels: int, name: str) -> list:
    if isinstance(value, int):
        return [value] * levels
    value = list(value)
    if len(value) != levels:
        raise UNetLayoutError(f"{name} has {len(value)} entries for {levels} blocks: {value}")
    return value


def _per_layer(value, count: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * count
    value = tuple(int(v) for v in value)
    if len(value) != count:
        raise UNetLayoutError(f"{name} has {len(value)} depths for {count} layers: {list(value)}")
    return value


def _same(value, keep) -> bool:
    if isinstance(value, (list, tuple)):  # e.g. only_cross_attention given per block
        return all(_same(v, keep) for v in value)
    if isinstance(keep, bool) or keep is None or isinstance(value, bool) or value is None:
        return value is keep
    if isinstance(keep, (int, float)) and isinstance(value, (int, float)):
        return abs(float(value) - float(keep)) <= 1e-12 * max(1.0, abs(float(keep)))
    return value == keep


# --- ldm state dict -> diffusers config -----------------------------------------------------

def diffusers_config_from_comfy(state: Mapping, **overrides) -> dict:
    """A ``UNet2DConditionModel`` config for an ldm-layout UNet state dict (unprefixed), from
    its shapes: channels, levels, res blocks, transformer depths, context width, linear or conv
    projections, and SDXL's ``label_emb`` (as ``addition_embed_type="text_time"``).

    What no weight records follows the known models: 8 heads per level when the context is
    768 wide without ``label_emb`` (SD1.x), else heads of 64 channels (SD2.x, SDXL);
    ``addition_time_embed_dim`` 256 (SDXL); ``sample_size`` 128 for SDXL, else 64.
    ``overrides`` replace any entry (e.g. ``attention_head_dim=4`` for a tiny test UNet).
    The result is checked against the state dict key for key."""
    state_keys = set(state)
    if "input_blocks.0.0.weight" not in state_keys:
        hint = next((p for p in ("model.diffusion_model.", "diffusion_model.") if any(k.startswith(p) for k in state_keys)), None)
        raise UNetLayoutError("not an ldm-layout UNet state dict: it has no input_blocks.0.0.weight"
                              + (f" (strip the prefix {hint!r} first)" if hint else ""))
    conv_in = state["input_blocks.0.0.weight"]
    in_channels = int(conv_in.shape[1])

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (out channels, transformer depth) per res block
    n = 1
    while True:
        if f"input_blocks.{n}.0.op.weight" in state_keys:
            levels.append([])
        elif f"input_blocks.{n}.0.in_layers.0.weight" in state_keys:
            width = int(state[f"input_blocks.{n}.0.out_layers.3.weight"].shape[0]) \
                if f"input_blocks.{n}.0.out_layers.3.weight" in state_keys else -1
            levels[-1].append((width, _depth(state_keys, f"input_blocks.{n}.1.")))
        else:
            break
        n += 1
    if any(not level for level in levels):
        raise UNetLayoutError("ldm UNet with a level that has no res block: not a layout diffusers can build")
    channels = []
    for i, level in enumerate(levels):
        widths = {w for w, _ in level}
        if len(widths) != 1 or -1 in widths:
            raise UNetLayoutError(f"input level {i} has res blocks of different (or unreadable) widths {sorted(widths)}")
        channels.append(widths.pop())

    down_cross = [_level_has_attention(level_depths, f"input level {i}")
                  for i, level_depths in enumerate([[d for _, d in level] for level in levels])]
    down_depths = [[d for _, d in level] for level in levels]

    up_depths, n = [], 0
    for i, level in enumerate(reversed(levels)):
        block = []
        for _ in range(len(level) + 1):
            block.append(_depth(state_keys, f"output_blocks.{n}.1."))
            n += 1
        up_depths.append(block)
    up_cross = [_level_has_attention(d, f"output level {i}") for i, d in enumerate(up_depths)]

    if "middle_block.1.proj_in.weight" in state_keys:
        mid_type, mid_depth = "UNetMidBlock2DCrossAttn", _depth(state_keys, "middle_block.1.")
    elif "middle_block.0.in_layers.0.weight" in state_keys:
        mid_type, mid_depth = "UNetMidBlock2D", 0
    else:
        mid_type, mid_depth = None, 0

    attn_prefixes = sorted({m.group(1) for k in state_keys if (m := re.match(r"(.*\.1)\.proj_in\.weight$", k))})
    context_dim, linear = None, False
    if attn_prefixes:
        first = attn_prefixes[0]
        context_dim = int(state[f"{first}.transformer_blocks.0.attn2.to_k.weight"].shape[1])
        linear = state[f"{first}.proj_in.weight"].ndim == 2
    adm = int(state["label_emb.0.0.weight"].shape[1]) if "label_emb.0.0.weight" in state_keys else None

    # transformer_layers_per_block: per level (1 where a level has none, diffusers' default),
    # and the mid block reads the last entry; per layer lists only where a level varies.
    per_level = []
    for i, depths in enumerate(down_depths):
        per_level.append(depths[0] if down_cross[i] and len(set(depths)) == 1 else list(depths) if down_cross[i] else 1)
    if mid_type == "UNetMidBlock2DCrossAttn":
        last = per_level[-1]
        if not down_cross[-1]:
            per_level[-1] = mid_depth
        elif (last[0] if isinstance(last, list) else last) != mid_depth:
            raise UNetLayoutError(f"the middle transformer has depth {mid_depth}, the deepest level {last}: diffusers "
                                  "gives both the same depth")
    nested = any(isinstance(d, list) for d in per_level)
    default_up = per_level[::-1]
    up_matches = not nested and all(
        not up_cross[i] or all(d == default_up[i] for d in up_depths[i]) for i in range(len(levels)))

    config = {
        "sample_size": 128 if adm is not None and context_dim == 2048 else 64,
        "in_channels": in_channels,
        "out_channels": int(state["out.2.weight"].shape[0]) if "out.2.weight" in state_keys else 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if c else "DownBlock2D" for c in down_cross],
        "mid_block_type": mid_type,
        "up_block_types": ["CrossAttnUpBlock2D" if c else "UpBlock2D" for c in up_cross],
        "only_cross_attention": False,
        "block_out_channels": channels,
        "layers_per_block": _compact([len(level) for level in levels]),
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": context_dim if context_dim is not None else 1280,
        "transformer_layers_per_block": _compact(per_level) if not nested else per_level,
        "reverse_transformer_layers_per_block": None if up_matches else [
            list(d) if up_cross[i] else [1] * len(d) for i, d in enumerate(up_depths)],
        "attention_head_dim": None,  # below
        "use_linear_projection": linear,
        "class_embed_type": None,
        "addition_embed_type": "text_time" if adm is not None else None,
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM if adm is not None else None,
        "projection_class_embeddings_input_dim": adm,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
    }
    if "attention_head_dim" in overrides:
        pass
    elif context_dim == 768 and adm is None:
        config["attention_head_dim"] = SD1_HEADS
    else:
        uses_heads = [down_cross[i] or up_cross[len(levels) - 1 - i] for i in range(len(levels))]
        if mid_type == "UNetMidBlock2DCrossAttn":
            uses_heads[-1] = True
        odd = [c for c, used in zip(channels, uses_heads) if used and c % HEAD_DIM]
        if odd:
            raise UNetLayoutError(f"cannot tell the attention heads: level widths {odd} are not multiples of "
                                  f"{HEAD_DIM} (pass attention_head_dim=...)")
        config["attention_head_dim"] = [max(1, c // HEAD_DIM) for c in channels]
    config.update(overrides)
    _check_keys(state, {v: k for k, v in diffusers_key_map(config).items()}, "ldm")
    return config


def _depth(keys: set[str], prefix: str) -> int:
    """Transformer layers under ``prefix`` (``<block>.1.``); 0 when it holds no transformer."""
    if f"{prefix}proj_in.weight" not in keys:
        return 0
    found = {int(m.group(1)) for k in keys if k.startswith(prefix)
             and (m := re.match(re.escape(prefix) + r"transformer_blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _level_has_attention(depths: list[int], where: str) -> bool:
    with_attention = [d > 0 for d in depths]
    if any(with_attention) and not all(with_attention):
        raise UNetLayoutError(f"{where} has transformers after some res blocks only ({depths}): diffusers' blocks "
                              "have one after every res block or none")
    return all(with_attention)


def _compact(values: list):
    return values[0] if len(set(map(repr, values))) == 1 else list(values)


def _listed(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
