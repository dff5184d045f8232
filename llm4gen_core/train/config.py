"""Every setting of a training run, in one place, checked before anything heavy is loaded."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LLM4GENError

MODES = ("cam", "cam+lora", "cam+unet")
PRECISIONS = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adam8bit")
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear")
UNET_FORMATS = ("diffusers", "comfyui", "both")
ENTITY_PAIRS = ("metadata", "spacy")


class TrainConfigError(LLM4GENError):
    """A training setting is unusable; raised before any model is loaded."""


@dataclass
class TrainConfig:
    base: Path                      # diffusers folder or single-file SD checkpoint
    llm: Path                       # as load_llm takes it
    data: str                       # folder with metadata.jsonl, or .tar shards (file, glob, brace pattern)
    output: Path
    train: str = "cam"              # what is trained: see MODES
    tokenizer: Path | None = None   # the LLM's tokenizer when its folder has none
    clip_tokenizer: Path | None = None  # CLIP's tokenizer for a single-file base
    init_adapter: Path | None = None
    # model recipe
    llm_max_tokens: int = 256
    llm_hidden_layer: int = -1
    llm_template: str = "plain"
    llm_prefix: str | None = None   # None: the LLM kind's default ("pre " for T5)
    llm_dtype: str = "auto"
    cam_heads: int = 8              # fresh adapters only (a file gives its own)
    cam_depth: int = 1
    lora_rank: int = 16
    lora_alpha: float | None = None  # None: = rank (scale 1)
    prediction_type: str | None = None  # None: the base's scheduler decides
    # optimisation
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    unet_lr: float | None = None    # None: lr
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    max_steps: int = 1000
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.1
    snr_gamma: float | None = None  # min-SNR weighting (5.0 is the paper's value); None: plain MSE
    ema: bool = False
    ema_decay: float = 0.9999
    entity_loss_weight: float = 0.0  # entity-guided regularisation (our reading of the AAAI version)
    entity_pairs: str = "metadata"
    spacy_model: str = "en_core_web_sm"  # --entity-pairs spacy: a package name or a pipeline folder
    # run management
    resume: str | None = None       # "latest" or a checkpoint folder
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    cache_dir: Path | None = None
    num_workers: int = 0
    unet_format: str = "diffusers"
    save_dtype: str = "fp32"
    log_samples: bool = False

    def __post_init__(self):
        for name in ("base", "llm", "output", "tokenizer", "clip_tokenizer", "init_adapter", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value).expanduser())
        self.check()

    def check(self) -> None:
        choices = {"train": MODES, "mixed_precision": PRECISIONS, "optimizer": OPTIMIZERS,
                   "lr_scheduler": LR_SCHEDULES, "unet_format": UNET_FORMATS, "entity_pairs": ENTITY_PAIRS,
                   "llm_template": ("plain", "chat"), "save_dtype": ("fp32", "fp16", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; "
                                       f"got {getattr(self, name)!r}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise TrainConfigError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}")
        positive = ("resolution", "batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_checkpoints",
                    "llm_max_tokens", "cam_heads", "cam_depth", "lora_rank")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.resolution % 8:
            raise TrainConfigError(f"--resolution must be a multiple of 8 (the VAE's factor), got {self.resolution}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise TrainConfigError(f"--caption-dropout is a probability in [0, 1], got {self.caption_dropout}")
        if self.lr <= 0 or (self.unet_lr is not None and self.unet_lr <= 0):
            raise TrainConfigError("learning rates must be positive")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise TrainConfigError(f"--snr-gamma must be positive, got {self.snr_gamma}")
        if not 0.0 < self.ema_decay < 1.0:
            raise TrainConfigError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")
        if self.entity_loss_weight < 0:
            raise TrainConfigError(f"--entity-loss-weight must be >= 0, got {self.entity_loss_weight}")
        if self.cache_dir is not None and (self.random_flip or not self.center_crop):
            raise TrainConfigError("--cache-dir keeps the latents of one center crop per image: it cannot serve "
                                   "--random-flip or --random-crop; drop one or the other")
        if self.entity_loss_weight > 0 and self.gradient_checkpointing:
            raise TrainConfigError("--entity-loss-weight reads the attention maps of the forward pass, which "
                                   "--gradient-checkpointing recomputes without gradients; use one or the other")
        if self.num_workers < 0 or self.lr_warmup_steps < 0:
            raise TrainConfigError("--num-workers and --lr-warmup-steps must be >= 0")
        for name in ("base", "llm"):
            if not getattr(self, name).exists():
                raise TrainConfigError(f"--{name} {getattr(self, name)}: no such file or folder")
        for name in ("tokenizer", "clip_tokenizer", "init_adapter"):
            value = getattr(self, name)
            if value is not None and not value.exists():
                raise TrainConfigError(f"--{name.replace('_', '-')} {value}: no such file or folder")

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
