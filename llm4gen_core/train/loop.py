"""The training loop: accelerate for devices and processes, :mod:`.objective` for what a step
computes, :mod:`.state` for checkpoints, :mod:`.export` for what ComfyUI loads.

    trainer = Trainer(config)     # models, optimizer, data; resumed when --resume
    trainer.run()                 # steps until --max-steps, checkpoints, then the outputs

One optimizer step = --grad-accum micro-batches per process (DDP synchronises the gradients of
the last one), gradient clipping, the optimizer and LR-schedule step, the EMA update, one log line.
Under DeepSpeed ZeRO-2 (:mod:`.zero`) the engine does the accumulation, clipping and optimizer step
itself, and checkpoints go through accelerate's save_state.
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
from . import entity, export, precision, state, zero
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
        if cfg.resume and not self.deepspeed:
            self._resume()
        if self.deepspeed:
            zero.configure(self.accelerator, cfg)
        self.denoiser, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)
        if self.deepspeed:
            # the LR schedule drives the optimizer DeepSpeed steps (with offload it is DeepSpeed's own
            # CPU Adam, not the one made above)
            self.lr_schedule = self._lr_schedule(self.denoiser.basic_optimizer)
            if cfg.resume:
                self._resume_deepspeed()
        self._open_data()
        self.log = RunLog(cfg.output, cfg.max_steps, self.step if cfg.resume else None) if self.main else None

    # ---- set-up -------------------------------------------------------------------------------

    def _start_accelerate(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        mixed, why = precision.for_this_machine(self.cfg.mixed_precision)
        has_gpu = torch.accelerator.is_available()
        # cpu=True where there is no accelerator: several launched processes then run DDP over gloo.
        # DeepSpeed: see zero.accelerator_options.
        options = zero.accelerator_options(has_gpu) if zero.requested() else {"cpu": not has_gpu}
        self.accelerator = Accelerator(mixed_precision=mixed, **options)
        self.main = self.accelerator.is_main_process
        logging.basicConfig(level=logging.INFO if self.main else logging.WARNING, format="%(message)s")
        log.info("mixed precision: %s (%s)", "fp32" if mixed == "no" else mixed, why)
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if zero.requested() and not self.deepspeed:
            raise LLM4GENError(f"launched with a DeepSpeed config, but accelerate set up "
                               f"{self.accelerator.distributed_type.value}: launch with `accelerate launch`")
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
        self.lr_schedule = self._lr_schedule(self.optimizer)
        self.ema = EMA(self.trainable, cfg.ema_decay) if cfg.ema else None

    def _lr_schedule(self, optimizer):
        from diffusers.optimization import get_scheduler

        return get_scheduler(self.cfg.lr_scheduler, optimizer, num_warmup_steps=self.cfg.lr_warmup_steps,
                             num_training_steps=self.cfg.max_steps)

    def _resume(self) -> None:
        checkpoint = state.find_checkpoint(self.cfg.output, self.cfg.resume)
        trainer_state, weights, optimizer_state, ema_state = state.load(checkpoint)
        if weights is None:
            raise state.ResumeError(f"{checkpoint} was written under DeepSpeed ZeRO-2, whose optimizer state is split "
                                    "by process: resume it with the DeepSpeed config and process count it was trained with")
        load_trainable(self.denoiser, weights, checkpoint)
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        self._resume_common(checkpoint, trainer_state, optimizer_state, ema_state)

    def _resume_deepspeed(self) -> None:
        """After the engine exists: weights and optimizer shards through accelerate's load_state."""
        checkpoint = state.find_checkpoint(self.cfg.output, self.cfg.resume)
        trainer_state, _, optimizer_state, ema_state = state.load(checkpoint)
        if trainer_state.get("engine") != "deepspeed":
            raise state.ResumeError(f"{checkpoint} was written without DeepSpeed: resume it with the accelerate config "
                                    "it was trained with (ZeRO-2 cannot take over a whole-optimizer state)")
        if trainer_state.get("trainable") != sorted(self.trainable):
            raise state.ResumeError(f"{checkpoint}: its weights do not match this run's trainable parameters "
                                    "(another --train mode or model?)")
        if trainer_state.get("world_size") != self.accelerator.num_processes:
            raise state.ResumeError(f"{checkpoint}: written by {trainer_state.get('world_size')} processes; ZeRO-2 "
                                    f"splits the optimizer state by process, so resume it with that many, not "
                                    f"{self.accelerator.num_processes}")
        # frozen parameters are not in the checkpoint (see _checkpoint): not strict
        self.accelerator.load_state(str(checkpoint / state.DEEPSPEED_DIR), load_module_strict=False)
        self._resume_common(checkpoint, trainer_state, optimizer_state, ema_state)

    def _resume_common(self, checkpoint, trainer_state: dict, optimizer_state: dict, ema_state) -> None:
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
        log.info("training %s: %s params on %s, %d process(es)%s, batch %d x %d accum, %s", cfg.train,
                 f"{sum(p.numel() for p in self.trainable.values()):,}", self.device, acc.num_processes,
                 f" (DeepSpeed ZeRO-{zero.STAGE})" if self.deepspeed else "", cfg.batch_size, cfg.grad_accum,
                 "fp32" if self.mixed == "no" else "mixed " + self.mixed)

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
        weights = self._final_weights()
        if self.main:
            summary(self.step, tally, self._export(weights))
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
                total = loss + cfg.entity_loss_weight * entity_loss if entity_loss is not None else loss
                if self.deepspeed:
                    # the engine divides by --grad-accum, and clips and steps at the marked last micro-batch
                    acc.sync_gradients = last
                    acc.backward(total)
                else:
                    acc.backward(total / cfg.grad_accum)
            losses.append(loss.detach())
            if entity_loss is not None:
                entity_losses.append(entity_loss.detach())
        if cfg.max_grad_norm > 0 and not self.deepspeed:
            acc.clip_grad_norm_(list(self.trainable.values()), cfg.max_grad_norm)
        self.optimizer.step()  # DeepSpeed: a no-op (the engine stepped in backward), as zero_grad below
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
        cfg = self.cfg
        trainer_state = {"step": self.step, "micro_step": self.micro_step,
                         "world_size": self.accelerator.num_processes, "skipped": tally.to_dict(),
                         "config": cfg.to_json(), "recipe": self.recipe.to_metadata()}
        # Under DeepSpeed every process takes part in gathering the CAM; otherwise only the writer needs it.
        adapter = self._cam_to_export() if self.main or self.deepspeed else None
        if self.deepspeed:
            self._checkpoint_deepspeed(trainer_state, adapter)
            return
        if self.main:
            state.save(cfg.output, self.step, self.trainable,
                       {"optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict()},
                       trainer_state, ema=self.ema.shadow if self.ema is not None else None,
                       write_extra=lambda folder: export.write_adapter(adapter, folder / export.ADAPTER_FILE,
                                                                       self.recipe, str(cfg.llm)),
                       keep=cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _checkpoint_deepspeed(self, trainer_state: dict, adapter: CrossAdapter | None) -> None:
        """Every process writes its shard into the partial folder the main process made; the main
        process then adds the rest and renames it (state.py's atomic scheme)."""
        acc, cfg = self.accelerator, self.cfg
        if self.main:
            state.begin(cfg.output, self.step)
        acc.wait_for_everyone()
        # frozen parameters (the UNet in cam and cam+lora) stay out: the base model has them
        acc.save_state(str(state.partial_folder(cfg.output, self.step) / state.DEEPSPEED_DIR),
                       exclude_frozen_parameters=True)
        acc.wait_for_everyone()
        if self.main:
            trainer_state.update(engine="deepspeed", zero_stage=zero.STAGE, trainable=sorted(self.trainable))
            state.write_common(state.partial_folder(cfg.output, self.step),
                               {"lr_schedule": self.lr_schedule.state_dict()}, trainer_state,
                               ema=self.ema.shadow if self.ema is not None else None,
                               write_extra=lambda folder: export.write_adapter(adapter, folder / export.ADAPTER_FILE,
                                                                               self.recipe, str(cfg.llm)))
            state.finish(cfg.output, self.step, keep=cfg.keep_checkpoints)
        acc.wait_for_everyone()

    def _cam_to_export(self) -> CrossAdapter | None:
        """The CAM as trained, or its moving average with --ema. Under DeepSpeed every process must
        call it (the fp32 weights are gathered from the shards) and only the main one gets the CAM."""
        cam = self.accelerator.unwrap_model(self.denoiser).cam
        if self.ema is not None:
            weights = self.ema.shadow
        elif self.deepspeed:
            weights = zero.full_fp32_weights({n: p for n, p in self.trainable.items() if n.startswith("cam.")},
                                             keep=self.main)
            if weights is None:
                return None
        else:
            return cam
        averaged = CrossAdapter(cam.config)
        averaged.load_state_dict({k[len("cam."):]: v for k, v in weights.items() if k.startswith("cam.")})
        return averaged

    def _final_weights(self) -> dict[str, torch.Tensor] | None:
        """What the export writes instead of the module's own weights: the EMA under DeepSpeed, or
        DeepSpeed's fp32 masters (gathered: every process calls this); None otherwise."""
        if not self.deepspeed:
            return None
        if self.ema is not None:
            return self.ema.shadow
        return zero.full_fp32_weights(self.trainable, keep=self.main)

    def _export(self, weights: dict[str, torch.Tensor] | None = None) -> list[Path]:
        cfg, denoiser = self.cfg, self.accelerator.unwrap_model(self.denoiser)
        if weights is not None:  # DeepSpeed: the fp32 weights replace the engine's (training is over)
            for name, param in self.trainable.items():
                param.data = weights[name].detach().float()
        elif self.ema is not None:
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
