"""CAM checkpoints: the release's format loads, conversion is lossless, bad files fail clearly."""
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from llm4gen_core import CheckpointError, CrossAdapterConfig, load_cross_adapter, read_cross_adapter_state
from llm4gen_core.checkpoint import LAYERS, save_cross_adapter
from llm4gen_core.convert import convert, main as convert_main
from llm4gen_core.recipe import RELEASE as RELEASE_RECIPE
from synthetic.cam import RELEASE, cam_state, write_projector_pth

SMALL = CrossAdapterConfig(clip_dim=32, llm_dim=48, heads=4, ffn_dim=128, depth=1)


def test_release_projector_pth_loads_with_official_keys(tmp_path):
    state = write_projector_pth(tmp_path / "projector.pth", RELEASE)
    adapter = load_cross_adapter(tmp_path / "projector.pth")
    assert adapter.config == RELEASE
    assert set(adapter.state_dict()) == set(state)
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in state.items())
    assert not adapter.training and not any(p.requires_grad for p in adapter.parameters())


def test_legacy_non_zip_pth_loads(tmp_path):
    write_projector_pth(tmp_path / "old.pth", SMALL, _use_new_zipfile_serialization=False)
    assert load_cross_adapter(tmp_path / "old.pth", heads=4).config == SMALL


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    torch.save({"state_dict": cam_state(SMALL)}, tmp_path / "wrapped.pt")
    assert read_cross_adapter_state(tmp_path / "wrapped.pt", heads=4)[1] == SMALL


def test_depth_and_dims_are_inferred(tmp_path):
    cfg = CrossAdapterConfig(clip_dim=24, llm_dim=40, heads=3, ffn_dim=72, depth=3)
    torch.save(cam_state(cfg), tmp_path / "deep.pth")
    assert read_cross_adapter_state(tmp_path / "deep.pth", heads=3)[1] == cfg


def test_convert_is_lossless_and_keeps_heads(tmp_path):
    cfg = CrossAdapterConfig(clip_dim=30, llm_dim=20, heads=6, ffn_dim=50, depth=2)
    state = cam_state(cfg, seed=7, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "projector.pth")
    assert convert_main([str(tmp_path / "projector.pth"), str(tmp_path / "cam.safetensors"), "--heads", "6"]) == 0
    back, cfg_back = read_cross_adapter_state(tmp_path / "cam.safetensors")
    assert cfg_back == cfg, "heads come back from the metadata"
    assert back.keys() == state.keys()
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], v) for k, v in state.items())
    clip, llm = torch.randn(1, 5, 30), torch.randn(1, 7, 20)
    a = load_cross_adapter(tmp_path / "projector.pth", heads=6)
    b = load_cross_adapter(tmp_path / "cam.safetensors")
    with torch.no_grad():
        assert torch.equal(a(clip, llm), b(clip, llm))


def test_convert_refuses_to_overwrite_and_to_write_non_safetensors(tmp_path):
    write_projector_pth(tmp_path / "p.pth", SMALL)
    (tmp_path / "out.safetensors").write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists already"):
        convert(tmp_path / "p.pth", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"keep me"
    assert convert_main([str(tmp_path / "p.pth"), str(tmp_path / "out.pth")]) == 1


def test_convert_reports_a_bad_input_without_writing(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"\x00" * 64)
    assert convert_main([str(tmp_path / "bad.pth"), str(tmp_path / "out.safetensors")]) == 1
    assert "bad.pth" in capsys.readouterr().err
    assert not list(tmp_path.glob("out.safetensors*"))


@pytest.mark.parametrize("fmt,name", [("safetensors", "cam.pth"), ("safetensors", "cam.bin"),
                                      ("torch-zip", "cam.safetensors"), ("torch-legacy", "cam.safetensors"),
                                      ("torch-zip", "cam.sft")])
def test_format_is_recognised_by_its_bytes_not_its_name(tmp_path, fmt, name):
    """A file whose name lies loads as what it holds: a safetensors file named .pth (its metadata,
    heads 4, is read: the default would be 8), a torch checkpoint named .safetensors (torch.load
    itself would hand that name to safetensors)."""
    state = cam_state(SMALL, seed=2)
    path = tmp_path / name
    if fmt == "safetensors":
        save_cross_adapter(state, path, SMALL)
        heads = None
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "torch-zip")
        heads = 4
    adapter = load_cross_adapter(path, heads=heads)
    assert adapter.config == SMALL
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in state.items())
    assert convert(path, tmp_path / "copy.safetensors", heads=heads) == SMALL
    assert all(torch.equal(read_cross_adapter_state(tmp_path / "copy.safetensors")[0][k], v) for k, v in state.items())


def _corrupting_writer(monkeypatch, corrupt):
    """Make convert's writer write something other than it was given: ``corrupt(state, cfg, recipe)``
    returns what is written instead, and optionally what to do to the file once written."""
    from pathlib import Path

    import llm4gen_core.convert as convert_module

    real = convert_module.save_cross_adapter

    def writer(state, path, cfg, source="", recipe=None):
        state, cfg, recipe, *after = corrupt(dict(state), cfg, recipe)
        real(state, path, cfg, source=source, recipe=recipe)
        for damage in after:
            damage(Path(path))

    monkeypatch.setattr(convert_module, "save_cross_adapter", writer)


def _flip_one_value(state, cfg, recipe):
    key = _key("q_proj")
    state[key] = state[key].clone()
    state[key][0, 0] = torch.nextafter(state[key][0, 0], torch.tensor(1e9))
    return state, cfg, recipe


def _cast_one_tensor(state, cfg, recipe):
    state[_key("norm", "bias")] = state[_key("norm", "bias")].double()
    return state, cfg, recipe


def _add_a_block(state, cfg, recipe):
    import dataclasses

    extra = cam_state(dataclasses.replace(cfg, depth=2))  # one block more: a key set that still loads
    return {**state, **{k: v for k, v in extra.items() if ".1." in k}}, dataclasses.replace(cfg, depth=2), recipe


def _other_heads(state, cfg, recipe):
    import dataclasses

    return state, dataclasses.replace(cfg, heads=2), recipe


def _lose_the_recipe(state, cfg, recipe):
    return state, cfg, None


def _cut_the_file_short(state, cfg, recipe):
    return state, cfg, recipe, lambda path: path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("corrupt", [_flip_one_value, _cast_one_tensor, _add_a_block, _other_heads, _lose_the_recipe,
                                     _cut_the_file_short], ids=["value", "dtype", "depth", "heads", "recipe", "unreadable"])
def test_convert_refuses_a_file_that_does_not_read_back_identically(tmp_path, monkeypatch, corrupt):
    """The converter reads its output back: any difference (one value by one ulp, a dtype, the key
    set, the head count, the LLM recipe) or a file that does not read at all is an error, nothing
    is saved (no partial file left), and an existing output file that --overwrite would have
    replaced is left as it was."""
    from llm4gen_core import LLM4GENError, LLMRecipe

    recipe = LLMRecipe(max_tokens=64, llm_name="tiny-t5")
    save_cross_adapter(cam_state(SMALL), tmp_path / "trained.safetensors", SMALL, recipe=recipe)
    (tmp_path / "out.safetensors").write_bytes(b"previous output")
    _corrupting_writer(monkeypatch, corrupt)
    with pytest.raises(LLM4GENError, match=r"the written file does not read back.*; nothing was saved"):
        convert(tmp_path / "trained.safetensors", tmp_path / "out.safetensors", overwrite=True)
    assert (tmp_path / "out.safetensors").read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "trained.safetensors"]


# --- malformed files: every one must give a CheckpointError that names the file -------------

class _WritesAFile:
    """A pickle payload: unpickling it would create ``sentinel``. It must never run."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').write('pwned')",))


def _valid_pth(path):
    torch.save(cam_state(SMALL), path)
    return path.read_bytes()


def _valid_safetensors(path):
    save_cross_adapter(cam_state(SMALL), path, SMALL)
    return path.read_bytes()


def _with(state_edit):
    def make(path):
        state = cam_state(SMALL)
        state_edit(state)
        torch.save(state, path)
    return make


def _key(layer, kind="weight", block=0):
    return f"CrossFusionModule.{block}.{layer}.{kind}"


def _safetensors_with_header(header: dict, payload: bytes = b""):
    def make(path):
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return make


def _truncated(writer, fraction):
    def make(path):
        data = writer(path)
        path.write_bytes(data[: int(len(data) * fraction)])
    return make


def _set(key, value):
    return _with(lambda s: s.__setitem__(key, value))


def _malformed_cases():
    cases = {
        "empty": lambda p: p.write_bytes(b""),
        "four-bytes": lambda p: p.write_bytes(b"\x01\x02\x03\x04"),
        "random-bytes": lambda p: p.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes()),
        "text-file": lambda p: p.write_text("this is a README, not weights\n" * 20),
        "json-file": lambda p: p.write_text(json.dumps({"CrossFusionModule.0.q_proj.weight": [1, 2]})),
        "pickled-list": lambda p: torch.save([torch.zeros(2)], p),
        "pickled-tensor": lambda p: torch.save(torch.zeros(3, 3), p),
        "non-tensor-value": _with(lambda s: s.__setitem__(_key("q_proj"), 3.0)),
        "int-key": lambda p: torch.save({0: torch.zeros(2)}, p),
        "no-cam-keys": lambda p: torch.save({"encoder.block.0.weight": torch.zeros(2)}, p),
        "extra-key": _set("CrossFusionModule.0.extra.weight", torch.zeros(32)),
        "unet-key": _set("model.diffusion_model.input_blocks.0.0.weight", torch.zeros(1)),
        "block-gap": _with(lambda s: s.update({k.replace(".0.", ".2.", 1): v for k, v in list(s.items())})),
        "int-dtype": _set(_key("q_proj"), torch.zeros(32, 32, dtype=torch.int64)),
        "bool-dtype": _set(_key("norm", "bias"), torch.zeros(32, dtype=torch.bool)),
        "nan-weight": _set(_key("k_proj"), torch.full((32, 32), float("nan"))),
        "inf-bias": _set(_key("FFN.2", "bias"), torch.full((32,), float("inf"))),
        "transposed-llm-proj": _set(_key("llm_proj"), torch.zeros(48, 32)),
        "wrong-q-proj": _set(_key("q_proj"), torch.zeros(32, 31)),
        "wrong-ffn-out": _set(_key("FFN.2"), torch.zeros(32, 127)),
        "short-bias": _set(_key("v_proj", "bias"), torch.zeros(31)),
        "norm-2d": _set(_key("q_norm"), torch.zeros(32, 1)),
        "llm-proj-1d": _set(_key("llm_proj"), torch.zeros(32)),
        "scalar-ffn": _set(_key("FFN.0"), torch.tensor(1.0)),
        "heads-not-int": lambda p: save_file(cam_state(SMALL), str(p), metadata={"llm4gen.heads": "eight"}),
        "heads-not-dividing": lambda p: save_file(cam_state(SMALL), str(p), metadata={"llm4gen.heads": "5"}),
        "st-bad-json": lambda p: p.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\x00" * 64),
        "st-header-too-long": lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}" + b"\x00" * 64),
        "st-huge-offsets": _safetensors_with_header(
            {_key("q_proj"): {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}}),
        "st-offsets-past-end": _safetensors_with_header(
            {_key("q_proj"): {"dtype": "F32", "shape": [32, 32], "data_offsets": [0, 4096]}}, b"\x00" * 100),
        "st-unknown-dtype": _safetensors_with_header(
            {_key("q_proj"): {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8),
        "st-shape-size-mismatch": _safetensors_with_header(
            {_key("q_proj"): {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8),
    }
    for layer in LAYERS:
        for kind in ("weight", "bias"):
            cases[f"missing-{layer}.{kind}"] = _with(lambda s, k=_key(layer, kind): s.pop(k))
    for fraction in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cases[f"pth-truncated-{fraction}"] = _truncated(_valid_pth, fraction)
        cases[f"st-truncated-{fraction}"] = _truncated(_valid_safetensors, fraction)
    return cases


MALFORMED = _malformed_cases()


def test_there_are_at_least_50_malformed_cases():
    assert len(MALFORMED) >= 50


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_malformed_file_gives_clear_error(tmp_path, name, suffix):
    path = tmp_path / f"cam-{name}{suffix}"
    MALFORMED[name](path)
    with pytest.raises(CheckpointError) as err:
        load_cross_adapter(path)
    message = str(err.value)
    assert str(path) in message, "the error names the file"
    assert len(message) < 600 and "Traceback" not in message


@pytest.mark.parametrize("layout", ["zip", "legacy", "raw-pickle", "nested-in-state-dict"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, layout):
    sentinel = tmp_path / "pwned.txt"
    payload = _WritesAFile(sentinel)
    path = tmp_path / f"evil-{layout}.pth"
    if layout == "zip":
        torch.save({"CrossFusionModule.0.q_proj.weight": payload}, path)
    elif layout == "legacy":
        torch.save({"x": payload}, path, _use_new_zipfile_serialization=False)
    elif layout == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save({"state_dict": {**cam_state(SMALL), "evil": payload}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_cross_adapter(path)
    assert not sentinel.exists(), "the pickle payload ran"


@pytest.mark.parametrize("views, refused", [(1, False), (2, False), (3, True)])
def test_tensors_aliasing_beyond_twice_the_stored_bytes_are_refused(tmp_path, views, refused):
    """README-safety.md: tied weights (views of one storage) are fine up to twice the bytes the file
    stores (plus 1 MiB); beyond that a small file would expand once its tensors are copied."""
    from llm4gen_core.safe_files import MAX_ALIASING, read_tensor_file

    assert MAX_ALIASING == 2
    storage = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB
    state = {f"view{i}": storage[i:] for i in range(views)}  # distinct views, each ~4 MiB
    torch.save(state, tmp_path / "aliased.pth")
    if refused:
        with pytest.raises(CheckpointError, match="aliasing one another"):
            read_tensor_file(tmp_path / "aliased.pth")
    else:
        tensors, _ = read_tensor_file(tmp_path / "aliased.pth")
        assert all(torch.equal(tensors[k], v) for k, v in state.items())


@pytest.mark.parametrize("target", ["missing.pth", "a-directory"])
def test_missing_file_or_directory(tmp_path, target):
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(CheckpointError, match="no such file"):
        load_cross_adapter(tmp_path / target)


def test_missing_key_error_lists_the_key(tmp_path):
    state = cam_state(SMALL)
    del state[_key("kv_norm", "bias")]
    torch.save(state, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: CrossFusionModule\.0\.kv_norm\.bias"):
        load_cross_adapter(tmp_path / "p.pth")


def test_wrong_shape_error_names_key_and_shapes(tmp_path):
    state = cam_state(SMALL)
    state[_key("FFN.2")] = torch.zeros(32, 100)
    torch.save(state, tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match=r"FFN\.2\.weight has shape \[32, 100\], expected \[32, 128\]"):
        load_cross_adapter(tmp_path / "p.pth")


# --- the LLM recipe an adapter records ------------------------------------------------------

def test_recipe_metadata_round_trips(tmp_path):
    from llm4gen_core import LLMRecipe, read_cross_adapter_file

    recipe = LLMRecipe(kind="decoder", prefix="Describe: ", max_tokens=77, hidden_layer=-2, template="chat",
                       llm_name="Qwen3-0.6B")
    save_cross_adapter(cam_state(SMALL), tmp_path / "trained.safetensors", SMALL, recipe=recipe)
    assert load_cross_adapter(tmp_path / "trained.safetensors").recipe == recipe
    assert read_cross_adapter_file(tmp_path / "trained.safetensors")[2] == recipe
    # converting it again keeps the recipe
    convert(tmp_path / "trained.safetensors", tmp_path / "copy.safetensors")
    assert load_cross_adapter(tmp_path / "copy.safetensors").recipe == recipe
    # files that record none: a safetensors copy of the release, and the release's projector.pth
    save_cross_adapter(cam_state(SMALL), tmp_path / "plain.safetensors", SMALL)
    write_projector_pth(tmp_path / "projector.pth", SMALL)
    assert load_cross_adapter(tmp_path / "plain.safetensors").recipe is None
    assert load_cross_adapter(tmp_path / "projector.pth", heads=4).recipe is None
    assert read_cross_adapter_file(tmp_path / "projector.pth", heads=4)[2] is None


@pytest.mark.parametrize("metadata, problem", [
    ({"llm4gen.llm.max_tokens": "many"}, "max_tokens is not an integer: 'many'"),
    ({"llm4gen.llm.max_tokens": "0"}, "max_tokens must be positive"),
    ({"llm4gen.llm.hidden_layer": "-1.5"}, "hidden_layer is not an integer"),
    ({"llm4gen.llm.kind": "rnn"}, "kind must be one of"),
    ({"llm4gen.llm.template": "fancy"}, "template must be one of"),
], ids=["max_tokens-text", "max_tokens-zero", "hidden_layer-float", "kind", "template"])
def test_malformed_recipe_metadata_names_the_file(tmp_path, metadata, problem):
    path = tmp_path / "edited-adapter.safetensors"
    good = {"format": "pt", "llm4gen.heads": "4", **RELEASE_RECIPE.to_metadata()}
    save_file(cam_state(SMALL), str(path), metadata={**good, **metadata})
    for read in (load_cross_adapter, read_cross_adapter_state):
        with pytest.raises(CheckpointError, match="malformed LLM recipe") as err:
            read(path)
        assert str(path) in str(err.value) and problem in str(err.value)
