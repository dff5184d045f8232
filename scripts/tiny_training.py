"""Tiny training inputs made locally: a diffusers-layout SD1.5-style base (CLIP 32-d, a small
UNet and VAE, random weights), a RankGen-layout T5 (48-d) and a folder of generated images with
captions. Nothing is downloaded: CLIP's and T5's vocabulary files come from the test host's
ComfyUI (comfy/sd1_tokenizer, comfy/text_encoders/t5_tokenizer).

The training tests build them once per session into a temp folder (``build_all(folder)``);
benchmarks/bench_train.py times training on them.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

CLIP_DIM = 32
T5_DIM = 48
RESOLUTION = 32
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "circle", "stripe", "cross")


@dataclass(frozen=True)
class TinyTraining:
    base: Path          # diffusers folder
    llm: Path           # RankGen-layout T5 folder, no tokenizer (as released)
    t5_tokenizer: Path  # ComfyUI's T5 tokenizer folder
    clip_tokenizer: Path
    data: Path          # folder with metadata.jsonl and 16 PNGs


def comfy_tokenizers() -> tuple[Path, Path]:
    from .comfyui_host import comfyui_root

    root = comfyui_root()
    return root / "comfy" / "sd1_tokenizer", root / "comfy" / "text_encoders" / "t5_tokenizer"


def build_base(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    clip_tokenizer, _ = comfy_tokenizers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(clip_tokenizer, folder / "tokenizer", dirs_exist_ok=True)
    CLIPTextModel(CLIPTextConfig(hidden_size=CLIP_DIM, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, vocab_size=49408, max_position_embeddings=77)
                  ).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(
        sample_size=RESOLUTION // 2, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CLIP_DIM, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=RESOLUTION,
    ).save_pretrained(folder / "vae")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  clip_sample=False, prediction_type="epsilon").save_pretrained(folder / "scheduler")
    return folder


SDXL_CLIP_DIMS = (32, 40)  # CLIP-L and bigG stand-ins: the UNet attends to both side by side (72)
SDXL_POOLED = 40


def build_sdxl_base(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL-layout diffusers folder: two CLIPs (the second with a projection, padding with "!"
    as SDXL's tokenizer_2 does), a UNet with SDXL's added text/time conditioning."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    clip_tokenizer, _ = comfy_tokenizers()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(clip_tokenizer, folder / "tokenizer", dirs_exist_ok=True)
    CLIPTokenizer.from_pretrained(clip_tokenizer, pad_token="!").save_pretrained(folder / "tokenizer_2")
    small, big = SDXL_CLIP_DIMS
    config = dict(intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, vocab_size=49408,
                  max_position_embeddings=77)
    CLIPTextModel(CLIPTextConfig(hidden_size=small, **config)).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=big, projection_dim=SDXL_POOLED, **config)
                                ).save_pretrained(folder / "text_encoder_2")
    UNet2DConditionModel(
        sample_size=RESOLUTION // 2, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=small + big, attention_head_dim=(4, 8),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + SDXL_POOLED, norm_num_groups=32,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=RESOLUTION,
        scaling_factor=0.13025,
    ).save_pretrained(folder / "vae")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           num_train_timesteps=1000, prediction_type="epsilon").save_pretrained(folder / "scheduler")
    return folder


def build_llm(folder: Path) -> Path:
    from .smoke_models import tiny_t5_encoder, tiny_t5_rankgen_folder

    t5 = tiny_t5_encoder(seed=5, vocab_size=32128, d_model=T5_DIM, d_kv=12)
    return tiny_t5_rankgen_folder(folder, t5, fmt="safetensors")


def draw(colour: str, shape: str, size: int = 48):
    """A picture of the caption: a coloured shape on grey."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    pen = ImageDraw.Draw(image)
    rgb, q = COLOURS[colour], size // 4
    if shape == "square":
        pen.rectangle([q, q, 3 * q, 3 * q], fill=rgb)
    elif shape == "circle":
        pen.ellipse([q, q, 3 * q, 3 * q], fill=rgb)
    elif shape == "stripe":
        pen.rectangle([0, q + q // 2, size, 2 * q + q // 2], fill=rgb)
    else:
        pen.rectangle([0, 2 * q - 3, size, 2 * q + 3], fill=rgb)
        pen.rectangle([2 * q - 3, 0, 2 * q + 3, size], fill=rgb)
    return image


def build_data(folder: Path, size: int = 48) -> Path:
    """16 images, one per colour and shape, captioned with both (and the pair, for the entity loss)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            name = f"{colour}_{shape}.png"
            draw(colour, shape, size).save(folder / name)
            lines.append({"file_name": name, "text": f"a {colour} {shape} on a grey background",
                          "pairs": [[colour, shape]]})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def build_all(folder: Path) -> TinyTraining:
    clip_tokenizer, t5_tokenizer = comfy_tokenizers()
    return TinyTraining(base=build_base(folder / "base"), llm=build_llm(folder / "tiny-rankgen-t5"),
                        t5_tokenizer=t5_tokenizer, clip_tokenizer=clip_tokenizer, data=build_data(folder / "data"))


def train_args(tiny: TinyTraining, output: Path, *extra: str, steps: int = 4, mode: str = "cam") -> list[str]:
    """Command-line flags for a short run on the tiny set, in fp32 (numbers comparable on every CPU)."""
    return ["--base", str(tiny.base), "--llm", str(tiny.llm), "--tokenizer", str(tiny.t5_tokenizer),
            "--data", str(tiny.data), "--train", mode, "--output", str(output), "--resolution", str(RESOLUTION),
            "--batch-size", "2", "--max-steps", str(steps), "--mixed-precision", "no", *extra]
