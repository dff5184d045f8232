"""Load LLM keeps weights stored in the compute dtype in the file's mapping, and copies them when
ComfyUI was started with --disable-mmap (ComfyUI's own switch for its own loads)."""
from __future__ import annotations

import sys

import pytest

from llm4gen_core.weight_stream import _mappings_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _in_file(tensor, path) -> bool:
    start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
    return any(lo <= start and end <= hi for lo, hi in _mappings_of(path))


@pytest.mark.parametrize("disable_mmap", [False, True])
def test_load_llm_maps_the_weights_unless_comfyui_disables_mmap(comfy_inprocess, llm4gen_models, monkeypatch,
                                                               disable_mmap):
    from comfy.cli_args import args

    monkeypatch.setattr(args, "disable_mmap", disable_mmap)
    loaded = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(llm4gen_models.llm, "fp32", "cpu")[0]
    weights = [p for p in loaded.llm.model.parameters()]
    mapped = [_in_file(p, llm4gen_models.llm_path / "pytorch_model.bin") for p in weights]
    assert mapped == [not disable_mmap] * len(weights)
