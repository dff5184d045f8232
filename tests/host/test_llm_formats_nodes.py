"""Load LLM (LLM4GEN) in a real ComfyUI with the converter's single files (bf16, scaled fp8), and its
dtype auto on a CPU both ways (the probe's answer injected), logged once."""
from __future__ import annotations

import logging

import pytest
import torch

from llm4gen_core import load_llm
from llm4gen_core.llm_convert import convert_llm

PROMPT = "Ground view of the Great Pyramids and Sphinx on the moon's surface, an astronaut in the foreground"


@pytest.fixture(scope="module")
def converted(comfy_base, llm4gen_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted")
    out = {}
    for dtype in ("bf16", "fp8"):
        path = folder / f"tiny-rankgen-{dtype}.safetensors"
        convert_llm(llm4gen_models.llm_path, path, dtype)
        out[dtype] = (comfy_base.place("LLM", path), path)
    return out


@pytest.fixture
def probe(comfy_inprocess, monkeypatch):
    """Set what the pack's CPU probe reads (the pack as ComfyUI imported it, not the tests' copy)."""
    import sys

    dtypes = sys.modules[comfy_inprocess.pack_module().__name__ + ".llm4gen_core.dtypes"]

    def set_probe(flags, onednn):
        monkeypatch.setattr(dtypes, "_cpu_flags", lambda: set(flags))
        monkeypatch.setattr(dtypes, "_onednn_bf16", lambda: onednn)
        monkeypatch.setattr(dtypes, "_logged", set())
        dtypes.cpu_auto_dtype.cache_clear()
    yield set_probe
    dtypes.cpu_auto_dtype.cache_clear()


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_converted_single_files_load_and_encode(comfy_inprocess, converted, llm4gen_models, fmt):
    """A converted file is a choice of Load LLM and encodes as llm4gen_core does with that file and
    the dtype the node chose (the CPU here has no bf16 units: fp32; the fp8 file keeps fp8 weights)."""
    name, path = converted[fmt]
    node = comfy_inprocess.node_class
    assert name in node("LLM4GENLoadLLM").define_schema().inputs[0].options
    llm = node("LLM4GENLoadLLM").execute(name, "fp32", "default")[0]
    if fmt == "fp8":
        assert llm.llm.weights == "fp8 e4m3fn scaled"
        assert llm.llm.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    embeds = node("LLM4GENLLMEncode").execute(llm, PROMPT, 256)[0]
    reference = load_llm(path, tokenizer_path=llm4gen_models.t5_tokenizer, dtype="fp32").encode([PROMPT])
    assert embeds.hidden_states.shape == (1, 256, llm4gen_models.llm_dim)
    assert torch.equal(embeds.hidden_states.cpu(), reference.hidden_states)


def test_node_dtype_auto_on_cpu_both_ways_logged_once(comfy_inprocess, converted, llm4gen_models, probe, caplog):
    node = comfy_inprocess.node_class("LLM4GENLoadLLM")
    caplog.set_level(logging.INFO, logger="LLM4GEN")
    probe({"avx512f", "avx512_bf16"}, True)
    with_units = node.execute(llm4gen_models.llm, "auto", "default")[0]
    fp8 = node.execute(converted["fp8"][0], "auto", "cpu")[0]
    assert with_units.llm.dtype == torch.bfloat16 and fp8.llm.dtype == torch.bfloat16
    assert fp8.llm.weights == "fp8 e4m3fn scaled"
    lines = [r.getMessage() for r in caplog.records if "dtype auto" in r.getMessage()]
    assert lines == ["LLM4GEN: dtype auto on cpu: bf16 (the CPU has avx512_bf16 and oneDNN does bf16 matmuls "
                     "natively)"], lines

    caplog.clear()
    probe({"avx2"}, False)
    without = node.execute(llm4gen_models.llm, "auto", "default")[0]
    fp8 = node.execute(converted["fp8"][0], "auto", "default")[0]
    node.execute(converted["bf16"][0], "auto", "cpu")
    assert without.llm.dtype == torch.float32 and fp8.llm.dtype == torch.float32  # fp8 computes in fp32 here
    lines = [r.getMessage() for r in caplog.records if "dtype auto" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("LLM4GEN: dtype auto on cpu: fp32 (") and "500x" in lines[0]
    assert node.execute(llm4gen_models.llm, "bf16", "default")[0].llm.dtype == torch.bfloat16  # explicit wins
