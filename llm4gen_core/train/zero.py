"""DeepSpeed ZeRO-2, when the trainer is launched with an accelerate DeepSpeed config
(``accelerate launch --config_file llm4gen_core/train/accelerate/deepspeed_zero2.yaml ...``).

ZeRO stage 2 splits AdamW's state (its two moments and the fp32 master weights) and the gradients
across the processes; every process still holds the whole model. What the trainer does differently:

- one DeepSpeed engine: the :class:`~.objective.Denoiser` (CAM + UNet) is already one module;
- the trainer's flags decide DeepSpeed's batch values (``train_micro_batch_size_per_gpu`` =
  --batch-size, ``gradient_accumulation_steps`` = --grad-accum, ``gradient_clipping`` =
  --max-grad-norm), whatever the config file says;
- gradient accumulation: DeepSpeed divides the loss by --grad-accum itself and steps the optimizer
  at the last micro-batch, which the trainer marks (``accelerator.sync_gradients``);
- checkpoints: every process writes its optimizer shard through ``accelerator.save_state`` into
  the checkpoint's partial folder (:mod:`.state`), resumed through ``accelerator.load_state`` with
  the same number of processes;
- what is exported: the fp32 master weights, gathered from the shards (with bf16/fp16 DeepSpeed
  keeps the module itself in 16 bits);
- without a GPU, the processes talk over gloo (DeepSpeed's CPU accelerator): how the tests run it.

ZeRO-3, which splits the parameters as well, is refused: the EMA, the checkpoint's adapter and the
export read whole parameters.
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch

from ..errors import LLM4GENError
from .config import TrainConfig

log = logging.getLogger("llm4gen.train")
STAGE = 2


def requested() -> bool:
    """Whether `accelerate launch` was given a DeepSpeed config (it says so in the environment)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_options(has_gpu: bool) -> dict:
    """Accelerator(...) arguments under DeepSpeed. accelerate ignores DeepSpeed with cpu=True, and
    without a GPU it would pick no process-group backend (each process then believes it is alone):
    name gloo."""
    if importlib.util.find_spec("deepspeed") is None:
        raise LLM4GENError("this accelerate config uses DeepSpeed, which is not installed: pip install deepspeed "
                           "(or launch with multi_gpu.yaml)")
    if has_gpu:
        return {"cpu": False}
    from accelerate.utils import InitProcessGroupKwargs

    return {"cpu": False, "kwargs_handlers": [InitProcessGroupKwargs(backend="gloo")]}


def configure(accelerator, cfg: TrainConfig) -> int:
    """Check the DeepSpeed config and put the trainer's batch values into it; returns the stage."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != STAGE:
        raise LLM4GENError(f"DeepSpeed ZeRO stage {stage}: this trainer supports stage {STAGE} only "
                           "(deepspeed_zero2.yaml); stage 3 splits the parameters themselves, which the EMA, "
                           "the checkpoints' adapter and the export read whole")
    if cfg.optimizer != "adamw":
        raise LLM4GENError(f"--optimizer {cfg.optimizer} is not supported with DeepSpeed (ZeRO-2 already splits "
                           "AdamW's state across the GPUs): use --optimizer adamw, or DDP (multi_gpu.yaml)")
    if "optimizer" in config or "scheduler" in config:
        raise LLM4GENError("the DeepSpeed config names an optimizer or a scheduler: leave them out, the trainer's "
                           "flags (--lr, --lr-scheduler, ...) set them")
    ours = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": float(cfg.max_grad_norm),
            "train_batch_size": cfg.batch_size * cfg.grad_accum * accelerator.num_processes}
    for key, value in ours.items():
        if config.get(key, "auto") not in ("auto", value):
            log.info("DeepSpeed %s: %s from the trainer's flags, not the config's %s", key, value, config[key])
        config[key] = value
    return stage


def full_fp32_weights(params: dict[str, torch.nn.Parameter], keep: bool) -> dict[str, torch.Tensor] | None:
    """The fp32 master copy of each parameter, whole, on the CPU. Collective: every process calls
    it, in the same order; only those with ``keep`` get the result (the others None)."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, param in params.items():
        full = safe_get_full_fp32_param(param)
        if full is None:
            raise LLM4GENError(f"DeepSpeed holds no fp32 master copy of {name}: is it trained by the engine?")
        if keep:
            weights[name] = full.detach().to("cpu", torch.float32)
    return weights if keep else None
