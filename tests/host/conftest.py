"""Fixtures that run graphs in a real, unmodified ComfyUI (see comfy_harness.py).

All session-scoped, sharing one temp ``--base-directory``:

- ``comfy_base``: the base directory (``ComfyBase``); ``comfy_base.place(folder, path)`` links
  a model file or folder in and returns the name loaders list it under.
- ``sd15_checkpoint``: name of the small random SD1.5 checkpoint in ``models/checkpoints``.
- ``sd15_parts``: names of that checkpoint's CLIP (``text_encoders``) and VAE (``vae``) files.
- ``clip_reference``: its CLIP text features computed by transformers, not ComfyUI.
- ``comfy_inprocess``: ComfyUI imported into this process (``InProcessComfy``).
- ``comfy_server``: ``main.py`` on 127.0.0.1 (``ComfyServer``); its log is attached to the
  report of any failing test that used it.
- ``comfy_host``: parametrised over both, for tests that must hold in either.
- ``llm4gen_models``: the tiny LLM and an SD1.5 Cross-Adapter in the model folders;
  ``sdxl_models``: a tiny SDXL UNet, its two text encoders and an SDXL Cross-Adapter (for the
  tiny LLM) in the model folders; ``sdxl_clip_reference``: those text encoders' features
  computed by transformers.
- ``fusion`` / ``sdxl_fusion``: the expected fusion (``compose_support.Fusion``) of the SD1.5 / SDXL
  Cross-Adapter; ``sdxl``: ``llm4gen_models`` with the SDXL Cross-Adapter.

Every test under tests/host is marked ``host``. A new host test looks like::

    import pytest
    from scripts import stock_graphs as g

    pytestmark = pytest.mark.host

    def test_my_node(comfy_host, comfy_base, sd15_checkpoint, clip_reference):
        cam = comfy_base.place("llm4gen", some_file)            # name for the loader's combo
        prompt = g.txt2img(sd15_checkpoint, "a cat", "")        # stock graph with the recorder
        prompt["my"] = {"class_type": "LLM4GENApplyConditioning", "inputs": {...}}
        prompt[g.SAMPLER]["inputs"]["positive"] = ["my", 0]
        result = comfy_host.run(prompt)                         # raises ComfyValidationError /
        (call, _) = result.records("unet")                      #   ComfyExecutionError
        assert call["context_shape"] == [2, 333, 768]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

import comfy_harness
from synthetic import sd15
from synthetic.clip_reference import ClipLReference

HOST_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HOST_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.host)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = getattr(item.session, "_llm4gen_comfy_server", None)
    uses_server = "comfy_server" in item.fixturenames or getattr(getattr(item, "callspec", None), "params", {}).get("comfy_host") == "server"
    if report.failed and server is not None and uses_server:
        report.sections.append(("ComfyUI server log (last 150 lines)", server.log_tail(150)))


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> comfy_harness.ComfyBase:
    return comfy_harness.ComfyBase(tmp_path_factory.mktemp("comfy-base"))


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy_base) -> str:
    return comfy_base.place("checkpoints", sd15.small_sd15_checkpoint(), "sd15-small.safetensors")


@pytest.fixture(scope="session")
def sd15_parts(comfy_base) -> dict[str, str]:
    checkpoint = sd15.small_sd15_checkpoint()
    return {"clip": comfy_base.place("text_encoders", sd15.clip_l_file(checkpoint)),
            "vae": comfy_base.place("vae", sd15.vae_file(checkpoint))}


@pytest.fixture(scope="session")
def clip_reference() -> ClipLReference:
    return ClipLReference(sd15.clip_l_file(sd15.small_sd15_checkpoint()))


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_base) -> comfy_harness.InProcessComfy:
    return comfy_harness.InProcessComfy(comfy_base)


@pytest.fixture(scope="session")
def comfy_server(comfy_base, request) -> comfy_harness.ComfyServer:
    server = comfy_harness.ComfyServer(comfy_base)
    request.session._llm4gen_comfy_server = server
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["inprocess", "server"])
def comfy_host(request):
    """Either host; both have run(prompt) -> RunResult, interrupt(), free()."""
    return request.getfixturevalue(f"comfy_{request.param}")


# --- LLM4GEN models ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LLM4GENModels:
    """Tiny random LLM4GEN models placed in the host's model folders (names as loaders list them)
    and where they are on disk (for references computed by the tests)."""

    llm: str            # models/LLM: a RankGen-layout T5 folder without a tokenizer (as released)
    llm_path: Path
    adapter: str        # models/llm4gen: CAM safetensors, CLIP 768 / LLM width of ``llm``
    adapter_path: Path
    t5_tokenizer: Path  # ComfyUI's bundled T5 tokenizer, which the loader falls back on
    llm_dim: int


@pytest.fixture(scope="session")
def llm4gen_models(comfy_base, tmp_path_factory) -> LLM4GENModels:
    from llm4gen_core import CrossAdapterConfig, save_cross_adapter
    from synthetic.cam import cam_state
    from synthetic.comfy_env import comfyui_root
    from synthetic.llm import tiny_t5_encoder, tiny_t5_rankgen_folder

    folder = tmp_path_factory.mktemp("llm4gen-models")
    # The real T5 vocabulary size, so ComfyUI's T5 tokenizer fits it as it fits RankGen.
    t5 = tiny_t5_encoder(seed=3, vocab_size=32128)
    llm_path = tiny_t5_rankgen_folder(folder / "tiny-rankgen-t5", t5, fmt="bin")
    cfg = CrossAdapterConfig(clip_dim=768, llm_dim=t5.config.d_model, heads=8, ffn_dim=3072, depth=1)
    adapter_path = folder / "tiny-llm4gen-cam.safetensors"
    save_cross_adapter(cam_state(cfg, seed=11), adapter_path, cfg)
    return LLM4GENModels(
        llm=comfy_base.place("LLM", llm_path), llm_path=llm_path,
        adapter=comfy_base.place("llm4gen", adapter_path), adapter_path=adapter_path,
        t5_tokenizer=comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer", llm_dim=t5.config.d_model,
    )


# --- SDXL ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SDXLModels:
    """Tiny random SDXL-architecture models placed in the host's model folders (names as loaders
    list them; tests/synthetic/sdxl.py says what each is)."""

    unet: str           # models/diffusion_models: stock UNETLoader detects it as SDXL
    clip_l: str         # models/text_encoders: for the tests' LLM4GENTestSDXLCLIPLoader
    clip_g: str
    adapter: str        # models/llm4gen: CAM safetensors, CLIP 2048 / the tiny LLM's width
    adapter_path: Path


@pytest.fixture(scope="session")
def sdxl_models(comfy_base) -> SDXLModels:
    from synthetic import sdxl

    return SDXLModels(
        unet=comfy_base.place("diffusion_models", sdxl.tiny_sdxl_unet(), "sdxl-tiny-unet.safetensors"),
        clip_l=comfy_base.place("text_encoders", sdxl.tiny_sdxl_clip_l(), "sdxl-tiny-clip_l.safetensors"),
        clip_g=comfy_base.place("text_encoders", sdxl.tiny_sdxl_clip_g(), "sdxl-tiny-clip_g.safetensors"),
        adapter=comfy_base.place("llm4gen", sdxl.tiny_sdxl_projector(), "sdxl-tiny-cam.safetensors"),
        adapter_path=sdxl.tiny_sdxl_projector(),
    )


@pytest.fixture(scope="session")
def fusion(llm4gen_models):
    """The expected SD1.5 fusion, computed with ``llm4gen_core`` on the same files (compose_support.Fusion)."""
    from compose_support import Fusion

    return Fusion(llm4gen_models)


@pytest.fixture(scope="session")
def sdxl(llm4gen_models, sdxl_models) -> LLM4GENModels:
    """The tiny LLM with the SDXL Cross-Adapter (names for the graphs, paths for the references)."""
    return dataclasses.replace(llm4gen_models, adapter=sdxl_models.adapter, adapter_path=sdxl_models.adapter_path)


@pytest.fixture(scope="session")
def sdxl_fusion(sdxl):
    """The expected SDXL fusion, computed with ``llm4gen_core`` on the same files (compose_support.Fusion)."""
    from compose_support import Fusion

    return Fusion(sdxl)


@pytest.fixture(scope="session")
def sdxl_clip_reference():
    from synthetic import sdxl
    from synthetic.clip_reference import SDXLClipReference

    return SDXLClipReference(sdxl.tiny_sdxl_clip_l(), sdxl.tiny_sdxl_clip_g())
