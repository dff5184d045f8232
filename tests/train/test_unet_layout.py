"""UNet key layouts (diffusers <-> ComfyUI's ldm) and single-file SD1.x bases, without ComfyUI.

Tiny random diffusers/transformers models stand in for real ones; every parameter is set from a
seeded generator (norm scales near 1, not 1), so a key mapped to the wrong place shows in the
outputs. The ComfyUI side of the same mapping is checked in tests/host/test_train_unet_layout.py.
"""
from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from synthetic.seeded import randomize  # noqa: E402
from llm4gen_core.errors import CheckpointError, LLM4GENError  # noqa: E402
from llm4gen_core.train.single_file import load_single_file_base  # noqa: E402
from llm4gen_core.train.unet_layout import (  # noqa: E402
    DIFFUSERS_DEFAULTS, UNetLayoutError, comfy_to_diffusers, diffusers_config_from_comfy, diffusers_key_map,
    diffusers_to_comfy,
)

# --- tiny configs ------------------------------------------------------------------------------

BASE = dict(sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=24, attention_head_dim=4,
            norm_num_groups=32)
CONFIGS = {
    # SD1.x's build at two levels: conv projections, a plain block at the bottom, mid transformer.
    "sd1_two_levels": dict(BASE, block_out_channels=(32, 64), layers_per_block=2,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # The host's SMALL_UNET build (one level, one res block) at toy width.
    "one_level": dict(BASE, block_out_channels=(32,), layers_per_block=1,
                      down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",)),
    # SD2.x-style linear projections; res blocks per level differ; channels shrink at the bottom.
    "linear_projection": dict(BASE, block_out_channels=(64, 32), layers_per_block=(1, 2), use_linear_projection=True,
                              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # SDXL's build: plain top level, deeper transformers below, label_emb from "text_time".
    "sdxl_like": dict(BASE, block_out_channels=(32, 64, 64), layers_per_block=2, use_linear_projection=True,
                      cross_attention_dim=40, attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 2, 3),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=16 + 6 * 8),
    # Depths per layer, different on the way up (diffusers' "asymmetrical" UNet).
    "asymmetric_depths": dict(BASE, block_out_channels=(32, 64), layers_per_block=2,
                              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                              transformer_layers_per_block=((1, 2), (2, 1)),
                              reverse_transformer_layers_per_block=((1, 2, 1), (3, 1, 2))),
    # Mid block with a res block only, and none at all.
    "plain_mid": dict(BASE, block_out_channels=(32, 64), layers_per_block=1, mid_block_type="UNetMidBlock2D",
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "no_mid": dict(BASE, block_out_channels=(32, 64), layers_per_block=1, mid_block_type=None,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}
# What a config inferred from shapes cannot know, passed back as overrides.
UNKNOWABLE = ("attention_head_dim", "addition_time_embed_dim", "sample_size")


@functools.cache
def tiny_unet(name: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return randomize(UNet2DConditionModel(**CONFIGS[name]), seed)


def unet_inputs(unet: UNet2DConditionModel, batch: int = 2, tokens: int = 5) -> dict:
    g = torch.Generator().manual_seed(7)
    cfg = unet.config
    inputs = dict(sample=torch.randn(batch, cfg.in_channels, 8, 8, generator=g), timestep=torch.tensor([3.0, 700.0][:batch]),
                  encoder_hidden_states=torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g))
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    return inputs


def run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def as_lists(value):
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value


# --- the key map -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_is_exact(name):
    unet = tiny_unet(name)
    state = unet.state_dict()
    assert set(diffusers_key_map(unet.config)) == set(state)

    ldm = diffusers_to_comfy(state, unet.config)
    assert len(ldm) == len(state)  # one ldm key per diffusers key
    assert not any(k.startswith(("down_blocks", "up_blocks", "mid_block", "conv_in", "time_embedding")) for k in ldm)
    back = comfy_to_diffusers(ldm, unet.config)
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert back[key] is tensor or torch.equal(back[key], tensor), key


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_from_ldm_shapes_rebuilds_the_same_unet(name):
    unet = tiny_unet(name)
    ldm = diffusers_to_comfy(unet.state_dict(), unet.config)
    config = diffusers_config_from_comfy(ldm, **{k: unet.config[k] for k in UNKNOWABLE})

    for field in ("in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
                  "mid_block_type", "cross_attention_dim", "use_linear_projection", "addition_embed_type",
                  "projection_class_embeddings_input_dim", "layers_per_block"):
        assert as_lists(config[field]) == as_lists(unet.config[field]), field

    rebuilt = UNet2DConditionModel(**config).eval()
    rebuilt.load_state_dict(comfy_to_diffusers(ldm, config), strict=True)
    inputs = unet_inputs(unet)
    torch.testing.assert_close(run(rebuilt, inputs), run(unet, inputs), rtol=0, atol=0)


def test_sd15_keys_land_where_the_ldm_unet_has_them():
    """Landmarks of SD1.5's layout (independent of the code under test's loops)."""
    config = dict(cross_attention_dim=768)  # everything else: diffusers' defaults are SD1.5's
    key_map = diffusers_key_map(config)
    expected = {
        "conv_in.weight": "input_blocks.0.0.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "down_blocks.0.resnets.1.conv2.weight": "input_blocks.2.0.out_layers.3.weight",
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.1.attentions.0.proj_in.weight": "input_blocks.4.1.proj_in.weight",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight":
            "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.3.resnets.1.time_emb_proj.weight": "input_blocks.11.0.emb_layers.1.weight",
        "mid_block.resnets.0.norm1.weight": "middle_block.0.in_layers.0.weight",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight":
            "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
        "mid_block.resnets.1.norm2.bias": "middle_block.2.out_layers.0.bias",
        "up_blocks.0.resnets.2.conv1.weight": "output_blocks.2.0.in_layers.2.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.attentions.2.proj_out.bias": "output_blocks.5.1.proj_out.bias",
        "up_blocks.1.upsamplers.0.conv.bias": "output_blocks.5.2.conv.bias",
        "up_blocks.3.resnets.2.conv_shortcut.weight": "output_blocks.11.0.skip_connection.weight",
        "conv_norm_out.weight": "out.0.weight",
        "conv_out.bias": "out.2.bias",
    }
    for d, ldm in expected.items():
        assert key_map[d] == ldm, d
    assert len(key_map) == 686 and "down_blocks.3.downsamplers.0.conv.weight" not in key_map
    assert "up_blocks.3.upsamplers.0.conv.weight" not in key_map


def test_sdxl_label_emb_and_depths():
    config = dict(CONFIGS["sdxl_like"])
    key_map = diffusers_key_map(config)
    assert key_map["add_embedding.linear_1.weight"] == "label_emb.0.0.weight"
    assert key_map["add_embedding.linear_2.bias"] == "label_emb.0.2.bias"
    assert key_map["down_blocks.2.attentions.1.transformer_blocks.2.norm3.weight"] == \
        "input_blocks.8.1.transformer_blocks.2.norm3.weight"
    assert "input_blocks.1.1.proj_in.weight" not in key_map.values()  # the plain top level has no transformer
    assert key_map["mid_block.attentions.0.transformer_blocks.2.attn1.to_q.weight"] == \
        "middle_block.1.transformer_blocks.2.attn1.to_q.weight"


def test_defaults_are_diffusers_defaults():
    params = inspect.signature(UNet2DConditionModel.__init__).parameters
    for key, value in DIFFUSERS_DEFAULTS.items():
        assert as_lists(params[key].default) == as_lists(value), key


@pytest.mark.parametrize("name, config, heads", [
    ("sd15", dict(cross_attention_dim=768), 8),
    ("sd2", dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True), [5, 10, 20, 20]),
    ("sdxl", dict(sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816), [5, 10, 20]),
])
def test_real_model_configs_are_read_back_from_shapes(name, config, heads):
    """Full-size layouts on the meta device (shapes only): the inferred config is the model's own,
    heads included (SD1: 8 heads; SD2/SDXL: heads of 64 channels)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    ldm = diffusers_to_comfy(unet.state_dict(), unet.config)
    inferred = diffusers_config_from_comfy(ldm)
    assert as_lists(inferred["attention_head_dim"]) == as_lists(heads)
    skip = {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path", "sample_size"}
    differ = {k: (unet.config[k], v) for k, v in inferred.items()
              if k not in skip and as_lists(unet.config[k]) != as_lists(v)}
    assert differ == {}
    assert inferred["sample_size"] == (128 if name == "sdxl" else 64)


# --- errors: nothing dropped silently ------------------------------------------------------------

def test_a_key_the_config_does_not_explain_is_named():
    unet = tiny_unet("one_level")
    state = dict(unet.state_dict())
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn1.extra.weight"] = torch.zeros(1)
    with pytest.raises(UNetLayoutError, match=r"attn1\.extra\.weight"):
        diffusers_to_comfy(state, unet.config)
    ldm = diffusers_to_comfy(unet.state_dict(), unet.config)
    ldm["label_emb.0.0.weight"] = torch.zeros(4, 4)
    with pytest.raises(UNetLayoutError, match=r"label_emb\.0\.0\.weight"):
        comfy_to_diffusers(ldm, unet.config)
    with pytest.raises(UNetLayoutError, match=r"label_emb"):
        diffusers_config_from_comfy(ldm, attention_head_dim=4)


def test_a_missing_key_is_named():
    unet = tiny_unet("sd1_two_levels")
    state = dict(unet.state_dict())
    del state["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"]
    with pytest.raises(UNetLayoutError, match=r"lacks: up_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn2\.to_v\.weight"):
        diffusers_to_comfy(state, unet.config)


def test_the_wrong_config_is_refused():
    unet = tiny_unet("sd1_two_levels")
    with pytest.raises(UNetLayoutError, match="does not match its config"):
        diffusers_to_comfy(unet.state_dict(), CONFIGS["one_level"])


@pytest.mark.parametrize("option, value", [("time_cond_proj_dim", 8), ("class_embeddings_concat", True),
                                           ("resnet_time_scale_shift", "scale_shift"), ("attention_type", "gated"),
                                           ("down_block_types", ("SimpleCrossAttnDownBlock2D", "DownBlock2D"))])
def test_options_the_ldm_unet_cannot_express_are_refused_by_name(option, value):
    config = dict(CONFIGS["sd1_two_levels"], **{option: value})
    with pytest.raises(UNetLayoutError, match=option if option != "down_block_types" else "SimpleCrossAttnDownBlock2D"):
        diffusers_key_map(config)


def test_ldm_state_dict_with_a_prefix_is_refused_with_a_hint():
    unet = tiny_unet("one_level")
    ldm = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_comfy(unet.state_dict(), unet.config).items()}
    with pytest.raises(UNetLayoutError, match="strip the prefix 'model.diffusion_model.'"):
        diffusers_config_from_comfy(ldm)


def test_heads_that_cannot_be_inferred_ask_for_an_override():
    unet = tiny_unet("one_level")  # 32 channels, context 24: neither SD1's 8 heads nor heads of 64
    ldm = diffusers_to_comfy(unet.state_dict(), unet.config)
    with pytest.raises(UNetLayoutError, match="attention_head_dim"):
        diffusers_config_from_comfy(ldm)


# --- single-file SD1.x base ----------------------------------------------------------------------

CLIP_HIDDEN = 128  # heads of 64, as CLIP's


def tiny_vocab_folder(folder) -> Path:
    """A CLIP BPE vocabulary with only byte-level characters (514 tokens), and ComfyUI's
    model_max_length of 8192 in its tokenizer_config.json (the loader must use 77)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 8192}))
    return folder


def tiny_vae(seed: int = 1) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    return randomize(vae, seed)


def vae_to_ldm(vae: AutoencoderKL) -> dict:
    """diffusers VAE keys -> the original (ldm) ones, written here independently of diffusers'
    converter; attention projections become the 1x1 convolutions ldm stores."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, t in vae.state_dict().items():
        new = key
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")
            for k in (0, 1):
                new = new.replace(f"{side}.mid_block.resnets.{k}.", f"{side}.mid.block_{k + 1}.")
            new = new.replace(f"{side}.conv_norm_out.", f"{side}.norm_out.")
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            new = (new.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k").replace("to_v", "v")
                   .replace("to_out.0", "proj_out"))
            if t.ndim == 2:
                t = t[:, :, None, None]
        assert new not in out, new
        out[new] = t
    return out


def tiny_clip(vocab_size: int, seed: int = 2) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CLIP_HIDDEN, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=CLIP_HIDDEN // 64, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return randomize(CLIPTextModel(config), seed)


def tiny_sd1_unet(seed: int = 3) -> UNet2DConditionModel:
    """Context as wide as the tiny CLIP; channels of 64 so heads of 64 are what the loader infers."""
    torch.manual_seed(seed)
    config = dict(CONFIGS["sd1_two_levels"], block_out_channels=(64, 128), cross_attention_dim=CLIP_HIDDEN,
                  attention_head_dim=(1, 2), layers_per_block=1)
    return randomize(UNet2DConditionModel(**config), seed)


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single-file")
    vocab = tiny_vocab_folder(folder / "clip-tokenizer")
    unet, vae, clip = tiny_sd1_unet(), tiny_vae(), tiny_clip(vocab_size=514)
    state = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_comfy(unet.state_dict(), unet.config).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae).items()})
    clip_state = {k.removeprefix("text_model."): v for k, v in clip.state_dict().items()}
    state.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in clip_state.items()})
    # What ldm training checkpoints carry beside the weights.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(0.999, 0.01, 1000)
    state["model_ema.decay"] = torch.tensor(0.9999)
    return dict(folder=folder, vocab=vocab, unet=unet, vae=vae, clip=clip, state=state)


def write(state: dict, path) -> Path:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_base_gives_the_same_models(tiny_sd1, suffix):
    path = write(tiny_sd1["state"], tiny_sd1["folder"] / f"tiny-sd1{suffix}")
    base = load_single_file_base(path, clip_tokenizer=tiny_sd1["vocab"])
    assert set(base) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}

    inputs = unet_inputs(tiny_sd1["unet"])
    torch.testing.assert_close(run(base["unet"], inputs), run(tiny_sd1["unet"], inputs), rtol=0, atol=0)

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        got, want = base["vae"].encode(image).latent_dist, tiny_sd1["vae"].encode(image).latent_dist
        torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=0)
        torch.testing.assert_close(got.std, want.std, rtol=0, atol=0)
        torch.testing.assert_close(base["vae"].decode(got.mean).sample, tiny_sd1["vae"].decode(want.mean).sample,
                                   rtol=0, atol=0)
    assert base["vae"].config.scaling_factor == pytest.approx(0.18215)

    tokenizer = base["tokenizer"]
    assert tokenizer.model_max_length == 77
    ids = tokenizer(["a cat", ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 77) and ids[0, 0] == 512 and (ids[1, 1:] == 513).all()  # start, then end-token padding
    with torch.no_grad():
        torch.testing.assert_close(base["text_encoder"](input_ids=ids).last_hidden_state,
                                   tiny_sd1["clip"](input_ids=ids).last_hidden_state, rtol=0, atol=0)

    scheduler = base["scheduler"]
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.betas[0].item() == pytest.approx(0.00085) and scheduler.betas[-1].item() == pytest.approx(0.012)
    for model in (base["unet"], base["vae"], base["text_encoder"]):
        assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())


def test_comfyui_markers_set_the_schedule(tiny_sd1):
    """ComfyUI's marker keys: ``v_pred`` (v-prediction) and ``ztsnr`` (zero terminal SNR)."""
    path = write({**tiny_sd1["state"], "v_pred": torch.tensor([])}, tiny_sd1["folder"] / "tiny-sd1-v.safetensors")
    scheduler = load_single_file_base(path, clip_tokenizer=tiny_sd1["vocab"])["scheduler"]
    assert scheduler.config.prediction_type == "v_prediction" and not scheduler.config.rescale_betas_zero_snr
    path = write({**tiny_sd1["state"], "ztsnr": torch.tensor([])}, tiny_sd1["folder"] / "tiny-sd1-z.safetensors")
    scheduler = load_single_file_base(path, clip_tokenizer=tiny_sd1["vocab"])["scheduler"]
    assert scheduler.config.prediction_type == "epsilon" and scheduler.alphas_cumprod[-1].item() < 1e-6


def test_missing_tokenizer_says_to_pass_clip_tokenizer(tiny_sd1, tmp_path):
    path = write(tiny_sd1["state"], tmp_path / "tiny.safetensors")
    with pytest.raises(LLM4GENError, match="--clip-tokenizer"):
        load_single_file_base(path)
    with pytest.raises(LLM4GENError, match="vocab.json"):
        load_single_file_base(path, clip_tokenizer=tmp_path)


def test_unknown_keys_in_a_single_file_are_named(tiny_sd1, tmp_path):
    path = write({**tiny_sd1["state"], "embedding_manager.foo": torch.zeros(2)}, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="embedding_manager.foo"):
        load_single_file_base(path, clip_tokenizer=tiny_sd1["vocab"])


def test_vae_key_without_a_diffusers_name_is_not_dropped(tiny_sd1, tmp_path):
    path = write({**tiny_sd1["state"], "first_stage_model.encoder.extra.weight": torch.zeros(2)},
                 tmp_path / "vae-extra.safetensors")
    with pytest.raises(CheckpointError, match="VAE"):
        load_single_file_base(path, clip_tokenizer=tiny_sd1["vocab"])


def test_sdxl_and_sd2_single_files_are_refused_clearly(tiny_sd1, tmp_path):
    sdxl = write({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4),
                  "model.diffusion_model.label_emb.0.0.weight": torch.ones(4, 4)}, tmp_path / "sdxl.safetensors")
    with pytest.raises(CheckpointError, match="SDXL .*not supported"):
        load_single_file_base(sdxl, clip_tokenizer=tiny_sd1["vocab"])
    sd2 = write({"cond_stage_model.model.token_embedding.weight": torch.ones(4, 4)}, tmp_path / "sd2.safetensors")
    with pytest.raises(CheckpointError, match="SD2.x .*not supported"):
        load_single_file_base(sd2, clip_tokenizer=tiny_sd1["vocab"])
