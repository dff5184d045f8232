"""`python -m llm4gen_core.train` end to end on tiny models, on the CPU: it learns, it writes what
the nodes load, it resumes exactly, and bad data does not stop it."""
from __future__ import annotations

import json

import pytest
import torch

from llm4gen_core import load_cross_adapter, load_llm
from llm4gen_core.recipe import LLMRecipe
from llm4gen_core.train.cli import main

from scripts.tiny_training import RESOLUTION, train_args

pytestmark = pytest.mark.slow


def run(tiny, output, *extra, steps=4, mode="cam", expect=0):
    code = main(train_args(tiny, output, *extra, steps=steps, mode=mode))
    assert code == expect
    return output


def log_lines(output):
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def eval_loss(tiny, adapter_path, unet_folder=None, seed=0):
    """Noise-prediction loss on a fixed set of (image, caption, noise, timestep): computed here with
    diffusers and transformers directly, the CAM from the written file."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    base = tiny.base
    unet = UNet2DConditionModel.from_pretrained(unet_folder or base / "unet").eval()
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    clip = CLIPTextModel.from_pretrained(base / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
    adapter = load_cross_adapter(adapter_path)
    llm = load_llm(tiny.llm, tokenizer_path=tiny.t5_tokenizer)
    lines = [json.loads(x) for x in (tiny.data / "metadata.jsonl").read_text().splitlines()]
    texts = [x["text"] for x in lines]
    pixels = torch.stack([
        torch.from_numpy(__import__("numpy").asarray(
            Image.open(tiny.data / x["file_name"]).convert("RGB").resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
        ).copy()).permute(2, 0, 1).float() / 127.5 - 1 for x in lines])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        context = adapter(clip(ids).last_hidden_state, llm.encode(texts).hidden_states)
        total = 0.0
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(0, 1000, (len(texts),), generator=g)
            pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
            total += torch.nn.functional.mse_loss(pred, noise).item()
    return total / 4


def test_cam_unet_overfits_and_writes_what_the_nodes_load(tiny, tmp_path):
    init = _fresh_adapter(tiny, tmp_path)
    out = run(tiny, tmp_path / "full", "--lr", "1e-3", "--caption-dropout", "0", "--checkpoint-every", "100",
              "--init-adapter", str(init), steps=40, mode="cam+unet")
    losses = [line["loss"] for line in log_lines(out)]
    assert [line["step"] for line in log_lines(out)] == list(range(1, 41))
    assert all("lr" in line for line in log_lines(out))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first, (first, last)
    # the written files: the CAM with the release's keys and the recipe; a diffusers unet/ folder
    adapter = load_cross_adapter(out / "adapter.safetensors")
    assert adapter.config.clip_dim == 32 and adapter.config.llm_dim == 48
    from safetensors import safe_open
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as f:
        assert all(k.startswith("CrossFusionModule.0.") for k in f.keys())
        recipe = LLMRecipe.from_metadata(f.metadata())
    assert recipe == LLMRecipe(kind="t5-encoder", prefix="pre ", max_tokens=256, hidden_layer=-1,
                               template="plain", llm_name=tiny.llm.name)
    assert (out / "unet" / "config.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    before = eval_loss(tiny, init)
    after = eval_loss(tiny, out / "adapter.safetensors", out / "unet")
    assert after < 0.5 * before, (before, after)


def test_cam_alone_lowers_the_loss_with_the_unet_frozen(tiny, tmp_path):
    init = _fresh_adapter(tiny, tmp_path)
    out = run(tiny, tmp_path / "cam", "--lr", "3e-3", "--caption-dropout", "0", "--init-adapter", str(init),
              steps=30, mode="cam")
    assert not (out / "unet").exists() and not (out / "lora.safetensors").exists()
    assert eval_loss(tiny, out / "adapter.safetensors") < eval_loss(tiny, init)


def _fresh_adapter(tiny, tmp_path):
    """The adapter a fresh run starts from (seeded), written as a file to compare against."""
    from llm4gen_core import CrossAdapter, CrossAdapterConfig, save_cross_adapter

    path = tmp_path / "init-adapter.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        cam = CrossAdapter(CrossAdapterConfig(clip_dim=32, llm_dim=48, heads=8, ffn_dim=128))
        save_cross_adapter(cam.state_dict(), path, cam.config)
    return path
