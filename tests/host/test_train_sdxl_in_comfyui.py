"""What ``python -m llm4gen_core.train`` writes for an SDXL base is what a real ComfyUI runs.

The base is a diffusers SDXL folder holding exactly the tiny SDXL that ComfyUI detects as SDXL
(``synthetic.sdxl.tiny_sdxl_diffusers_base``: its UNet renamed to diffusers' layout, CLIP-L and
bigG as transformers models). The trainer runs in-process on it with the host's tiny RankGen T5
and a few generated images, at 64x64, batch 1, fp32, one step. Then, in ComfyUI 0.3.75:

1. ``cam+unet --unet-format comfyui``: stock Load Diffusion Model reads ``unet_comfyui.safetensors``
   as SDXL; its UNet, given the ``y`` ComfyUI builds from bigG's pooled output and the size/crop
   values (``SDXL.encode_adm``), predicts what the trained diffusers UNet (weights from the run's
   checkpoint, not the export) predicts given the same pooled output and the trainer's time ids;
   and that ``y`` is the one diffusers builds inside the UNet (pooled + embedded time ids).
2. The graph: trained UNet, the tests' SDXL CLIP loader, CLIP Text Encode (SDXL), Apply LLM4GEN
   Conditioning with the trained adapter from models/llm4gen: the UNet gets the context of the
   trainer's own text path + CAM for the positive prompt and for "", and the ``y`` the same graph
   without LLM4GEN gives, which is also the trainer's for those sizes.
3. ``cam+lora``: stock LoraLoaderModelOnly patches the base SDXL UNet with every key of
   ``lora.safetensors``, once each, on the weight it was trained on, and predicts what diffusers'
   base UNet with the trained peft LoRA predicts.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from scripts import llm4gen_graphs as lg  # noqa: E402
from scripts import stock_graphs as g  # noqa: E402
from compose_support import rows_by_side  # noqa: E402
from llm4gen_core import load_llm  # noqa: E402
from llm4gen_core.train.base import load_base  # noqa: E402
from llm4gen_core.train.objective import sdxl_time_ids  # noqa: E402
from llm4gen_core.train.samples import Batch  # noqa: E402
from llm4gen_core.train.unet_layout import diffusers_key_map  # noqa: E402
from synthetic import sdxl  # noqa: E402
from scripts.tiny_training import build_data  # noqa: E402
from train_support import (  # noqa: E402
    FP32, Run, lora_key_warnings, peft_reference, run_trainer, trainable_state, trained_features,
)

pytestmark = pytest.mark.slow

SIZE = 64                           # training resolution and the graphs' latent size
LORA_RANK, LORA_ALPHA = 4, 2.0      # LoRA scale 0.5: an export that drops alpha/rank is caught
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # what the trainer puts a LoRA on
POSITIVE = "a red circle on a grey background"
# CLIP Text Encode (SDXL)'s size and crop values, each unlike its default, and the same values as
# the trainer's per-sample (original h, w), (crop top, left); the target is the training resolution.
SIZES = dict(width=1024, height=768, crop_w=32, crop_h=16, target_width=SIZE, target_height=SIZE)
ORIGINAL, CROP = (768, 1024), (16, 32)


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory, llm4gen_models):
    return {"base": sdxl.tiny_sdxl_diffusers_base(), "llm": llm4gen_models.llm_path,
            "tokenizer": llm4gen_models.t5_tokenizer, "data": build_data(tmp_path_factory.mktemp("train-sdxl-data"))}


def _train(inputs: dict, output: Path, mode: str, *extra: str) -> Run:
    args = ["--base", str(inputs["base"]), "--llm", str(inputs["llm"]), "--tokenizer", str(inputs["tokenizer"]),
            "--data", str(inputs["data"]), "--train", mode, "--resolution", str(SIZE), "--batch-size", "1",
            "--max-steps", "1", "--checkpoint-every", "1", "--caption-dropout", "0", "--seed", "3",
            "--mixed-precision", "no", *extra]
    return run_trainer(args, output)


@pytest.fixture(scope="module")
def unet_run(train_inputs, tmp_path_factory) -> Run:
    run = _train(train_inputs, tmp_path_factory.mktemp("train-sdxl-unet"), "cam+unet", "--unet-format", "comfyui",
                 "--unet-lr", "1e-3")
    assert (run.output / "unet_comfyui.safetensors").is_file() and not (run.output / "unet").exists()
    return run


@pytest.fixture(scope="module")
def lora_run(train_inputs, tmp_path_factory) -> Run:
    run = _train(train_inputs, tmp_path_factory.mktemp("train-sdxl-lora"), "cam+lora", "--lora-rank", str(LORA_RANK),
                 "--lora-alpha", str(LORA_ALPHA), "--unet-lr", "1e-2")
    assert (run.output / "lora.safetensors").is_file()
    return run


@pytest.fixture(scope="module")
def trainer_side(train_inputs):
    """The base and the LLM as the trainer loads them (diffusers/transformers, fp32)."""
    base = load_base(train_inputs["base"])
    assert base.is_sdxl and base.clip_dim == 2048
    llm = load_llm(train_inputs["llm"], tokenizer_path=train_inputs["tokenizer"], dtype="fp32")
    return base, llm


@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    comfy_inprocess.free()
    yield comfy_inprocess
    comfy_inprocess.free()


def trainer_added(base, pooled: torch.Tensor, originals, crops) -> tuple[dict, torch.Tensor]:
    """SDXL's added conditioning as the trainer builds it (``sdxl_time_ids`` on a batch with these
    original sizes and crops) and the ``y`` diffusers' UNet makes of it internally: the pooled
    output, then each time id's sinusoidal embedding (``add_time_proj``), as ``get_aug_embed``."""
    batch = Batch(torch.zeros(len(originals), 3, SIZE, SIZE), ["x"] * len(originals), [[]] * len(originals),
                  [str(i) for i in range(len(originals))], original_sizes=list(originals), crop_top_lefts=list(crops))
    time_ids = sdxl_time_ids(batch, SIZE)
    with torch.no_grad():
        embedded = base.unet.add_time_proj(time_ids.flatten()).reshape(len(originals), -1)
    return {"text_embeds": pooled, "time_ids": time_ids}, torch.cat([pooled, embedded], dim=1)


def comfy_y(model, pooled: torch.Tensor, sizes: list[dict]) -> torch.Tensor:
    """``y`` as ComfyUI's SDXL model builds it from a conditioning's pooled output and size keys."""
    return torch.cat([model.encode_adm(pooled_output=pooled[i: i + 1], **s) for i, s in enumerate(sizes)])


def _load_comfy_unet(comfy, name: str):
    import comfy.model_base as model_base
    import comfy.supported_models as supported

    (patcher,) = comfy.node_class("UNETLoader")().load_unet(name, "default")
    assert type(patcher.model) is model_base.SDXL and type(patcher.model.model_config) is supported.SDXL
    return patcher


# --- 1. the exported UNet, below the sampler --------------------------------------------------

def test_exported_sdxl_unet_loads_as_sdxl_and_predicts_what_the_trained_unet_predicts(comfy, comfy_base, unet_run,
                                                                                      trainer_side):
    import copy

    base, _ = trainer_side
    name = comfy_base.place("diffusion_models", unet_run.output / "unet_comfyui.safetensors",
                            "train-host-sdxl-unet.safetensors")
    patcher = _load_comfy_unet(comfy, name)
    comfy_unet = patcher.model.diffusion_model
    assert comfy_unet.dtype == torch.float32
    trained = copy.deepcopy(base.unet).eval()
    state = trainable_state(unet_run.output / "checkpoint-1")
    assert set(state) == set(trained.state_dict()), "the checkpoint does not hold the whole UNet"
    trained.load_state_dict(state)

    features, context = trained_features(*trainer_side, unet_run.output / "adapter.safetensors", [POSITIVE, ""])
    assert context.shape == (2, 77 + 256, 2048) and features.pooled.shape == (2, 1280)
    originals, crops = [ORIGINAL, (SIZE, SIZE)], [CROP, (0, 0)]
    added, y_trainer = trainer_added(base, features.pooled, originals, crops)
    sizes = [SIZES, dict(width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE, target_height=SIZE)]
    y = comfy_y(patcher.model, features.pooled, sizes)
    assert y.shape == (2, 2816)
    diff = (y - y_trainer).abs().max().item()
    assert diff < FP32, f"ComfyUI's y differs from the one the trainer's UNet builds by {diff}"

    g_ = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g_)
    t = torch.tensor([35.0, 780.0])
    with torch.no_grad():
        theirs = comfy_unet(x, timesteps=t, context=context, y=y).float()
        ours = trained(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        before = base.unet.eval()(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert theirs.shape == ours.shape == (2, 4, SIZE // 8, SIZE // 8)
    assert ours.abs().mean() > 0.05
    diff = (theirs - ours).abs().max().item()
    assert diff < FP32, f"ComfyUI's SDXL UNet differs from the trained diffusers UNet by {diff}"
    change = (ours - before).abs().max().item()
    assert change > 100 * FP32, f"training barely changed the UNet ({change}): the parity would prove little"


# --- 2. the graph: CLIP Text Encode (SDXL) fused with the trained adapter ---------------------

def sdxl_encode_graph(unet: str, sdxl_models, prefix: str) -> dict:
    """The tests' SDXL txt2img: the UNet, the SDXL CLIP loader, the recorder, one step, 64x64."""
    return g.sdxl_txt2img(unet, sdxl_models.clip_l, sdxl_models.clip_g, POSITIVE, "", steps=1, width=SIZE,
                          height=SIZE, prefix=prefix)


def with_sdxl_encode(prompt: dict) -> dict:
    """The graph's CLIP Text Encode nodes replaced by CLIP Text Encode (SDXL) on the same text."""
    for node in (g.POS, g.NEG):
        inputs = prompt[node]["inputs"]
        prompt[node] = {"class_type": "CLIPTextEncodeSDXL",
                        "inputs": {"clip": inputs["clip"], "text_g": inputs["text"], "text_l": inputs["text"], **SIZES}}
    return prompt


def test_graph_feeds_the_trained_unet_the_trainers_context_and_y(comfy, comfy_base, sdxl_models, llm4gen_models,
                                                                 unet_run, trainer_side):
    adapter_path = unet_run.output / "adapter.safetensors"
    adapter = comfy_base.place("llm4gen", adapter_path, "train-host-sdxl-adapter.safetensors")
    unet = comfy_base.place("diffusion_models", unet_run.output / "unet_comfyui.safetensors",
                            "train-host-sdxl-unet.safetensors")
    stock = comfy.run(with_sdxl_encode(sdxl_encode_graph(unet, sdxl_models, "train-sdxl-stock")))
    (stock_call,) = stock.records("unet")
    assert stock_call["context_shape"] == [2, 77, 2048] and stock_call["y_shape"] == [2, 2816]
    # LLM Encode reads each prompt's text before the encoders become CLIP Text Encode (SDXL)
    fused_prompt = with_sdxl_encode(lg.with_apply(sdxl_encode_graph(unet, sdxl_models, "train-sdxl-fused"),
                                                  llm4gen_models.llm, adapter))
    assert {fused_prompt[n]["class_type"] for n in (g.POS, g.NEG)} == {"CLIPTextEncodeSDXL"}
    fused = comfy.run(fused_prompt)
    (call,) = fused.records("unet")  # positive and negative, 77 + 256 tokens each, batched
    assert call["context_shape"] == [2, 77 + 256, 2048] and call["y_shape"] == [2, 2816]
    assert type(comfy.node_output(g.CKPT)[0].model.model_config).__name__ == "SDXL"

    texts = {"positive": POSITIVE, "negative": ""}
    features, context = trained_features(*trainer_side, adapter_path, list(texts.values()))
    _, y_trainer = trainer_added(trainer_side[0], features.pooled, [ORIGINAL] * 2, [CROP] * 2)
    expected = {side: (context[i: i + 1], y_trainer[i: i + 1]) for i, side in enumerate(texts)}
    got, got_y, stock_y = rows_by_side(call), rows_by_side(call, "y"), rows_by_side(stock_call, "y")
    for side, text in texts.items():
        assert got[side].dtype == torch.float32
        diff = (got[side] - expected[side][0]).abs().max().item()
        assert diff < FP32, f"{side} ({text!r}): the UNet's context differs from training's by {diff}"
        assert torch.equal(got_y[side], stock_y[side]), f"{side}: y is not the stock graph's"
        diff = (got_y[side] - expected[side][1]).abs().max().item()
        assert diff < FP32, f"{side}: ComfyUI's y differs from the trainer's for the same sizes by {diff}"
    assert (context[0] - context[1]).abs().max() > 0.1, "the two prompts must differ"


# --- 3. the LoRA through stock LoraLoaderModelOnly -------------------------------------------

def test_trained_lora_patches_comfyuis_sdxl_unet_as_peft_computes_it(comfy, comfy_base, sdxl_models, lora_run,
                                                                    trainer_side, caplog):
    import comfy.model_management as mm
    from safetensors import safe_open

    base, _ = trainer_side
    name = comfy_base.place("loras", lora_run.output / "lora.safetensors", "train-host-sdxl-lora.safetensors")
    model = _load_comfy_unet(comfy, sdxl_models.unet)
    with caplog.at_level(logging.WARNING):
        (patched,) = comfy.node_class("LoraLoaderModelOnly")().load_lora_model_only(model, name, 1.0)
    assert lora_key_warnings(caplog) == []
    with safe_open(str(lora_run.output / "lora.safetensors"), framework="pt") as f:
        modules = {k[: -len(".lora_down.weight")] for k in f.keys() if k.endswith(".lora_down.weight")}
    key_map = diffusers_key_map(base.unet.config)
    wanted = {"lora_unet_" + n.replace(".", "_"): "diffusion_model." + key_map[n + ".weight"]
              for n, _ in base.unet.named_modules() if n.endswith(tuple("." + m for m in LORA_TARGETS))}
    assert modules == set(wanted) and len(modules) == 24 * 2 * 4  # 24 transformer blocks, 2 attentions, 4 layers
    assert set(patched.patches) == set(wanted.values())
    assert all(len(p) == 1 for p in patched.patches.values())

    features, context = trained_features(*trainer_side, lora_run.output / "adapter.safetensors", ["a blue stripe", ""])
    added, _ = trainer_added(base, features.pooled, [ORIGINAL] * 2, [CROP] * 2)
    reference = peft_reference(base.unet, lora_run.output / "checkpoint-1", LORA_RANK, LORA_ALPHA, LORA_TARGETS)
    g_ = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g_)
    t = torch.tensor([120.0, 640.0])
    try:
        mm.load_models_gpu([patched])
        comfy_unet = patched.model.diffusion_model
        assert comfy_unet.dtype == torch.float32
        y = comfy_y(patched.model, features.pooled, [SIZES, SIZES])
        with torch.no_grad():
            theirs = comfy_unet(x, timesteps=t, context=context, y=y).float()
            ours = reference(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
            before = base.unet.eval()(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    finally:
        mm.unload_all_models()
    diff = (theirs - ours).abs().max().item()
    assert diff < FP32, f"the LoRA-patched ComfyUI SDXL UNet differs from peft's by {diff}"
    change = (ours - before).abs().max().item()
    assert change > 100 * FP32, f"the LoRA barely changes the prediction ({change}): the parity would prove little"
