"""Load LLM keeps weights stored in the compute dtype in the file's mapping, and copies them when
ComfyUI was started with --disable-mmap (ComfyUI's own switch for its own loads)."""
from __future__ import annotations

import sys

import pytest

from synthetic.llm import in_file_mapping

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


@pytest.mark.parametrize("disable_mmap", [False, True])
def test_load_llm_maps_the_weights_unless_comfyui_disables_mmap(comfy_inprocess, llm4gen_models, monkeypatch,
                                                               disable_mmap):
    from comfy.cli_args import args

    monkeypatch.setattr(args, "disable_mmap", disable_mmap)
    loaded = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(llm4gen_models.llm, "fp32", "cpu")[0]
    weights = [p for p in loaded.llm.model.parameters()]
    mapped = [in_file_mapping(p, llm4gen_models.llm_path / "pytorch_model.bin") for p in weights]
    assert mapped == [not disable_mmap] * len(weights)
