"""Helpers shared by the host tests that run ``python -m llm4gen_core.train`` in-process and then
check in ComfyUI what it wrote (test_train_in_comfyui.py: SD1.5, test_train_sdxl_in_comfyui.py: SDXL)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from llm4gen_core import load_cross_adapter
from llm4gen_core.train.cli import main as train_main
from llm4gen_core.train.text import FrozenTextEncoders, TextFeatures

FP32 = 1e-4  # max abs difference between two fp32 computations of one thing


@dataclass(frozen=True)
class Run:
    output: Path
    args: list[str]


def reset_accelerate() -> None:
    """Each in-process run makes its own Accelerator; accelerate keeps one state per process."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def run_trainer(args: list[str], output: Path) -> Run:
    """``python -m llm4gen_core.train ARGS --output OUTPUT`` in this process; it must exit 0."""
    args = [*args, "--output", str(output)]
    reset_accelerate()
    try:
        assert train_main(args) == 0
    finally:
        reset_accelerate()
    return Run(output, args)


def trained_features(base, llm, adapter_path: Path, texts: list[str]) -> tuple[TextFeatures, torch.Tensor]:
    """The trainer's text path for ``texts`` (its own ``FrozenTextEncoders``, with the recipe the
    written CAM records) and the context the written CAM makes of it."""
    adapter = load_cross_adapter(adapter_path, dtype=torch.float32).eval()
    for encoder in (base.text_encoder, base.text_encoder_2):
        if encoder is not None:
            encoder.eval()
    features = FrozenTextEncoders(base, llm, adapter.recipe).features(texts)
    with torch.no_grad():
        return features, adapter(features.clip, features.llm)


def lora_key_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lora key not loaded" in r.getMessage()]


def trainable_state(checkpoint: Path, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """The trained weights under ``prefix`` in a run's checkpoint folder (not an exported file)."""
    from safetensors.torch import load_file

    return {k[len(prefix):]: v for k, v in load_file(str(checkpoint / "trainable.safetensors")).items()
            if k.startswith(prefix)}


def peft_reference(base_unet, checkpoint: Path, rank: int, alpha: float, targets: tuple[str, ...]):
    """The base UNet with the LoRA the run trained, as peft computes it: rank and alpha as given
    on the command line, weights from the run's checkpoint (not from lora.safetensors)."""
    from peft import LoraConfig

    unet = copy.deepcopy(base_unet).eval()
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))
    trained = trainable_state(checkpoint)
    own = {k: v for k, v in unet.state_dict().items() if "lora_" in k}
    assert set(trained) == set(own), "the checkpoint's LoRA is not the one configured here"
    unet.load_state_dict(trained, strict=False)
    return unet
