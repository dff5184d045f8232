"""The training loop: accelerate for devices and processes, :mod:`.objective` for what a step
computes, :mod:`.state` for checkpoints, :mod:`.export` for what ComfyUI loads.

    trainer = Trainer(config)     # models, optimizer, data; resumed when --resume
    trainer.run()                 # steps until --max-steps, checkpoints, then the outputs

One optimizer step = --grad-accum micro-batches per process (DDP synchronises the gradients of
the last one), gradient clipping, the optimizer and LR-schedule step, the EMA update, one log line.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch

from ..cam import CrossAdapter
from ..errors import LLM4GENError
from ..llm import load_llm
from . import data as data_module
from . import entity, export, precision, state
from .base import load_base
from .cache import FeatureCache
from .config import TrainConfig
from .ema import EMA
from .models import load_trainable, make_cam, make_optimizer, prepare_unet
from .objective import Denoiser, denoising_loss, noised_batch, step_generator
from .run_log import RunLog, summary
from .text import FrozenTextEncoders

log = logging.getLogger("llm4gen.train")
PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def train(cfg: TrainConfig) -> Path:
    Trainer(cfg).run()
    return cfg.output


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._start_accelerate()
        self._build_models()
        self.step, self.micro_step, self.tally = 0, 0, data_module.SkipTally()
        if cfg.resume:
            self._resume()
        self.denoiser, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)
        self._open_data()
        self.log = RunLog(cfg.output, cfg.max_steps, self.step if cfg.resume else None) if self.main else None

    # ---- set-up -------------------------------------------------------------------------------

    def _start_accelerate(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        mixed, why = precision.for_this_machine(self.cfg.mixed_precision)
        # cpu=True where there is no accelerator: several launched processes then run DDP over gloo.
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.accelerator.is_available())
        self.main = self.accelerator.is_main_process
        logging.basicConfig(level=logging.INFO if self.main else logging.WARNING, format="%(message)s")
        log.info("mixed precision: %s (%s)", "fp32" if mixed == "no" else mixed, why)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise LLM4GENError("DeepSpeed is not supported by this trainer's checkpoints yet; use DDP (multi_gpu.yaml)")
        self.mixed, self.device, self.weight_dtype = mixed, self.accelerator.device, PRECISION_DTYPES[mixed]
        torch.manual_seed(self.cfg.seed)  # fresh weights (CAM, LoRA) start the same in every process and run
        self.cfg.output.mkdir(parents=True, exist_ok=True)

    def _build_models(self) -> None:
        cfg, device = self.cfg, self.device
        self.base = load_base(cfg.base, cfg.clip_tokenizer, cfg.prediction_type)
        llm = load_llm(cfg.llm, tokenizer_path=cfg.tokenizer, dtype=cfg.llm_dtype, device=device,
                       hidden_layer=cfg.llm_hidden_layer, template=cfg.llm_template, prefix=cfg.llm_prefix)
        llm.model.requires_grad_(False).eval()
        self.recipe = llm.recipe(cfg.llm_max_tokens)
        for frozen in self.base.frozen_parts():
            frozen.requires_grad_(False).eval().to(device, self.weight_dtype)
        if self.weight_dtype == torch.float16:  # SD VAEs (SDXL's above all) overflow in fp16: keep it fp32
            self.base.vae.to(torch.float32)
        cam = make_cam(cfg, self.base.clip_dim, llm.hidden_size).to(device)
        unet = prepare_unet(cfg, self.base.unet, device, self.weight_dtype)
        self.recorder = entity.AttentionRecorder() if cfg.entity_loss_weight > 0 else None
        if self.recorder is not None:
            self.recorder.install(unet)
        self.find_pairs = entity.SpacyPairs(cfg.spacy_model) if self.recorder and cfg.entity_pairs == "spacy" else None
        self.denoiser = Denoiser(cam, unet)
        self.trainable = {n: p for n, p in self.denoiser.named_parameters() if p.requires_grad}
        self.text = FrozenTextEncoders(self.base, llm, self.recipe)
        self.cache = FeatureCache.open(cfg, self.base, llm, self.recipe) if cfg.cache_dir else None
        self.optimizer = make_optimizer(cfg, cam, unet)
        from diffusers.optimization import get_scheduler

        self.lr_schedule = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                         num_training_steps=cfg.max_steps)
        self.ema = EMA(self.trainable, cfg.ema_decay) if cfg.ema else None

    def _resume(self) -> None:
        checkpoint = state.find_checkpoint(self.cfg.output, self.cfg.resume)
        trainer_state, weights, optimizer_state, ema_state = state.load(checkpoint)
        load_trainable(self.denoiser, weights, checkpoint)
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        self.lr_schedule.load_state_dict(optimizer_state["lr_schedule"])
        if self.ema is not None:
            self.ema.load(ema_state, trainer_state["step"])
        self.step, self.micro_step = trainer_state["step"], trainer_state["micro_step"]
        if self.main:  # the checkpoint holds every process's tally merged: one copy is enough
            self.tally = data_module.SkipTally.from_dict(trainer_state["skipped"])
            log.info("resumed from %s at step %d", checkpoint, self.step)
        if trainer_state.get("world_size") != self.accelerator.num_processes:
            log.warning("resuming with %d processes, checkpoint had %s: the data order changes",
                        self.accelerator.num_processes, trainer_state.get("world_size"))

    def _open_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        dataset = data_module.open_dataset(cfg.data, cfg.resolution, center_crop=cfg.center_crop,
                                           random_flip=cfg.random_flip)
        if self.main and not cfg.resume:
            self.tally.add_skipped(getattr(dataset, "index_skips", []))
        self.batches = data_module.batches(dataset, cfg.batch_size, rank=acc.process_index,
                                           world_size=acc.num_processes, seed=cfg.seed,
                                           start_batch=self.micro_step, num_workers=cfg.num_workers)
        log.info("training %s: %s params on %s, %d process(es), batch %d x %d accum, %s", cfg.train,
                 f"{sum(p.numel() for p in self.trainable.values()):,}", self.device, acc.num_processes,
                 cfg.batch_size, cfg.grad_accum, "fp32" if self.mixed == "no" else "mixed " + self.mixed)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        while self.step < cfg.max_steps:
            record = self._optimizer_step()
            if self.main:
                self.log.step(record)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self._checkpoint()
        if self.main:
            self.log.close()
        tally = self._gathered_tally()
        if self.main:
            summary(self.step, tally, self._export())
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def _optimizer_step(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        started, data_wait = time.perf_counter(), 0.0
        losses, entity_losses, keys = [], [], []
        for index in range(cfg.grad_accum):
            waited = time.perf_counter()
            batch = next(self.batches)
            data_wait += time.perf_counter() - waited
            self.tally.add(batch)
            self.tally.check()
            keys += batch.keys
            last = index == cfg.grad_accum - 1
            with acc.no_sync(self.denoiser) if not last else contextlib.nullcontext():
                loss, entity_loss = self._micro_step(batch)
                acc.backward((loss + cfg.entity_loss_weight * entity_loss if entity_loss is not None else loss)
                             / cfg.grad_accum)
            losses.append(loss.detach())
            if entity_loss is not None:
                entity_losses.append(entity_loss.detach())
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(list(self.trainable.values()), cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.trainable, self.step)
        return self._record(losses, entity_losses, keys, time.perf_counter() - started, data_wait)

    def _micro_step(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(denoising loss, entity loss or None) of one micro-batch, with the graph for backward."""
        g = step_generator(self.cfg.seed, self.accelerator.process_index, self.micro_step)
        self.micro_step += 1
        x = noised_batch(batch, g, self.base, self.text, self.cache, self.cfg.caption_dropout, self.cfg.resolution,
                         self.device, self.weight_dtype)
        groups = self._watch_entity_pairs(batch, x.drop)
        with self.accelerator.autocast():
            pred = self.denoiser(x.noisy, x.timesteps, x.text.clip, x.text.llm, x.added)
        loss = denoising_loss(pred, x, self.base.scheduler, self.cfg.snr_gamma)
        if self.recorder is None:
            return loss, None
        entity_loss = entity.symmetric_kl(self.recorder.end(), groups)
        return loss, entity_loss if entity_loss is not None else loss.new_zeros(())

    def _watch_entity_pairs(self, batch, drop: torch.Tensor):
        """Tell the recorder which CLIP tokens the entity loss needs; returns the pair layout."""
        if self.recorder is None:
            return None
        dropped = drop.tolist()
        captions = ["" if d else t for t, d in zip(batch.texts, dropped)]
        pairs = [[] if d else (self.find_pairs(t) if self.find_pairs else p)
                 for t, p, d in zip(batch.texts, batch.pairs, dropped)]
        tokenizer = self.base.tokenizer
        positions, groups = entity.pair_layout(tokenizer, captions, pairs, tokenizer.model_max_length)
        self.recorder.begin(positions.to(self.device) if positions is not None else None)
        return groups

    def _record(self, losses, entity_losses, keys, seconds: float, data_wait: float) -> dict:
        """The step's log line, with the loss averaged over micro-batches and processes."""
        acc, cfg = self.accelerator, self.cfg
        loss = acc.reduce(torch.stack(losses).mean(), reduction="mean").item()
        if not math.isfinite(loss):
            raise LLM4GENError(f"the loss became {loss} at step {self.step}; lower --lr, or use bf16/fp32 "
                               "instead of fp16 mixed precision")
        record = {"step": self.step, "loss": loss, "lr": self.lr_schedule.get_last_lr()[0],
                  "samples": self.step * cfg.batch_size * cfg.grad_accum * acc.num_processes,
                  "step_s": round(seconds, 4), "data_s": round(data_wait, 4)}
        if entity_losses:
            record["entity_loss"] = acc.reduce(torch.stack(entity_losses).mean(), reduction="mean").item()
        if cfg.log_samples:
            record["sample_keys"] = _gather(acc, keys)  # one list per process
        return record

    # ---- outputs ------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        tally = self._gathered_tally()
        if self.main:
            cfg = self.cfg
            trainer_state = {"step": self.step, "micro_step": self.micro_step,
                             "world_size": self.accelerator.num_processes, "skipped": tally.to_dict(),
                             "config": cfg.to_json(), "recipe": self.recipe.to_metadata()}
            adapter = self._cam_to_export()
            state.save(cfg.output, self.step, self.trainable,
                       {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict()},
                       trainer_state, ema=self.ema.shadow if self.ema is not None else None,
                       write_extra=lambda folder: export.write_adapter(adapter, folder / export.ADAPTER_FILE,
                                                                       self.recipe, str(cfg.llm)),
                       keep=cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _cam_to_export(self) -> CrossAdapter:
        """The CAM as trained, or its moving average with --ema."""
        cam = self.accelerator.unwrap_model(self.denoiser).cam
        if self.ema is None:
            return cam
        averaged = CrossAdapter(cam.config)
        averaged.load_state_dict({k[len("cam."):]: v for k, v in self.ema.shadow.items() if k.startswith("cam.")})
        return averaged

    def _export(self) -> list[Path]:
        cfg, denoiser = self.cfg, self.accelerator.unwrap_model(self.denoiser)
        if self.ema is not None:
            self.ema.copy_to(self.trainable)
        written = [export.write_adapter(denoiser.cam, cfg.output / export.ADAPTER_FILE, self.recipe, str(cfg.llm))]
        if cfg.train == "cam+unet":
            written += export.write_unet(denoiser.unet, cfg.output, cfg.unet_format, cfg.save_dtype)
        elif cfg.train == "cam+lora":
            written.append(export.write_lora(denoiser.unet, cfg.output / export.LORA_FILE, cfg.save_dtype))
        return written

    def _gathered_tally(self) -> data_module.SkipTally:
        if self.accelerator.num_processes == 1:
            return self.tally
        merged = data_module.SkipTally()
        for part in _gather(self.accelerator, self.tally.to_dict()):
            merged.merge(data_module.SkipTally.from_dict(part))
        return merged


def _gather(accelerator, value) -> list:
    """``value`` of every process, in rank order (one process: just this one)."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])
