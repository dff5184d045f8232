"""The training loop: accelerate for devices and processes, diffusers' noise schedule.

Each optimizer step, per process and micro-batch:

    z     = VAE(image) * scale                        # latents (or the cache's)
    c, l  = CLIP(caption), LLM(caption)               # "" instead, with probability caption_dropout
    eps   ~ N(0, I);  t ~ U{0..T-1};  z_t = add_noise(z, eps, t)
    pred  = UNet(z_t, t, context=CAM(c, l))
    loss  = w(t) * |pred - target|^2                 # target eps or v as the scheduler says;
                                                      # w(t) = min(SNR, gamma)/SNR with --snr-gamma

All randomness of a micro-step (caption dropout, latent sampling, noise, timesteps) comes from a
generator seeded by (seed, rank, micro-step), and the data order from the data module's own
seeded sequence: a resumed run therefore computes exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cam import CrossAdapter, CrossAdapterConfig
from ..checkpoint import load_cross_adapter
from ..errors import LLM4GENError
from ..llm import load_llm
from . import data as data_module
from . import entity, export, precision, state
from .base import load_base
from .cache import FeatureCache
from .config import TrainConfig
from .ema import EMA
from .text import FrozenTextEncoders, drop_captions

log = logging.getLogger("llm4gen.train")
LOG_FILE = "train_log.jsonl"
PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Denoiser(torch.nn.Module):
    """The CAM feeding the UNet: the one module the optimizer (and DDP) sees. ``added`` is SDXL's
    added conditioning (pooled text embeds and size/crop time ids), None for SD1.x."""

    def __init__(self, cam: CrossAdapter, unet: torch.nn.Module):
        super().__init__()
        self.cam, self.unet = cam, unet

    def forward(self, noisy, timesteps, clip, llm, added=None):
        context = self.cam(clip, llm)
        return self.unet(noisy, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    digest = hashlib.sha256(f"llm4gen/{seed}/{rank}/{micro_step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def train(cfg: TrainConfig) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # cpu=True where there is no accelerator: then several processes (accelerate launch --multi_gpu, torchrun)
    # run DDP over gloo; accelerate's own --cpu flag starts only one process.
    mixed_precision, why = precision.for_this_machine(cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.accelerator.is_available())
    main = accelerator.is_main_process
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s")
    log.info("mixed precision: %s (%s)", "fp32" if mixed_precision == "no" else mixed_precision, why)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise LLM4GENError("DeepSpeed is not supported by this trainer's checkpoints yet; use DDP (multi_gpu.yaml)")
    device, weight_dtype = accelerator.device, PRECISION_DTYPES[mixed_precision]
    torch.manual_seed(cfg.seed)  # fresh weights (CAM, LoRA) start the same in every process and run
    output = cfg.output
    output.mkdir(parents=True, exist_ok=True)

    # --- models --------------------------------------------------------------------------------
    base = load_base(cfg.base, cfg.clip_tokenizer, cfg.prediction_type)
    llm = load_llm(cfg.llm, tokenizer_path=cfg.tokenizer, dtype=cfg.llm_dtype, device=device,
                   hidden_layer=cfg.llm_hidden_layer, template=cfg.llm_template, prefix=cfg.llm_prefix)
    llm.model.requires_grad_(False).eval()
    recipe = llm.recipe(cfg.llm_max_tokens)
    for frozen in base.frozen_parts():
        frozen.requires_grad_(False).eval().to(device, weight_dtype)
    cam = _make_cam(cfg, base.clip_dim, llm.hidden_size).to(device)
    unet = _prepare_unet(cfg, base.unet, device, weight_dtype)
    recorder = entity.AttentionRecorder() if cfg.entity_loss_weight > 0 else None
    if recorder is not None:
        recorder.install(unet)
    find_pairs = entity.SpacyPairs() if recorder is not None and cfg.entity_pairs == "spacy" else None
    denoiser = Denoiser(cam, unet)
    trainable = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
    text = FrozenTextEncoders(base, llm, recipe)
    cache = FeatureCache.open(cfg, base, llm, recipe) if cfg.cache_dir else None

    optimizer = _optimizer(cfg, denoiser)
    from diffusers.optimization import get_scheduler
    lr_schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    ema = EMA(trainable, cfg.ema_decay) if cfg.ema else None

    # --- resume --------------------------------------------------------------------------------
    step, micro_step, tally = 0, 0, data_module.SkipTally()
    if cfg.resume:
        checkpoint = state.find_checkpoint(output, cfg.resume)
        trainer_state, weights, optimizer_state, ema_state = state.load(checkpoint)
        _load_trainable(denoiser, weights, checkpoint)
        optimizer.load_state_dict(optimizer_state["optimizer"])
        lr_schedule.load_state_dict(optimizer_state["lr_schedule"])
        if ema is not None:
            ema.load(ema_state, trainer_state["step"])
        step, micro_step = trainer_state["step"], trainer_state["micro_step"]
        if main:  # the checkpoint holds every process's tally merged: one copy is enough
            tally = data_module.SkipTally.from_dict(trainer_state["skipped"])
        if trainer_state.get("world_size") != accelerator.num_processes:
            log.warning("resuming with %d processes, checkpoint had %s: the data order changes",
                        accelerator.num_processes, trainer_state.get("world_size"))
        if main:
            log.info("resumed from %s at step %d", checkpoint, step)
            _truncate_log(output / LOG_FILE, step)
    elif main:
        (output / LOG_FILE).unlink(missing_ok=True)

    denoiser, optimizer = accelerator.prepare(denoiser, optimizer)

    # --- data ----------------------------------------------------------------------------------
    dataset = data_module.open_dataset(cfg.data, cfg.resolution, center_crop=cfg.center_crop,
                                       random_flip=cfg.random_flip)
    if main and not cfg.resume:
        tally.add_skipped(getattr(dataset, "index_skips", []))
    batches = data_module.batches(dataset, cfg.batch_size, rank=accelerator.process_index,
                                  world_size=accelerator.num_processes, seed=cfg.seed, start_batch=micro_step,
                                  num_workers=cfg.num_workers)
    if main:
        log.info("training %s: %s params on %s, %d process(es), batch %d x %d accum, %s",
                 cfg.train, f"{sum(p.numel() for p in trainable.values()):,}", device, accelerator.num_processes,
                 cfg.batch_size, cfg.grad_accum, "fp32" if mixed_precision == "no" else "mixed " + mixed_precision)

    scheduler = base.scheduler
    progress = _Progress(main, cfg.max_steps, step)
    while step < cfg.max_steps:
        losses, entity_losses, keys = [], [], []
        started, data_wait = time.perf_counter(), 0.0
        for accum_index in range(cfg.grad_accum):
            waited = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - waited
            tally.add(batch)
            tally.check()
            keys += batch.keys
            g = step_generator(cfg.seed, accelerator.process_index, micro_step)
            micro_step += 1
            inputs = _micro_batch(batch, g, base, text, cache, cfg, device, weight_dtype)
            sync = accum_index == cfg.grad_accum - 1
            groups = _record_pairs(recorder, find_pairs, batch, inputs["drop"], base.tokenizer, device)
            with (accelerator.no_sync(denoiser) if not sync else contextlib.nullcontext()):
                with accelerator.autocast():
                    pred = denoiser(inputs["noisy"], inputs["timesteps"], inputs["text"].clip, inputs["text"].llm,
                                    inputs["added"])
                loss = _loss(pred.float(), inputs, scheduler, cfg.snr_gamma)
                losses.append(loss.detach())
                if recorder is not None:
                    reg = entity.symmetric_kl(recorder.end(), groups)
                    reg = reg if reg is not None else loss.new_zeros(())
                    entity_losses.append(reg.detach())
                    loss = loss + cfg.entity_loss_weight * reg
                accelerator.backward(loss / cfg.grad_accum)
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.update(trainable, step)
        step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        sample_keys = _gather_keys(accelerator, keys) if cfg.log_samples else None
        entity_loss = (accelerator.reduce(torch.stack(entity_losses).mean(), reduction="mean").item()
                       if entity_losses else None)
        if not math.isfinite(step_loss):
            raise LLM4GENError(f"the loss became {step_loss} at step {step}; lower --lr, or use bf16/fp32 "
                               "instead of fp16 mixed precision")
        if main:
            record = {"step": step, "loss": step_loss, "lr": lr_schedule.get_last_lr()[0],
                      "samples": step * cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
                      "step_s": round(time.perf_counter() - started, 4), "data_s": round(data_wait, 4)}
            if entity_loss is not None:
                record["entity_loss"] = entity_loss
            if sample_keys is not None:
                record["sample_keys"] = sample_keys  # one list per process
            with open(output / LOG_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            progress.update(step_loss, record["lr"])
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            tally_all = _gather_tally(accelerator, tally)
            if main:
                _save_checkpoint(cfg, accelerator.unwrap_model(denoiser), trainable, optimizer, lr_schedule, ema,
                                 step, micro_step, tally_all, accelerator.num_processes, recipe)
            accelerator.wait_for_everyone()
    progress.close()

    tally_all = _gather_tally(accelerator, tally)
    if main:
        written = _export(cfg, accelerator.unwrap_model(denoiser), trainable, ema, recipe)
        _summary(cfg, step, tally_all, written)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output


# ---- models -------------------------------------------------------------------------------------

def _make_cam(cfg: TrainConfig, clip_dim: int, llm_dim: int) -> CrossAdapter:
    if cfg.init_adapter is not None:
        cam = load_cross_adapter(cfg.init_adapter, dtype=torch.float32)
        have = (cam.config.clip_dim, cam.config.llm_dim)
        if have != (clip_dim, llm_dim):
            raise LLM4GENError(f"--init-adapter {cfg.init_adapter} fuses CLIP {have[0]} / LLM {have[1]} features, but "
                               f"this base's CLIP is {clip_dim} wide and this LLM {llm_dim}: use an adapter for them, "
                               "or none to start fresh")
    else:
        cam = CrossAdapter(CrossAdapterConfig(clip_dim=clip_dim, llm_dim=llm_dim, heads=cfg.cam_heads,
                                              ffn_dim=4 * clip_dim, depth=cfg.cam_depth))
    return cam.float().train().requires_grad_(True)


def _prepare_unet(cfg: TrainConfig, unet, device, weight_dtype):
    if cfg.train == "cam":
        unet.requires_grad_(False).eval().to(device, weight_dtype)
    elif cfg.train == "cam+lora":
        from peft import LoraConfig

        unet.requires_grad_(False).to(device, weight_dtype)
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                    init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        from diffusers.training_utils import cast_training_params

        cast_training_params(unet, dtype=torch.float32)  # LoRA trains in fp32 whatever the frozen UNet's dtype
        unet.train()
    else:
        unet.requires_grad_(True).train().to(device, torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def _optimizer(cfg: TrainConfig, denoiser: Denoiser):
    groups = [{"params": [p for p in denoiser.cam.parameters() if p.requires_grad], "lr": cfg.lr}]
    unet_params = [p for p in denoiser.unet.parameters() if p.requires_grad]
    if unet_params:
        groups.append({"params": unet_params, "lr": cfg.unet_lr or cfg.lr})
    if cfg.optimizer == "adam8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise LLM4GENError("--optimizer adam8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _load_trainable(denoiser: Denoiser, weights: dict, where: Path) -> None:
    params = dict(denoiser.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != wanted:
        raise state.ResumeError(f"{where}: its weights do not match this run's trainable parameters "
                                f"(another --train mode or model?): {len(set(weights) ^ wanted)} names differ")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


# ---- one micro-batch ----------------------------------------------------------------------------

def _micro_batch(batch, g: torch.Generator, base, text: FrozenTextEncoders, cache, cfg, device, weight_dtype) -> dict:
    size = len(batch.keys)
    drop = torch.rand(size, generator=g) < cfg.caption_dropout
    if cache is not None:
        moments, features = cache.features(batch, base, text, device, weight_dtype)
    else:
        with torch.no_grad():
            moments = base.vae.encode(batch.pixel_values.to(device, weight_dtype)).latent_dist.parameters
        features = text.features(batch.texts)
    mean, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    latents = (mean + std * torch.randn(mean.shape, generator=g).to(device)) * base.vae_scale
    features = drop_captions(features, drop, text.empty())
    noise = torch.randn(latents.shape, generator=g).to(device)
    timesteps = torch.randint(0, base.scheduler.config.num_train_timesteps, (size,), generator=g).to(device)
    added = None
    if base.is_sdxl:
        added = {"text_embeds": features.pooled, "time_ids": sdxl_time_ids(batch, cfg.resolution).to(device)}
    return {"latents": latents, "noise": noise, "timesteps": timesteps, "drop": drop, "text": features,
            "added": added, "noisy": base.scheduler.add_noise(latents, noise, timesteps)}


def sdxl_time_ids(batch, resolution: int) -> torch.Tensor:
    """SDXL's size conditioning per sample: original (h, w), crop (top, left), target (h, w), in the
    order ComfyUI builds it from CLIP Text Encode (SDXL)'s height, width, crop_h, crop_w, target sizes."""
    originals = batch.original_sizes or [(resolution, resolution)] * len(batch.keys)
    corners = batch.crop_top_lefts or [(0, 0)] * len(batch.keys)
    return torch.tensor([[*o, *c, resolution, resolution] for o, c in zip(originals, corners)], dtype=torch.float32)


def _record_pairs(recorder, find_pairs, batch, drop, tokenizer, device):
    """Tell the recorder which CLIP tokens to keep for the entity loss; returns the pair layout."""
    if recorder is None:
        return None
    captions = ["" if d else t for t, d in zip(batch.texts, drop.tolist())]
    pairs = [[] if d else (find_pairs(t) if find_pairs else p) for t, p, d in zip(batch.texts, batch.pairs, drop.tolist())]
    positions, groups = entity.pair_layout(tokenizer, captions, pairs, tokenizer.model_max_length)
    recorder.begin(positions.to(device) if positions is not None else None)
    return groups


def _loss(pred: torch.Tensor, inputs: dict, scheduler, snr_gamma: float | None) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = inputs["noise"]
    elif kind == "v_prediction":
        target = scheduler.get_velocity(inputs["latents"], inputs["noise"], inputs["timesteps"])
    else:
        raise LLM4GENError(f"the base's scheduler predicts {kind!r}; training supports epsilon and v_prediction")
    per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, inputs["timesteps"])
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
    return (per_sample * weight).mean()


# ---- bookkeeping --------------------------------------------------------------------------------

def _gather_keys(accelerator, keys: list[str]) -> list[list[str]]:
    if accelerator.num_processes == 1:
        return [keys]
    from accelerate.utils import gather_object

    return gather_object([keys])


def _gather_tally(accelerator, tally):
    if accelerator.num_processes == 1:
        return tally
    from accelerate.utils import gather_object

    merged = data_module.SkipTally()
    for part in gather_object([tally.to_dict()]):
        merged.merge(data_module.SkipTally.from_dict(part))
    return merged


def _save_checkpoint(cfg, denoiser, trainable, optimizer, lr_schedule, ema, step, micro_step, tally, world, recipe):
    trainer_state = {"step": step, "micro_step": micro_step, "world_size": world,
                     "skipped": tally.to_dict(),
                     "config": cfg.to_json(), "recipe": recipe.to_metadata()}
    state.save(cfg.output, step, {n: p for n, p in trainable.items()},
               {"optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict()}, trainer_state,
               ema=ema.shadow if ema is not None else None,
               write_extra=lambda folder: export.write_adapter(_exported_cam(denoiser, ema),
                                                               folder / export.ADAPTER_FILE, recipe, str(cfg.llm)),
               keep=cfg.keep_checkpoints)


def _exported_cam(denoiser: Denoiser, ema) -> CrossAdapter:
    """The CAM to write: the EMA weights when --ema, else the trained ones."""
    if ema is None:
        return denoiser.cam
    cam = CrossAdapter(denoiser.cam.config)
    cam.load_state_dict({k[len("cam."):]: v for k, v in ema.shadow.items() if k.startswith("cam.")})
    return cam


def _export(cfg: TrainConfig, denoiser: Denoiser, trainable, ema, recipe) -> list[Path]:
    if ema is not None:
        ema.copy_to(trainable)
    written = [export.write_adapter(denoiser.cam, cfg.output / export.ADAPTER_FILE, recipe, str(cfg.llm))]
    if cfg.train == "cam+unet":
        written += export.write_unet(denoiser.unet, cfg.output, cfg.unet_format, cfg.save_dtype)
    elif cfg.train == "cam+lora":
        written.append(export.write_lora(denoiser.unet, cfg.output / export.LORA_FILE, cfg.save_dtype))
    return written


def _summary(cfg: TrainConfig, step: int, tally, written: list[Path]) -> None:
    where = {export.ADAPTER_FILE: "models/llm4gen", export.UNET_DIR: "models/diffusion_models",
             export.COMFY_UNET_FILE: "models/diffusion_models", export.LORA_FILE: "models/loras"}
    log.info("done: %d steps", step)
    for path in written:
        log.info("  %s  -> ComfyUI %s", path, where.get(path.name, "?"))
    log.info("%s", tally.summary())


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after the checkpoint: the resumed run logs them again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


class _Progress:
    """tqdm on the main process: loss, it/s and ETA; nothing elsewhere."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
