"""dtype "auto" on a CPU: bf16 only with native bf16 matrix units (both the CPU flags and oneDNN
say so), fp32 on every other CPU, never fp16; decided once, logged once with its reason.

A wrong guess costs 500x (bf16 matmuls without native units), so the decision is tested both ways
on any machine by injecting what the probe would read."""
from __future__ import annotations

import logging

import pytest
import torch

from llm4gen_core import dtypes, load_llm
from synthetic.llm import tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_rankgen_folder


@pytest.fixture
def probe(monkeypatch):
    """Set what the CPU probe reads: probe(flags, onednn); the cache and the log memory are reset."""
    def set_probe(flags, onednn):
        monkeypatch.setattr(dtypes, "_cpu_flags", lambda: None if flags is None else set(flags))
        monkeypatch.setattr(dtypes, "_onednn_bf16", lambda: onednn)
        dtypes.cpu_auto_dtype.cache_clear()
    monkeypatch.setattr(dtypes, "_logged", set())
    yield set_probe
    dtypes.cpu_auto_dtype.cache_clear()


@pytest.fixture(scope="module")
def rankgen(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    return tiny_t5_rankgen_folder(root / "rankgen", tiny_t5_encoder(seed=4)), tiny_spm_tokenizer(root / "tok")


@pytest.mark.parametrize("flags, onednn, expected", [
    ({"avx512f", "avx512_bf16", "avx512bw"}, True, torch.bfloat16),   # Cooper Lake, Zen 4
    ({"avx512f", "amx_bf16", "amx_tile"}, True, torch.bfloat16),       # Sapphire Rapids
    ({"avx2", "fma"}, False, torch.float32),                           # this project's CI machine
    ({"avx512f", "avx512bw", "avx512vl"}, True, torch.float32),        # AVX512 without bf16: oneDNN emulates
    ({"avx512_bf16"}, False, torch.float32),                           # oneDNN says no (e.g. built without it)
    ({"avx512_bf16"}, None, torch.float32),                            # this torch cannot say
    (None, True, torch.float32),                                       # no /proc/cpuinfo
    (set(), None, torch.float32),
])
def test_cpu_auto_dtype_both_ways(probe, flags, onednn, expected):
    probe(flags, onednn)
    choice = dtypes.cpu_auto_dtype()
    assert choice.dtype == expected
    assert choice.dtype != torch.float16
    if expected == torch.bfloat16:
        assert any(flag in choice.reason for flag in dtypes.BF16_FLAGS) and "oneDNN" in choice.reason
    else:
        assert "500x" in choice.reason


def test_load_llm_auto_follows_the_probe_and_logs_once(probe, rankgen, caplog):
    folder, tok = rankgen
    caplog.set_level(logging.INFO, logger="LLM4GEN")
    probe({"avx512_bf16"}, True)
    with_bf16 = load_llm(folder, tokenizer_path=tok, dtype="auto", device="cpu")
    load_llm(folder, tokenizer_path=tok, dtype=None, device="cpu")
    assert with_bf16.dtype == torch.bfloat16
    assert with_bf16.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.bfloat16
    lines = [r.getMessage() for r in caplog.records if "dtype auto" in r.getMessage()]
    assert lines == ["LLM4GEN: dtype auto on cpu: bf16 (the CPU has avx512_bf16 and oneDNN does bf16 matmuls "
                     "natively)"]

    caplog.clear()
    probe({"avx2"}, False)
    without = load_llm(folder, tokenizer_path=tok, dtype="auto", device="cpu")
    load_llm(folder, tokenizer_path=tok, dtype="auto", device="cpu")
    assert without.dtype == torch.float32
    lines = [r.getMessage() for r in caplog.records if "dtype auto" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("LLM4GEN: dtype auto on cpu: fp32 (") and "avx512_bf16" in lines[0]


def test_explicit_dtypes_are_not_second_guessed(probe, rankgen):
    folder, tok = rankgen
    probe({"avx2"}, False)
    assert load_llm(folder, tokenizer_path=tok, dtype="bf16", device="cpu").dtype == torch.bfloat16
    assert load_llm(folder, tokenizer_path=tok, dtype="fp32", device="cpu").dtype == torch.float32


def test_the_real_probe_agrees_with_this_machine():
    """Without injection: bf16 exactly when /proc/cpuinfo lists a bf16 unit and oneDNN agrees."""
    dtypes.cpu_auto_dtype.cache_clear()
    try:
        choice = dtypes.cpu_auto_dtype()
    finally:
        dtypes.cpu_auto_dtype.cache_clear()
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        flags = []
    native = any(f in flags for f in dtypes.BF16_FLAGS) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert choice.dtype == (torch.bfloat16 if native else torch.float32)
