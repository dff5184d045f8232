"""Training on an SDXL-layout base (tiny, random): both CLIPs side by side as the CAM's CLIP side,
bigG's pooled output and the size/crop time ids as SDXL's added conditioning."""
from __future__ import annotations

import json

import pytest
import torch

from llm4gen_core import load_cross_adapter
from llm4gen_core.train.base import load_base
from llm4gen_core.train.cli import main
from llm4gen_core.train.objective import sdxl_time_ids
from llm4gen_core.train.samples import Batch
from llm4gen_core.train.text import FrozenTextEncoders, drop_captions

from scripts.tiny_training import SDXL_CLIP_DIMS, SDXL_POOLED, build_sdxl_base, train_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sdxl(tiny, tmp_path_factory):
    return build_sdxl_base(tmp_path_factory.mktemp("sdxl") / "base")


def sdxl_args(tiny, sdxl, output, *extra, steps, mode):
    args = train_args(tiny, output, *extra, steps=steps, mode=mode)
    args[args.index("--base") + 1] = str(sdxl)
    return args


def test_sdxl_text_path_is_comfyuis(tiny, sdxl):
    """Per-token: CLIP-L's and bigG's penultimate hidden states (no final norm) side by side, bigG
    padded with id 0; pooled: bigG's projected output. Computed here with transformers directly."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from llm4gen_core import load_llm

    base = load_base(sdxl)
    llm = load_llm(tiny.llm, tokenizer_path=tiny.t5_tokenizer)
    text = FrozenTextEncoders(base, llm, llm.recipe(256))
    prompts = ["a red square on a grey background", ""]
    features = text.features(prompts)

    small = CLIPTextModel.from_pretrained(sdxl / "text_encoder").eval()
    big = CLIPTextModelWithProjection.from_pretrained(sdxl / "text_encoder_2").eval()
    ids_l = CLIPTokenizer.from_pretrained(sdxl / "tokenizer")(prompts, padding="max_length", max_length=77,
                                                              return_tensors="pt").input_ids
    ids_g = ids_l.clone()
    for row in ids_g:  # bigG pads with "!" (id 0) after the end token, CLIP-L with the end token
        end = int((row == 49407).nonzero()[0])
        row[end + 1:] = 0
    with torch.no_grad():
        out_l = small(ids_l, output_hidden_states=True)
        out_g = big(ids_g, output_hidden_states=True)
    expected = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
    assert features.clip.shape == (2, 77, sum(SDXL_CLIP_DIMS)) and features.pooled.shape == (2, SDXL_POOLED)
    torch.testing.assert_close(features.clip, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(features.pooled, out_g.text_embeds, rtol=0, atol=1e-6)
    # caption dropout swaps in the empty caption's features, pooled included
    dropped = drop_captions(features.rows(slice(0, 1)), torch.tensor([True]), text.empty())
    torch.testing.assert_close(dropped.pooled, features.pooled[1:], rtol=0, atol=1e-6)  # batch 1 vs 2: rounding
    torch.testing.assert_close(dropped.clip, features.clip[1:], rtol=0, atol=1e-6)


def test_sdxl_time_ids_follow_comfyuis_order():
    batch = Batch(torch.zeros(2, 3, 8, 8), ["a", "b"], [[], []], ["a", "b"],
                  original_sizes=[(600, 800), (512, 512)], crop_top_lefts=[(0, 44), (3, 0)])
    assert sdxl_time_ids(batch, 64).tolist() == [[600, 800, 0, 44, 64, 64], [512, 512, 3, 0, 64, 64]]


@pytest.mark.parametrize("mode", ["cam+unet", "cam+lora"])
def test_sdxl_trains_and_writes_what_the_nodes_load(tiny, sdxl, tmp_path, mode):
    out = tmp_path / mode.replace("+", "_")
    assert main(sdxl_args(tiny, sdxl, out, "--lr", "1e-3", "--caption-dropout", "0.2", "--unet-format", "both",
                          "--entity-loss-weight", "0.01", steps=16 if mode == "cam+unet" else 3, mode=mode)) == 0
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    if mode == "cam+unet":
        assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(out / "unet")
        assert unet.config.addition_embed_type == "text_time"
        assert (out / "unet_comfyui.safetensors").is_file()
    else:
        from safetensors.torch import load_file

        assert any(k.startswith("lora_unet_") for k in load_file(str(out / "lora.safetensors")))
    adapter = load_cross_adapter(out / "adapter.safetensors")
    assert (adapter.config.clip_dim, adapter.config.llm_dim) == (sum(SDXL_CLIP_DIMS), 48)
    assert adapter(torch.zeros(1, 77, 72), torch.zeros(1, 256, 48)).shape == (1, 333, 72)


def test_an_sd15_adapter_cannot_start_an_sdxl_run(tiny, sdxl, tmp_path, capsys):
    from llm4gen_core import CrossAdapter, CrossAdapterConfig, save_cross_adapter

    sd15 = tmp_path / "sd15-adapter.safetensors"
    cam = CrossAdapter(CrossAdapterConfig(clip_dim=32, llm_dim=48, heads=8, ffn_dim=128))
    save_cross_adapter(cam.state_dict(), sd15, cam.config)
    assert main(sdxl_args(tiny, sdxl, tmp_path / "o", "--init-adapter", str(sd15), steps=1, mode="cam")) == 2
    assert "CLIP 32 / LLM 48" in capsys.readouterr().err
