"""Load LLM and Load Cross-Adapter load again when their file changes on disk, through ComfyUI's own
executor and cache: an unchanged file is served from the cache; a file rewritten in place (the LLM's
weights are mapped from it) or replaced by a rename loads anew at the next run."""
from __future__ import annotations

import os
import shutil

import pytest


def _graph(llm: str, adapter: str) -> dict:
    return {
        "llm": {"class_type": "LLM4GENLoadLLM", "inputs": {"model": llm, "dtype": "fp32", "device": "cpu"}},
        "enc": {"class_type": "LLM4GENLLMEncode", "inputs": {"llm": ["llm", 0], "text": "a red cube", "max_tokens": 16}},
        "cam": {"class_type": "LLM4GENLoadCrossAdapter", "inputs": {"adapter_name": adapter}},
        "show_enc": {"class_type": "PreviewAny", "inputs": {"source": ["enc", 0]}},
        "show_cam": {"class_type": "PreviewAny", "inputs": {"source": ["cam", 0]}},
    }


def _cached(result) -> set[str]:
    return {node for event, data in result.messages if event == "execution_cached" for node in data.get("nodes", [])}


@pytest.fixture
def placed(comfy_base, llm4gen_models, tmp_path):
    """A copy of the tiny LLM folder and of the adapter under names of their own (so other tests'
    cached outputs are not touched), and where the copies are."""
    llm_dir = tmp_path / "fingerprint-llm"
    shutil.copytree(llm4gen_models.llm_path, llm_dir)
    adapter = tmp_path / "fingerprint-cam.safetensors"
    shutil.copy(llm4gen_models.adapter_path, adapter)
    return {"llm": comfy_base.place("LLM", llm_dir), "cam": comfy_base.place("llm4gen", adapter),
            "llm_file": llm_dir / "pytorch_model.bin", "cam_file": adapter}


def test_a_changed_model_file_loads_again(comfy_inprocess, placed):
    prompt = _graph(placed["llm"], placed["cam"])
    comfy_inprocess.run(prompt)
    assert {"llm", "cam", "enc"} <= _cached(comfy_inprocess.run(prompt))  # unchanged: served from the cache

    # Rewritten in place, same bytes, a newer modification time: Load LLM runs again, and so does
    # LLM Encode after it; the adapter is still cached.
    data = placed["llm_file"].read_bytes()
    placed["llm_file"].write_bytes(data)
    stat = placed["llm_file"].stat()
    os.utime(placed["llm_file"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = _cached(comfy_inprocess.run(prompt))
    assert "llm" not in again and "enc" not in again and "cam" in again

    # The adapter replaced by a rename (a new file under the old name): it loads again.
    fresh = placed["cam_file"].with_name("fingerprint-cam.partial")
    shutil.copy(placed["cam_file"], fresh)
    os.replace(fresh, placed["cam_file"])
    again = _cached(comfy_inprocess.run(prompt))
    assert "cam" not in again and "llm" in again


def test_a_missing_model_fingerprints_without_raising(comfy_inprocess, tmp_path):
    """ComfyUI turns an exception in a fingerprint into 'always changed' with a warning; the loader's
    own error (where it looked) is what the user should see, so the fingerprint never raises."""
    load_llm, load_cam = (comfy_inprocess.node_class(n) for n in ("LLM4GENLoadLLM", "LLM4GENLoadCrossAdapter"))
    assert load_llm.fingerprint_inputs(model="no-such-llm", dtype="auto", device="default") == ("missing", "no-such-llm")
    assert load_cam.fingerprint_inputs(adapter_name="no-such.safetensors") == ("missing", "no-such.safetensors")
    files_fingerprint = comfy_inprocess.pack_module().nodes.model_folders.files_fingerprint
    assert files_fingerprint(str(tmp_path / "gone"))[0] == "unreadable"
