"""The pack's nodes in a real ComfyUI, fed awkward text and rich inputs.

- Text: prompts with broken prompt-weight syntax, control characters, mixed scripts and emoji go
  through the stock CLIPTextEncode (ComfyUI's weight parser) and Apply LLM4GEN, or CLIP+LLM
  Cross-Adapter, and come out as the release's fusion of what CLIP and the LLM give for them; a
  100,000-character prompt goes through LLM Encode and CLIP+LLM Cross-Adapter in seconds.
- Inputs are never mutated: every node is called with inputs snapshotted deeply (tensor bytes,
  dtype, device, shape, stride, offset; container identities, keys and order; module weights;
  model files on disk) and the snapshot is taken again afterwards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm4gen_core import load_cross_adapter, load_llm

pytestmark = pytest.mark.host

RELEASE, ALL = "first 77 (release)", "all chunks"
LONG_TEXT = "a photo of a cat sitting on a mat, " * 2900  # 101,500 characters, ~29,000 CLIP tokens


@pytest.fixture(scope="module")
def parts(comfy_inprocess, sd15_checkpoint, llm4gen_models):
    node = comfy_inprocess.node_class
    clip = comfy_inprocess.nodes.CheckpointLoaderSimple().load_checkpoint(sd15_checkpoint)[1]
    llm = node("LLM4GENLoadLLM").execute(llm4gen_models.llm, "auto", "default")[0]
    adapter = node("LLM4GENLoadCrossAdapter").execute(llm4gen_models.adapter)[0]
    reference_llm = load_llm(llm4gen_models.llm_path, tokenizer_path=llm4gen_models.t5_tokenizer)
    reference_cam = load_cross_adapter(llm4gen_models.adapter_path)
    return SimpleNamespace(node=node, clip=clip, llm=llm, adapter=adapter, clip_encode=comfy_inprocess.nodes.CLIPTextEncode(),
                           reference_llm=reference_llm, reference_cam=reference_cam)


def _execute(parts, node_id, *args):
    return parts.node(node_id).execute(*args)[0]


def _expected_llm_part(parts, clip_features: torch.Tensor, text: str, strength: float = 1.0) -> torch.Tensor:
    """What the release's CAM appends for this text, from the tests' own copy of llm4gen_core."""
    with torch.no_grad():
        llm = parts.reference_llm.encode([text]).hidden_states
        return parts.reference_cam(clip_features.float(), llm, strength=strength)[:, clip_features.shape[1]:]


# --- text -------------------------------------------------------------------------------------

SYNTAX_TEXTS = [
    "(word:1.3",
    "((a) (cat:abc) [dog|cat] {x|y} (:1.2) a) b ( \\(escaped\\) embedding:no_such_embedding",
    "ctrl \x00\x07\x1b[31m\x7f bidi \u202e zero-width \u200b emoji 😀👩‍👩‍👧 日本の猫 привет مرحبا",
    " \t\n ",
]


@pytest.mark.parametrize("text", SYNTAX_TEXTS, ids=range(len(SYNTAX_TEXTS)))
def test_prompt_weight_errors_and_odd_text_encode_and_fuse(parts, text):
    """ComfyUI's weight parser tolerates unbalanced or malformed (word:weight) syntax; whatever
    CLIPTextEncode gives, Apply LLM4GEN fuses it: the CLIP tokens pass through untouched and the
    LLM tokens are the CAM of them and the LLM features of the same text."""
    conditioning = parts.clip_encode.encode(parts.clip, text)[0]
    embeds = _execute(parts, "LLM4GENLLMEncode", parts.llm, text, 256)
    fused = _execute(parts, "LLM4GENApplyConditioning", conditioning, parts.adapter, embeds, 1.0, RELEASE, "clip")
    clip_features = conditioning[0][0]
    assert fused[0][0].shape == (1, 333, 768)
    assert torch.equal(fused[0][0][:, :77], clip_features)
    expected = _expected_llm_part(parts, clip_features, text)
    assert (fused[0][0][:, 77:].float() - expected).abs().max() < 1e-4
    if text == SYNTAX_TEXTS[0]:  # the one-node path parses the same way (one CLIP encode more: once is enough)
        via_cross_adapter = _execute(parts, "LLM4GENCLIPLLMCrossAdapter", parts.clip, text, parts.adapter, embeds,
                                     1.0, RELEASE, "clip")
        assert torch.equal(via_cross_adapter[0][0], fused[0][0])


def test_lone_surrogate_in_a_prompt_is_a_clear_error(parts):
    with pytest.raises(ValueError, match="not valid Unicode"):
        _execute(parts, "LLM4GENLLMEncode", parts.llm, "a cat \ud800", 256)


def test_100k_character_prompt_takes_seconds_not_minutes(parts, clip_reference, capsys):
    """LLM Encode tokenizes the whole prompt (to report how long it was) and keeps 256 tokens; CLIP+LLM
    Cross-Adapter in release mode encodes only CLIP's first 77-token chunk (ComfyUI would encode all
    ~390 chunks, minutes on a CPU, before they were cut off). Timings are printed, not asserted."""
    start = time.perf_counter()
    embeds = _execute(parts, "LLM4GENLLMEncode", parts.llm, LONG_TEXT, 256)
    llm_seconds = time.perf_counter() - start
    assert embeds.truncated == [True] and embeds.token_counts[0] > 20_000
    assert embeds.hidden_states.shape[:2] == (1, 256)

    start = time.perf_counter()
    fused = _execute(parts, "LLM4GENCLIPLLMCrossAdapter", parts.clip, LONG_TEXT, parts.adapter, embeds, 1.0,
                     RELEASE, "clip")
    cross_seconds = time.perf_counter() - start
    context = fused[0][0]
    assert context.shape == (1, 333, 768)
    # the first chunk ends on a word boundary here, so it is exactly the first 75 tokens of the text
    assert torch.allclose(context[:, :77].float(), clip_reference([LONG_TEXT]), atol=3e-2, rtol=3e-2)
    assert (context[:, 77:].float() - _expected_llm_part(parts, context[:, :77], LONG_TEXT)).abs().max() < 1e-4
    with capsys.disabled():
        print(f"\n100k-character prompt ({len(LONG_TEXT):,} chars, {embeds.token_counts[0]:,} T5 tokens): "
              f"LLM Encode {llm_seconds:.2f} s, CLIP+LLM Cross-Adapter (release mode) {cross_seconds:.2f} s")


# --- inputs are never mutated -------------------------------------------------------------------

class _Bytes:
    """A tensor's bytes, copied; equal to another copy only when every byte is."""

    def __init__(self, t: torch.Tensor):
        self.data = t.detach().to("cpu", copy=True).contiguous().reshape(-1).view(torch.uint8)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Bytes) and torch.equal(self.data, other.data)

    def __repr__(self) -> str:
        return f"<{self.data.numel()} bytes>"


def snapshot(obj, depth: int = 0):
    """A deep, comparable record of ``obj``: tensors by their bytes, dtype, device, shape, stride,
    storage offset and identity; containers by identity, type, keys/order and contents; modules by
    their weights; anything else by identity and type."""
    if depth > 20:
        return ("too deep", id(obj))
    if isinstance(obj, torch.Tensor):
        return ("tensor", id(obj), obj.dtype, str(obj.device), tuple(obj.shape), obj.stride(), obj.storage_offset(),
                obj.requires_grad, _Bytes(obj))
    if isinstance(obj, torch.nn.Module):
        return ("module", id(obj), type(obj), obj.training,
                [(name, snapshot(t, depth + 1)) for name, t in obj.state_dict(keep_vars=True).items()])
    if isinstance(obj, dict):
        return ("dict", id(obj), type(obj), [(repr(k), snapshot(v, depth + 1)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, id(obj), [snapshot(v, depth + 1) for v in obj])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return ("dataclass", id(obj), type(obj), [(f.name, snapshot(getattr(obj, f.name), depth + 1))
                                                  for f in dataclasses.fields(obj)])
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return ("value", type(obj), repr(obj))
    return ("object", id(obj), type(obj))


def _first_difference(a, b, path="input"):
    if type(a) is not type(b) or not isinstance(a, (tuple, list)) or len(a) != len(b):
        return path if a != b else None
    for i, (x, y) in enumerate(zip(a, b)):
        found = _first_difference(x, y, f"{path}[{i}]")
        if found:
            return found
    return None


def _llm_state(loaded):
    """What a LoadedLLM carries: the encoder's weights, its tokenizer's tables, its settings."""
    llm = loaded.llm
    return {"loaded": loaded, "model": llm.model, "specials": getattr(llm.tokenizer, "specials", None),
            "settings": (llm.kind, llm.prefix, llm.hidden_layer, llm.source), "patcher_patches": loaded.patcher.patches}


def _clip_state(clip):
    return {"clip": clip, "model": clip.cond_stage_model, "layer_idx": clip.layer_idx, "patches": clip.patcher.patches,
            "patches_uuid": clip.patcher.patches_uuid, "tokenizer": clip.tokenizer}


def _adapter_state(loaded):
    return {"loaded": loaded, "adapter": loaded.adapter, "config": dataclasses.astuple(loaded.adapter.config)}


def _files_state(*paths: Path):
    files = [p for path in paths for p in ([path] if Path(path).is_file() else sorted(Path(path).rglob("*")))
             if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_unchanged(call, *inputs, before=None):
    """Run ``call()``; every input's deep snapshot must be the same afterwards (or the same as
    ``before``, snapshots taken once for several calls). Returns the output."""
    before = before or [snapshot(x) for x in inputs]
    output = call()
    after = [snapshot(x) for x in inputs]
    for i, (b, a) in enumerate(zip(before, after)):
        assert b == a, f"input {i} changed at {_first_difference(b, a, f'input{i}')}"
    return output


def _rich_conditioning(parts, text="a red cube on a wooden table") -> list:
    """CONDITIONING as other nodes leave it: areas, masks, strengths, timestep ranges, a ControlNet
    context, an attention mask, hooks and controls (opaque objects), nested containers, an entry
    fused before (its llm4gen marker), a long prompt in non-contiguous memory, a batch of 3."""
    stock = parts.clip_encode.encode(parts.clip, text)[0]
    cond, options = stock[0]
    g = torch.Generator().manual_seed(0)
    rich = {**options, "area": (64, 64, 0, 0), "strength": 0.8, "mask": torch.rand(1, 64, 64, generator=g),
            "mask_strength": 1.0, "set_area_to_bounds": False, "timestep_start": 0.9, "timestep_end": 0.1,
            "cross_attn_controlnet": torch.randn(1, 77, 768, generator=g), "attention_mask": torch.ones(1, 77, dtype=torch.long),
            "hooks": object(), "control": object(), "custom": {"nested": [torch.randn(2, generator=g), {"deep": (1, "x")}]}}
    fused_before = _execute(parts, "LLM4GENApplyConditioning", [[cond, dict(options)]], parts.adapter,
                            _execute(parts, "LLM4GENLLMEncode", parts.llm, text, 256), 0.5, RELEASE, "clip")[0]
    long = torch.randn(3, 768, 154, generator=g).transpose(1, 2)  # [3, 154, 768], strides of a transposed view
    return [[cond, rich], fused_before, [long, {"pooled_output": torch.randn(3, 768, generator=g)}],
            [cond.to(torch.float16), {"pooled_output": options["pooled_output"]}]]


def test_loaders_leave_their_inputs_and_files_unchanged(parts, llm4gen_models):
    files = _files_state(llm4gen_models.llm_path, llm4gen_models.adapter_path)
    args_llm = (llm4gen_models.llm, "auto", "default")
    assert_unchanged(lambda: _execute(parts, "LLM4GENLoadLLM", *args_llm), *args_llm)
    assert_unchanged(lambda: _execute(parts, "LLM4GENLoadCrossAdapter", llm4gen_models.adapter), llm4gen_models.adapter)
    assert _files_state(llm4gen_models.llm_path, llm4gen_models.adapter_path) == files


def test_llm_encode_leaves_the_llm_unchanged(parts):
    for text, max_tokens in (("a cat", 256), (LONG_TEXT[:3000], 77), ("", 1)):
        assert_unchanged(lambda: _execute(parts, "LLM4GENLLMEncode", parts.llm, text, max_tokens),
                         _llm_state(parts.llm), text, max_tokens)


def test_apply_never_mutates_conditioning_adapter_or_embeds(parts):
    conditioning = _rich_conditioning(parts)
    embeds = _execute(parts, "LLM4GENLLMEncode", parts.llm, "a red cube", 256)
    embeds_batch3 = dataclasses.replace(embeds, hidden_states=embeds.hidden_states.expand(3, -1, -1))
    single = [conditioning[0]]
    for (cond, llm), strength, (clip_tokens, context) in itertools.product(
            ((conditioning, embeds), (single, embeds_batch3)), (0.0, 1.0), ((RELEASE, "clip"), (ALL, "fused"))):
        args = (cond, parts.adapter, llm, strength, clip_tokens, context)
        out = assert_unchanged(lambda: _execute(parts, "LLM4GENApplyConditioning", *args),
                               cond, _adapter_state(parts.adapter), llm, strength, clip_tokens, context)
        assert len(out) == len(cond)
        for (_, new_options), (_, old_options) in zip(out, cond):
            assert new_options is not old_options, "an input dict was handed on (downstream edits would reach it)"


def test_clip_llm_cross_adapter_never_mutates_its_inputs(parts):
    embeds = _execute(parts, "LLM4GENLLMEncode", parts.llm, "a red cube", 256)
    long_prompt = "a red cube on a wooden table, " * 12  # two CLIP chunks
    inputs = (_clip_state(parts.clip), _adapter_state(parts.adapter), embeds)
    before = [snapshot(x) for x in inputs]  # the CLIP's weights are copied once, not per call
    for text, clip_tokens, context, tokens in (("a red cube", RELEASE, "clip", 77), (long_prompt, ALL, "fused", 154),
                                               (long_prompt, RELEASE, "clip", 77)):
        args = (parts.clip, text, parts.adapter, embeds, 1.0, clip_tokens, context)
        out = assert_unchanged(lambda: _execute(parts, "LLM4GENCLIPLLMCrossAdapter", *args), *inputs, before=before)
        assert out[0][0].shape[1] == tokens + 256


# --- bad values a graph can carry --------------------------------------------------------------

@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_strength_is_a_clear_error(parts, strength):
    """The server's JSON accepts NaN and Infinity, and ComfyUI's min/max check lets NaN through: the
    fusion refuses it rather than sending NaN tokens to the UNet (a black image, silently)."""
    embeds = _execute(parts, "LLM4GENLLMEncode", parts.llm, "a cat", 256)
    conditioning = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(ValueError, match="strength must be a finite number"):
        _execute(parts, "LLM4GENApplyConditioning", conditioning, parts.adapter, embeds, strength, RELEASE, "clip")


def test_symlink_loops_in_the_llm_folder_do_not_hang_the_model_list(comfy_inprocess, tmp_path, monkeypatch):
    """Two links back up the tree made listing models/LLM exponential (it never finished, and with it
    /object_info, which the UI needs to start). Each real folder is now walked once."""
    import threading

    model_folders = comfy_inprocess.pack_module().nodes.model_folders
    root = tmp_path / "LLM"
    (root / "family" / "model-a").mkdir(parents=True)
    (root / "family" / "model-a" / "config.json").write_text("{}")
    (root / "t5.safetensors").write_bytes(b"")
    for name, target in (("up", ".."), ("here", "."), ("family/back", "..")):
        (root / name).symlink_to(target, target_is_directory=True)
    monkeypatch.setattr(model_folders, "_llm_roots", lambda: [str(root)])
    result = []
    worker = threading.Thread(target=lambda: result.append(model_folders.llm_choices()), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert result, "listing models/LLM did not finish within 60 s"
    assert "family/model-a" in result[0] and "t5.safetensors" in result[0]
