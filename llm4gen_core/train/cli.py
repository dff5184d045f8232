"""``python -m llm4gen_core.train``: the command line, turned into a :class:`TrainConfig`."""
from __future__ import annotations

import argparse
import sys

from ..errors import LLM4GENError
from .config import (
    ENTITY_PAIRS, LR_SCHEDULES, MODES, OPTIMIZERS, PRECISIONS, UNET_FORMATS, TrainConfig,
)

EPILOG = """\
examples:
  one GPU or the CPU:
    python -m llm4gen_core.train --base sd15/ --llm rankgen-t5-xl-all/ --tokenizer t5_tokenizer/ \\
        --data my_images/ --train cam --output runs/cam
  many GPUs (accelerate config files in llm4gen_core/train/accelerate/):
    accelerate launch --config_file llm4gen_core/train/accelerate/multi_gpu.yaml \\
        -m llm4gen_core.train ... (same flags)
outputs in --output: adapter.safetensors (models/llm4gen), unet/ (cam+unet: models/diffusion_models),
lora.safetensors (cam+lora: models/loras), train_log.jsonl, checkpoint-N/ (for --resume).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm4gen_core.train", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an LLM4GEN Cross-Adapter (and a LoRA or the whole UNet) on your images and captions.",
    )
    models = p.add_argument_group("models")
    models.add_argument("--base", required=True, help="the base model: a diffusers folder (unet/ vae/ text_encoder/ "
                        "tokenizer/ scheduler/) or a single-file SD1.5 checkpoint")
    models.add_argument("--llm", required=True, help="the LLM: RankGen/T5 folder, HF folder, single file, or a "
                        "decoder-only LLM folder (as Load LLM takes it)")
    models.add_argument("--tokenizer", help="the LLM's tokenizer folder when its own folder has none "
                        "(e.g. ComfyUI/comfy/text_encoders/t5_tokenizer)")
    models.add_argument("--clip-tokenizer", help="CLIP's tokenizer folder for a single-file base "
                        "(e.g. ComfyUI/comfy/sd1_tokenizer)")
    models.add_argument("--init-adapter", help="start from this adapter (the release's projector.pth or any "
                        "file the nodes load); default: a fresh one")
    models.add_argument("--train", default="cam", choices=MODES, help="cam: the adapter only, UNet frozen; "
                        "cam+lora: plus a LoRA on the UNet; cam+unet: plus the whole UNet (as the release)")
    models.add_argument("--llm-max-tokens", type=int, default=256, help="LLM sequence length (release: 256)")
    models.add_argument("--llm-hidden-layer", type=int, default=-1, help="decoder LLMs: which hidden state")
    models.add_argument("--llm-template", default="plain", choices=("plain", "chat"), help="decoder LLMs: prompt template")
    models.add_argument("--llm-prefix", help="text put before every LLM prompt (default: 'pre ' for T5, '' for decoders)")
    models.add_argument("--llm-dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="the frozen LLM's dtype (auto: follows --mixed-precision on GPU, fp32 on CPU)")
    models.add_argument("--cam-heads", type=int, default=8, help="fresh adapters: attention heads")
    models.add_argument("--cam-depth", type=int, default=1, help="fresh adapters: fusion blocks (release: 1)")
    models.add_argument("--lora-rank", type=int, default=16)
    models.add_argument("--lora-alpha", type=float, help="default: the rank (LoRA scale 1)")
    models.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                        help="override the base scheduler's prediction type")

    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="a folder with metadata.jsonl ({file_name, text} per line), or "
                      "WebDataset .tar shards: one file, a glob or a brace pattern (data-{000..099}.tar)")
    data.add_argument("--resolution", type=int, default=512)
    data.add_argument("--random-crop", dest="center_crop", action="store_false", help="random instead of center crop")
    data.add_argument("--random-flip", action="store_true")
    data.add_argument("--caption-dropout", type=float, default=0.1, help="probability of training on the empty "
                      "caption (classifier-free guidance), on the CLIP and the LLM side together")
    data.add_argument("--cache-dir", help="keep VAE latents and CLIP/LLM features here (fp16), reused across "
                      "epochs and runs; best for small sets")
    data.add_argument("--num-workers", type=int, default=0, help="data loader worker processes per rank")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=1, help="per process")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    opt.add_argument("--lr", type=float, default=1e-4)
    opt.add_argument("--unet-lr", type=float, help="learning rate of the UNet or LoRA (default: --lr)")
    opt.add_argument("--lr-scheduler", default="constant", choices=LR_SCHEDULES)
    opt.add_argument("--lr-warmup-steps", type=int, default=0)
    opt.add_argument("--weight-decay", type=float, default=1e-2)
    opt.add_argument("--max-grad-norm", type=float, default=1.0)
    opt.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="adam8bit needs bitsandbytes")
    opt.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--mixed-precision", default="auto", choices=PRECISIONS, help="auto: bf16 on GPUs with bf16 "
                     "(else fp16) and on CPUs with native bf16; fp32 (no) on other CPUs, where bf16 is very slow")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more time (UNet)")
    opt.add_argument("--snr-gamma", type=float, help="min-SNR loss weighting (5.0 is common)")
    opt.add_argument("--ema", action="store_true", help="keep an exponential moving average of the trained "
                     "weights and export it")
    opt.add_argument("--ema-decay", type=float, default=0.9999)
    opt.add_argument("--entity-loss-weight", type=float, default=0.0, help="entity-guided regularisation "
                     "(our reading of the AAAI version, see README); 0: off")
    opt.add_argument("--entity-pairs", default="metadata", choices=ENTITY_PAIRS, help="where entity-attribute "
                     "pairs come from: the data's 'pairs', or spaCy's English pipeline")
    opt.add_argument("--spacy-model", default="en_core_web_sm", help="the spaCy pipeline for --entity-pairs "
                     "spacy: an installed package's name or a pipeline folder (nlp.to_disk); it needs a "
                     "parser and part-of-speech tags")

    run = p.add_argument_group("run")
    run.add_argument("--output", required=True, help="where the outputs, train_log.jsonl and checkpoints go")
    run.add_argument("--resume", help="'latest' (the newest checkpoint in --output) or a checkpoint folder")
    run.add_argument("--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep")
    run.add_argument("--unet-format", default="diffusers", choices=UNET_FORMATS, help="cam+unet: diffusers unet/ "
                     "folder (as the release ships it), a ComfyUI-layout unet_comfyui.safetensors, or both")
    run.add_argument("--save-dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="dtype of the written UNet/LoRA")
    run.add_argument("--log-samples", action="store_true", help="record in train_log.jsonl which samples each "
                     "process trained on at each step")
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = vars(parser().parse_args(argv))
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        config = config_from_args(argv)
        try:
            from .loop import train  # heavy imports only once the flags are known to be good
        except ModuleNotFoundError as exc:
            print(f"llm4gen train: error: {exc.name} is not installed; training needs "
                  "`pip install -r requirements-train.txt` (diffusers, accelerate, peft)", file=sys.stderr)
            return 2
        train(config)
    except LLM4GENError as exc:
        print(f"llm4gen train: error: {exc}", file=sys.stderr)
        return 2
    return 0
