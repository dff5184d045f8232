"""What ``python -m llm4gen_core.train`` writes is what a real ComfyUI runs.

The trainer runs in-process (``llm4gen_core.train.cli.main``) on a base ComfyUI detects as SD1.5
(the host's small single-file checkpoint, full-size CLIP-L and VAE), the host's tiny RankGen-layout
T5 and a few generated images, at 64x64 for two steps. Then, in ComfyUI 0.3.75:

1. ``cam+unet``: the bundled text-to-image workflow, loaders pointed at the written
   ``adapter.safetensors`` and ``unet_comfyui.safetensors``, gives the UNet the context the
   trainer's own text path (``FrozenTextEncoders`` + the trained CAM) computes, for the positive
   prompt and for the empty negative, within fp32 tolerance. ComfyUI's text encoder is forced to
   fp32 (``--fp32-text-enc``): by default it keeps CLIP's weights in fp16 on CPU. The small
   checkpoint stores them in fp16 anyway and ComfyUI computes CLIP's activations in fp32, so here
   that changes nothing (measured: 2e-6 either way); for an fp32 base it would.
2. Below the sampler: ComfyUI's own loader on ``unet_comfyui.safetensors`` predicts the noise the
   diffusers ``unet/`` predicts (fp32, 77 + 256 tokens), and that prediction is not the base's.
3. ``cam+lora``: stock LoraLoaderModelOnly uses every key of ``lora.safetensors`` on the weight the
   LoRA was trained on, and the patched UNet predicts what the base UNet with the trained peft LoRA
   (read from the run's checkpoint, scaled by the alpha passed on the command line) predicts.
4. The adapter records the LLM recipe it was trained with (``llm4gen.llm.*``, 48 tokens here): with
   LLM Encode left at 256 in the workflow, the UNet still gets 77 + 48 tokens, as in training.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from comfy_harness import RECORDER_NODE  # noqa: E402
from llm4gen_core import load_llm  # noqa: E402
from llm4gen_core.recipe import META_PREFIX, LLMRecipe  # noqa: E402
from llm4gen_core.train.base import load_base  # noqa: E402
from llm4gen_core.train.unet_layout import diffusers_key_map  # noqa: E402
from scripts import workflow_api  # noqa: E402
from synthetic import sd15  # noqa: E402
from synthetic.comfy_env import comfyui_root  # noqa: E402
from scripts.tiny_training import build_data  # noqa: E402
from train_support import FP32, Run, lora_key_warnings, peft_reference, run_trainer, trained_features  # noqa: E402

pytestmark = pytest.mark.slow

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "sd15" / "llm4gen_sd15_txt2img.json"
STEPS, SIZE = 2, 64                 # sampler steps and image size in the graphs
LORA_RANK, LORA_ALPHA = 4, 2.0       # LoRA scale 0.5: an export that drops alpha/rank is caught
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # what the trainer puts a LoRA on
LORA_MAX_TOKENS = 48                 # the cam+lora run's LLM length (LLM Encode in the workflow says 256)

@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory, llm4gen_models):
    root = comfyui_root()
    return {"base": sd15.small_sd15_checkpoint(), "clip_tokenizer": root / "comfy" / "sd1_tokenizer",
            "llm": llm4gen_models.llm_path, "tokenizer": llm4gen_models.t5_tokenizer,
            "data": build_data(tmp_path_factory.mktemp("train-host-data"))}


def _train(inputs: dict, output: Path, mode: str, *extra: str) -> Run:
    args = ["--base", str(inputs["base"]), "--clip-tokenizer", str(inputs["clip_tokenizer"]),
            "--llm", str(inputs["llm"]), "--tokenizer", str(inputs["tokenizer"]), "--data", str(inputs["data"]),
            "--train", mode, "--resolution", str(SIZE), "--batch-size", "1",
            "--max-steps", "2", "--checkpoint-every", "2", "--caption-dropout", "0", "--seed", "3", *extra]
    return run_trainer(args, output)


@pytest.fixture(scope="module")
def unet_run(train_inputs, tmp_path_factory) -> Run:
    run = _train(train_inputs, tmp_path_factory.mktemp("train-host-unet"), "cam+unet",
                 "--unet-format", "both", "--unet-lr", "1e-3")
    assert (run.output / "unet" / "config.json").is_file() and (run.output / "unet_comfyui.safetensors").is_file()
    return run


@pytest.fixture(scope="module")
def lora_run(train_inputs, tmp_path_factory) -> Run:
    run = _train(train_inputs, tmp_path_factory.mktemp("train-host-lora"), "cam+lora",
                 "--lora-rank", str(LORA_RANK), "--lora-alpha", str(LORA_ALPHA), "--unet-lr", "1e-2",
                 "--llm-max-tokens", str(LORA_MAX_TOKENS))
    assert (run.output / "lora.safetensors").is_file()
    return run


@pytest.fixture(scope="module")
def trainer_side(train_inputs):
    """The base and the LLM as the trainer loads them (diffusers/transformers, fp32)."""
    base = load_base(train_inputs["base"], train_inputs["clip_tokenizer"])
    llm = load_llm(train_inputs["llm"], tokenizer_path=train_inputs["tokenizer"], dtype="fp32")
    return base, llm


def trained_context(trainer_side, adapter_path: Path, texts: list[str]) -> torch.Tensor:
    """The UNet context the trainer computes for ``texts``: its own text path, the written CAM, the
    recipe that CAM records."""
    return trained_features(*trainer_side, adapter_path, texts)[1]


# --- the host -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    """The in-process ComfyUI with its text encoders in fp32 (``--fp32-text-enc``; on CPU it
    otherwise keeps CLIP's weights in fp16), nothing cached from other prompts; restored after."""
    import comfy.cli_args

    args = comfy.cli_args.args
    before = args.fp32_text_enc
    comfy_inprocess.free()
    args.fp32_text_enc = True
    yield comfy_inprocess
    args.fp32_text_enc = before
    comfy_inprocess.free()


def node_definitions(comfy_host, class_types) -> dict:
    """``/object_info`` entries (the parts the workflow conversion reads) from ComfyUI's own node
    classes: V3 nodes describe themselves; a V1 node's inputs are its INPUT_TYPES in their order."""
    info = {}
    for name in class_types:
        cls = comfy_host.node_class(name)
        if hasattr(cls, "GET_NODE_INFO_V1"):
            info[name] = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            info[name] = {"input": inputs, "input_order": {group: list(specs) for group, specs in inputs.items()},
                          "output": list(cls.RETURN_TYPES), "name": name}
    return info


def bundled_workflow(comfy_host) -> dict:
    """workflows/sd15/llm4gen_sd15_txt2img.json as the API prompt the frontend would queue."""
    workflow = workflow_api.load(WORKFLOW)
    info = node_definitions(comfy_host, workflow_api.node_types(workflow))
    return workflow_api.ui_to_api(workflow, info, rng=random.Random(0))


def only(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def prepared(prompt: dict, **files: str) -> dict:
    """The workflow on the test's files (the widget values a user picks), 64x64, two steps, and the
    recorder (keeping the tensors) between the sampler and its model."""
    prompt = workflow_api.copy_prompt(prompt)
    for class_type, name in (("UNETLoader", "unet_name"), ("CheckpointLoaderSimple", "ckpt_name"),
                             ("LLM4GENLoadLLM", "model"), ("LLM4GENLoadCrossAdapter", "adapter_name")):
        if class_type in files:
            prompt[only(prompt, class_type)]["inputs"][name] = files[class_type]
    workflow_api.set_inputs(prompt, ("EmptyLatentImage",), width=SIZE, height=SIZE)
    workflow_api.set_inputs(prompt, ("KSampler",), steps=STEPS)
    sampler = prompt[only(prompt, "KSampler")]
    prompt["record"] = {"class_type": RECORDER_NODE,
                        "inputs": {"model": sampler["inputs"]["model"], "label": "unet", "keep_tensors": True}}
    sampler["inputs"]["model"] = ["record", 0]
    return prompt


def prompt_texts(prompt: dict) -> dict[str, str]:
    """The positive and negative text the workflow's fusing nodes get (from its text primitives)."""
    sampler = prompt[only(prompt, "KSampler")]["inputs"]
    found = {}
    for side in ("positive", "negative"):
        fusing = prompt[sampler[side][0]]
        source = fusing["inputs"]["text"]
        found[side] = prompt[source[0]]["inputs"]["value"] if isinstance(source, list) else source
    return found


def rows_by_side(record: dict) -> dict[str, torch.Tensor]:
    side = {0: "positive", 1: "negative"}
    return {side[c]: record["context"][i: i + 1] for i, c in enumerate(record["cond_or_uncond"])}


def assert_trained_context(result, trainer_side, adapter_path: Path, texts: dict[str, str], tokens: int) -> None:
    calls = result.records("unet")
    assert len(calls) == STEPS
    for call in calls:  # positive and negative, each 77 CLIP + the trained LLM length, batched in one call
        assert call["context_shape"] == [2, tokens, 768] and sorted(call["cond_or_uncond"]) == [0, 1]
    expected = {side: trained_context(trainer_side, adapter_path, [text]) for side, text in texts.items()}
    for call in calls:
        for side, context in rows_by_side(call).items():
            assert context.dtype == torch.float32
            diff = (context - expected[side]).abs().max().item()
            assert diff < FP32, f"{side} ({texts[side]!r}): the UNet's context differs from training's by {diff}"
    assert (expected["positive"] - expected["negative"]).abs().max() > 0.1, "the two prompts must differ"


# --- 1. the bundled workflow on the cam+unet run ---------------------------------------------

def test_bundled_workflow_feeds_the_trained_unet_the_trained_context(comfy, comfy_base, sd15_checkpoint,
                                                                     llm4gen_models, unet_run, trainer_side):
    adapter = comfy_base.place("llm4gen", unet_run.output / "adapter.safetensors", "train-host-unet-adapter.safetensors")
    unet = comfy_base.place("diffusion_models", unet_run.output / "unet_comfyui.safetensors",
                            "train-host-unet.safetensors")
    workflow = bundled_workflow(comfy)
    prompt = prepared(workflow, UNETLoader=unet, CheckpointLoaderSimple=sd15_checkpoint,
                      LLM4GENLoadLLM=llm4gen_models.llm, LLM4GENLoadCrossAdapter=adapter)
    texts = prompt_texts(prompt)
    assert texts["negative"] == "" and len(texts["positive"]) > 100, texts
    result = comfy.run(prompt)
    assert len(result.images()) == 1
    model = comfy.node_output(only(prompt, "UNETLoader"))[0].model
    assert type(model.model_config).__name__ == "SD15"
    assert_trained_context(result, trainer_side, unet_run.output / "adapter.safetensors", texts, 77 + 256)


# --- 2. noise prediction below the sampler ----------------------------------------------------

def test_exported_comfyui_unet_predicts_what_the_diffusers_unet_predicts(comfy, comfy_base, unet_run,
                                                                         trainer_side):
    from diffusers import UNet2DConditionModel

    name = comfy_base.place("diffusion_models", unet_run.output / "unet_comfyui.safetensors",
                            "train-host-unet.safetensors")
    (patcher,) = comfy.node_class("UNETLoader")().load_unet(name, "default")
    assert type(patcher.model.model_config).__name__ == "SD15"
    comfy_unet = patcher.model.diffusion_model
    assert comfy_unet.dtype == torch.float32
    trained = UNet2DConditionModel.from_pretrained(unet_run.output / "unet").eval()
    base_unet = trainer_side[0].unet.eval()

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g)
    t = torch.tensor([35.0, 780.0])
    context = trained_context(trainer_side, unet_run.output / "adapter.safetensors", ["a red circle", ""])
    assert context.shape == (2, 77 + 256, 768)
    with torch.no_grad():
        theirs = comfy_unet(x, timesteps=t, context=context).float()
        ours = trained(x, t, encoder_hidden_states=context).sample
        before = base_unet(x, t, encoder_hidden_states=context).sample
    assert theirs.shape == ours.shape == (2, 4, SIZE // 8, SIZE // 8)
    assert ours.abs().mean() > 0.05
    diff = (theirs - ours).abs().max().item()
    assert diff < FP32, f"ComfyUI's UNet differs from the diffusers unet/ by {diff}"
    change = (ours - before).abs().max().item()
    assert change > 100 * FP32, f"training barely changed the UNet ({change}): the parity would prove little"


# --- 3. the LoRA through stock LoraLoaderModelOnly -------------------------------------------

def _peft_reference(base_unet, lora_run: Run):
    """The base UNet with the LoRA the run trained, as peft computes it (train_support.peft_reference)."""
    return peft_reference(base_unet, lora_run.output / "checkpoint-2", LORA_RANK, LORA_ALPHA, LORA_TARGETS)


def test_trained_lora_patches_comfyuis_unet_as_peft_computes_it(comfy, comfy_base, sd15_checkpoint, lora_run,
                                                                trainer_side, caplog):
    import comfy.model_management as mm

    name = comfy_base.place("loras", lora_run.output / "lora.safetensors", "train-host-lora.safetensors")
    model, _, _ = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd15_checkpoint)
    with caplog.at_level(logging.WARNING):
        (patched,) = comfy.node_class("LoraLoaderModelOnly")().load_lora_model_only(model, name, 1.0)
    assert lora_key_warnings(caplog) == []
    # every LoRA module patches the weight of the diffusers module it was trained on, once
    from safetensors import safe_open

    with safe_open(str(lora_run.output / "lora.safetensors"), framework="pt") as f:
        modules = {k[: -len(".lora_down.weight")] for k in f.keys() if k.endswith(".lora_down.weight")}
    base_unet = trainer_side[0].unet
    key_map = diffusers_key_map(base_unet.config)
    wanted = {}
    for name_, _ in base_unet.named_modules():
        if name_.endswith(tuple("." + m for m in LORA_TARGETS)):
            wanted["lora_unet_" + name_.replace(".", "_")] = "diffusion_model." + key_map[name_ + ".weight"]
    assert modules == set(wanted) and len(modules) == 32
    assert set(patched.patches) == set(wanted.values())
    assert all(len(p) == 1 for p in patched.patches.values())

    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g)
    t = torch.tensor([120.0, 640.0])
    context = trained_context(trainer_side, lora_run.output / "adapter.safetensors", ["a blue stripe", ""])
    reference = _peft_reference(base_unet, lora_run)
    try:
        mm.load_models_gpu([patched])
        comfy_unet = patched.model.diffusion_model
        assert comfy_unet.dtype == torch.float32
        with torch.no_grad():
            theirs = comfy_unet(x, timesteps=t, context=context).float()
            ours = reference(x, t, encoder_hidden_states=context).sample
            before = base_unet.eval()(x, t, encoder_hidden_states=context).sample
    finally:
        mm.unload_all_models()
    diff = (theirs - ours).abs().max().item()
    assert diff < FP32, f"the LoRA-patched ComfyUI UNet differs from peft's by {diff}"
    change = (ours - before).abs().max().item()
    assert change > 100 * FP32, f"the LoRA barely changes the prediction ({change}): the parity would prove little"


# --- 4. the recorded recipe decides the LLM length -------------------------------------------

def test_adapter_recipe_overrides_llm_encode_max_tokens_in_the_workflow(comfy, comfy_base, sd15_checkpoint,
                                                                        llm4gen_models, lora_run, trainer_side,
                                                                        caplog):
    from safetensors import safe_open

    adapter_path = lora_run.output / "adapter.safetensors"
    with safe_open(str(adapter_path), framework="pt") as f:
        metadata = f.metadata()
    assert {k for k in metadata if k.startswith(META_PREFIX)} == set(LLMRecipe().to_metadata())
    assert LLMRecipe.from_metadata(metadata) == LLMRecipe(max_tokens=LORA_MAX_TOKENS, llm_name=llm4gen_models.llm_path.name)

    adapter = comfy_base.place("llm4gen", adapter_path, "train-host-lora-adapter.safetensors")
    lora = comfy_base.place("loras", lora_run.output / "lora.safetensors", "train-host-lora.safetensors")
    prompt = prepared(bundled_workflow(comfy), CheckpointLoaderSimple=sd15_checkpoint,
                      LLM4GENLoadLLM=llm4gen_models.llm, LLM4GENLoadCrossAdapter=adapter)
    # cam+lora: the sampler's model is the checkpoint's UNet with the LoRA, not a separate UNet
    checkpoint = only(prompt, "CheckpointLoaderSimple")
    del prompt[only(prompt, "UNETLoader")]
    prompt["lora"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": [checkpoint, 0], "lora_name": lora, "strength_model": 1.0}}
    prompt["record"]["inputs"]["model"] = ["lora", 0]
    encoders = [k for k, v in prompt.items() if v["class_type"] == "LLM4GENLLMEncode"]
    assert len(encoders) == 2 and {prompt[k]["inputs"]["max_tokens"] for k in encoders} == {256}

    with caplog.at_level(logging.INFO):
        result = comfy.run(prompt)
    assert lora_key_warnings(caplog) == []
    assert comfy.node_output(encoders[0])[0].hidden_states.shape[1] == 256, "LLM Encode itself gave 256"
    assert_trained_context(result, trainer_side, adapter_path, prompt_texts(prompt), 77 + LORA_MAX_TOKENS)
