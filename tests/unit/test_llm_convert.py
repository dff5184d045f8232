"""python -m llm4gen_core.convert llm: a T5 encoder (RankGen's layout, an HF T5 folder) to one
.safetensors file in bf16, fp16 or scaled fp8, encoder only, config and tokenizer needs in the
metadata, verified after writing; Load LLM reads the result as a single file.

Round trips compare the converted file with the source loaded in the same dtype: identical features
for bf16 (the same weights), a cosine of at least 0.9999 for fp16 (the file stores T5's feed-forward
output projection in fp16, which transformers keeps in the source's fp32), and for fp8 a cosine similarity to the fp32 source of at least
0.99 on average and 0.97 at the worst token (measured on these tiny random encoders: 0.998 / 0.989;
at the release's size see the README's quality table).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llm4gen_core import LLM4GENError, load_llm
from llm4gen_core import llm_convert
from llm4gen_core.convert import main as convert_main
from llm4gen_core.llm_convert import convert_llm
from synthetic.llm import (
    tiny_llama_folder, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_hf_folder, tiny_t5_rankgen_folder,
)

PROMPTS = ["a photo of a cat sitting on a mat under blue sky", "",
           " ".join(["ground view of the great pyramids and sphinx on the moon surface"] * 3),
           "naïve café 日本 portrait of a woman at sunset"]
FP8_MEAN, FP8_MIN = 0.99, 0.97
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_spm_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tok):
    """A RankGen-layout .bin folder (no tokenizer, the projection beside the encoder) and an HF T5
    folder whose config says what shapes cannot (layer_norm_epsilon 1e-3) and that has its own
    spiece.model."""
    root = tmp_path_factory.mktemp("sources")
    rankgen = tiny_t5_rankgen_folder(root / "rankgen", tiny_t5_encoder(seed=7), fmt="bin")
    hf_model = tiny_t5_encoder(seed=8, layer_norm_epsilon=1e-3, relative_attention_max_distance=64)
    hf = tiny_t5_hf_folder(root / "hf-t5", hf_model, tokenizer_from=tok)
    return {"rankgen": rankgen, "hf": hf}


def features(path, tok, dtype):
    llm = load_llm(path, tokenizer_path=tok, dtype=dtype, device="cpu")
    out = llm.encode(PROMPTS, max_tokens=64)
    return out.hidden_states.float(), out.attention_mask.bool(), llm


def cosines(a, b, mask):
    return torch.nn.functional.cosine_similarity(a[mask].double(), b[mask].double(), dim=-1)


@pytest.mark.parametrize("source", ["rankgen", "hf"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_round_trip_gives_the_sources_features_in_that_dtype(sources, tok, tmp_path, source, dtype):
    out = tmp_path / f"{source}-{dtype}.safetensors"
    report = convert_llm(sources[source], out, dtype)
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    got, mask, llm = features(out, tok, dtype)
    want, _, ref = features(sources[source], tok, dtype)
    assert llm.dtype == ref.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if dtype == "bf16":
        assert torch.equal(got, want)
    else:
        # T5's overflow guard survives: the feed-forward output projection computes in fp32. The file
        # stores it in fp16 (half the bytes) where transformers keeps the source's fp32 values.
        assert llm.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
        assert float(cosines(got, want, mask).min()) >= 0.9999
    # the file holds half of the encoder's fp32 bytes (the projection is dropped besides)
    assert report.bytes < 0.52 * report.source_bytes + 4096
    assert report.max_abs_diff == 0.0


@pytest.mark.parametrize("source", ["rankgen", "hf"])
def test_fp8_round_trip_within_the_stated_cosine(sources, tok, tmp_path, source):
    out = tmp_path / f"{source}-fp8.safetensors"
    report = convert_llm(sources[source], out, "fp8")
    got, mask, llm = features(out, tok, "fp32")
    want, _, _ = features(sources[source], tok, "fp32")
    cos = cosines(got, want, mask)
    assert float(cos.mean()) >= FP8_MEAN and float(cos.min()) >= FP8_MIN, (float(cos.mean()), float(cos.min()))
    assert report.cosine_to_fp32["mean"] >= FP8_MEAN
    assert llm.dtype == torch.float32 and llm.weights == "fp8 e4m3fn scaled"
    q = llm.model.encoder.block[0].layer[1].DenseReluDense.wi_0
    assert q.weight.dtype == torch.float8_e4m3fn and q.scale_weight.dtype == torch.float32
    assert llm.model.shared.weight.dtype == torch.float8_e4m3fn
    # fp8 compute in bf16 too (what a GPU or a CPU with bf16 units runs)
    got_bf16, _, llm_bf16 = features(out, tok, "bf16")
    assert llm_bf16.dtype == torch.bfloat16 and float(cosines(got_bf16, want, mask).mean()) >= FP8_MEAN - 0.005
    assert report.bytes < 0.3 * report.source_bytes + 8192


def test_metadata_config_tokenizer_and_keys(sources, tok, tmp_path):
    out = tmp_path / "hf-fp8.safetensors"
    convert_llm(sources["hf"], out, "fp8")
    source_config = json.loads((sources["hf"] / "config.json").read_text())
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        marker = f.get_tensor("scaled_fp8")
        dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    config = json.loads(meta["llm4gen.t5.config"])
    for field in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size", "layer_norm_epsilon",
                  "relative_attention_max_distance", "feed_forward_proj"):
        assert config[field] == source_config[field], field
    assert meta["llm4gen.weights"] == "fp8 e4m3fn scaled"
    assert meta["llm4gen.tokenizer.file"] == "spiece.model"
    assert meta["llm4gen.tokenizer.sha256"] == hashlib.sha256((tok / "spiece.model").read_bytes()).hexdigest()
    assert meta["llm4gen.llm.prefix"] == "pre " and meta["llm4gen.llm.max_tokens"] == "256"
    assert meta["llm4gen.llm.kind"] == "t5-encoder"
    assert marker.dtype == torch.float8_e4m3fn and marker.numel() == 0
    linears = {k for k in keys if k.endswith(".weight") and any(f".{n}." in k for n in ("q", "k", "v", "o", "wi_0",
                                                                                         "wi_1", "wo"))}
    assert len(linears) == 7 * 2
    for key in linears | {"shared.weight"}:
        assert dtypes[key] == "F8_E4M3" and dtypes[key[: -len("weight")] + "scale_weight"] == "F32", key
    assert all(dtypes[k] == "F32" for k in keys if "layer_norm" in k or "relative_attention_bias" in k)
    assert not any(k.startswith(("decoder.", "projection", "t5_encoder.", "lm_head")) for k in keys)
    # what shapes cannot tell came from the metadata: the converted model is the source's
    llm = load_llm(out, tokenizer_path=tok, dtype="fp32")
    assert llm.model.config.layer_norm_epsilon == 1e-3 and llm.model.config.relative_attention_max_distance == 64


def test_rankgen_metadata_without_a_tokenizer(sources, tmp_path):
    out = tmp_path / "rankgen-bf16.safetensors"
    convert_llm(sources["rankgen"], out, "bf16")
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    assert "scaled_fp8" not in keys and not any(k.endswith("scale_weight") for k in keys)
    assert meta["llm4gen.tokenizer.vocab_size"] == "512" and "at most 512 tokens" in meta["llm4gen.tokenizer"]
    assert meta["llm4gen.source"] == "rankgen" and "projection.weight" not in keys


def test_cli_llm_and_the_adapter_cli_still_work(sources, tmp_path, capsys):
    out = tmp_path / "cli-fp8.safetensors"
    assert convert_main(["llm", str(sources["rankgen"]), str(out), "--dtype", "fp8"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "cosine to the fp32 source" in printed and out.is_file()
    assert convert_main(["llm", str(sources["rankgen"]), str(out), "--dtype", "fp8"]) == 1  # exists: refused
    run = subprocess.run([sys.executable, "-m", "llm4gen_core.convert", "llm", str(sources["hf"]),
                          str(tmp_path / "cli-bf16.safetensors")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stdout
    run = subprocess.run([sys.executable, "-m", "llm4gen_core.convert", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert run.returncode == 0 and "--heads" in run.stdout and "llm" in run.stdout


def _leaves_nothing(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_damaged_or_unsuitable_sources_are_refused(sources, tmp_path):
    import shutil

    out = tmp_path / "out.safetensors"
    truncated = tmp_path / "truncated"
    shutil.copytree(sources["rankgen"], truncated)
    data = (truncated / "pytorch_model.bin").read_bytes()
    (truncated / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(LLM4GENError, match="pytorch_model.bin"):
        convert_llm(truncated, out, "bf16")
    assert _leaves_nothing(out)

    nan = tmp_path / "nan"
    shutil.copytree(sources["rankgen"], nan)
    state = torch.load(nan / "pytorch_model.bin", weights_only=True)
    state["t5_encoder.encoder.block.1.layer.1.DenseReluDense.wo.weight"][3, 3] = float("nan")
    torch.save(state, nan / "pytorch_model.bin")
    for dtype in ("bf16", "fp8"):
        with pytest.raises(LLM4GENError, match="wo.weight contains NaN"):
            convert_llm(nan, out, dtype)
        assert _leaves_nothing(out)

    big = tmp_path / "big"
    shutil.copytree(sources["rankgen"], big)
    state = torch.load(big / "pytorch_model.bin", weights_only=True)
    state["t5_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"][0, 0] = 1e6
    torch.save(state, big / "pytorch_model.bin")
    with pytest.raises(LLM4GENError, match="beyond torch.float16's range.*use bf16"):
        convert_llm(big, out, "fp16")
    assert _leaves_nothing(out)
    convert_llm(big, out, "bf16")  # bf16 holds it
    out.unlink()

    with pytest.raises(LLM4GENError, match="decoder-only"):
        convert_llm(tiny_llama_folder(tmp_path / "llama"), out, "bf16")
    fp8_file = tmp_path / "already-fp8.safetensors"
    convert_llm(sources["rankgen"], fp8_file, "fp8")
    with pytest.raises(LLM4GENError, match="already scaled fp8"):
        convert_llm(fp8_file, out, "bf16")
    with pytest.raises(LLM4GENError, match="must end in .safetensors"):
        convert_llm(sources["rankgen"], tmp_path / "out.bin", "bf16")
    with pytest.raises(LLM4GENError, match="one of bf16, fp16, fp8"):
        convert_llm(sources["rankgen"], out, "int4")
    with pytest.raises(LLM4GENError, match="outside the source"):
        convert_llm(sources["rankgen"], sources["rankgen"] / "x.safetensors", "bf16")
    assert _leaves_nothing(out)


def test_a_file_that_does_not_read_back_is_not_saved(sources, tmp_path, monkeypatch):
    """The verification can fail: a tensor written wrong, or a file whose features differ although
    every tensor is right (here: a config in the metadata that the source did not have)."""
    out = tmp_path / "out.safetensors"
    real_write = llm_convert._write_tensor
    calls = []

    def corrupt_one(f, t):
        calls.append(1)
        if len(calls) == 5:
            t = t.clone()
            t.reshape(-1)[0] = t.reshape(-1)[1]
        real_write(f, t)

    monkeypatch.setattr(llm_convert, "_write_tensor", corrupt_one)
    with pytest.raises(LLM4GENError, match="does not read back"):
        convert_llm(sources["rankgen"], out, "bf16")
    assert _leaves_nothing(out)
    monkeypatch.setattr(llm_convert, "_write_tensor", real_write)

    real_metadata = llm_convert._metadata

    def other_epsilon(src, dtype, config):
        return real_metadata(src, dtype, {**config, "layer_norm_epsilon": 0.5})

    monkeypatch.setattr(llm_convert, "_metadata", other_epsilon)
    for dtype, message in (("bf16", "other features than the source in bf16"),
                           ("fp8", "other features than the source quantized")):
        with pytest.raises(LLM4GENError, match=message):
            convert_llm(sources["rankgen"], out, dtype)
        assert _leaves_nothing(out)
