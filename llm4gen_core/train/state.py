"""Checkpoints a killed run can always come back from.

A checkpoint is written into ``.checkpoint-N.partial/`` and renamed to ``checkpoint-N/`` only when
complete (the rename is atomic), so a run killed mid-save keeps its previous checkpoint and the
partial folder is ignored (and removed by the next save). Contents:

- ``trainable.safetensors``: the trained weights by parameter name (CAM, LoRA or UNet)
- ``ema.safetensors``: their moving average, when --ema
- ``optimizer.pt``: optimizer and LR-schedule state (read back with weights_only=True)
- ``trainer_state.json``: step, batches consumed, skipped-data tally, the settings
- ``adapter.safetensors``: the adapter at this step, ready for ComfyUI

Under DeepSpeed ZeRO-2 (:mod:`.zero`) the optimizer state is split across the processes, so the
weights and that state live in ``deepspeed/`` (``accelerator.save_state``: each process writes its
own shard, the main process the module), ``optimizer.pt`` holds only the LR schedule, and there is
no ``trainable.safetensors``; ``trainer_state.json`` says ``"engine": "deepspeed"``. Every process
writes into the same partial folder; the main process alone creates it and renames it.

The data order and all noise come from (seed, rank, micro-step), not from RNG state, so a resumed
run continues exactly where the uninterrupted one would have been.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import LLM4GENError

STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_DIR = "deepspeed"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(LLM4GENError):
    """--resume points at nothing usable."""


def checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output``, oldest first."""
    found = []
    if output.is_dir():
        for entry in output.iterdir():
            match = _NAME.match(entry.name)
            if match and (entry / STATE_FILE).is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def find_checkpoint(output: Path, resume: str) -> Path:
    if resume == "latest":
        found = checkpoints(output)
        if not found:
            raise ResumeError(f"--resume latest: no complete checkpoint-N/ folder in {output}")
        return found[-1][1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ResumeError(f"--resume {path}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def save(output: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
         trainer_state: dict, ema: dict[str, torch.Tensor] | None = None, write_extra=None,
         keep: int = 2) -> Path:
    """Write checkpoint-``step`` atomically (main process only), then keep the newest ``keep``."""
    from safetensors.torch import save_file

    partial = begin(output, step)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(partial / TRAINABLE_FILE))
    write_common(partial, optimizer_state, trainer_state, ema, write_extra)
    return finish(output, step, keep)


def partial_folder(output: Path, step: int) -> Path:
    return output / f".checkpoint-{step}.partial"


def begin(output: Path, step: int) -> Path:
    """A fresh, empty partial folder for checkpoint-``step`` (main process)."""
    partial = partial_folder(output, step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_common(partial: Path, optimizer_state: dict, trainer_state: dict,
                 ema: dict[str, torch.Tensor] | None = None, write_extra=None) -> None:
    """What every checkpoint has besides the weights; the state file last (main process)."""
    from safetensors.torch import save_file

    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(partial / EMA_FILE))
    torch.save(optimizer_state, partial / OPTIMIZER_FILE)
    if write_extra is not None:
        write_extra(partial)
    (partial / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))


def finish(output: Path, step: int, keep: int = 2) -> Path:
    """Make the complete partial folder checkpoint-``step`` (atomic rename), keep the newest ``keep``."""
    partial, final = partial_folder(output, step), output / f"checkpoint-{step}"
    _sync(partial)
    if final.exists():  # the same step saved again (a resumed run): replace it
        shutil.rmtree(final)
    os.replace(partial, final)
    for _, old in checkpoints(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in output.glob(".checkpoint-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor] | None, dict, dict[str, torch.Tensor] | None]:
    """(trainer_state, trainable, optimizer_state, ema or None) of a checkpoint folder; trainable is
    None for a DeepSpeed checkpoint (its weights are in ``deepspeed/``)."""
    from safetensors.torch import load_file

    try:
        trainer_state = json.loads((path / STATE_FILE).read_text())
        deepspeed = trainer_state.get("engine") == "deepspeed"
        trainable = None if deepspeed else load_file(str(path / TRAINABLE_FILE))
        optimizer_state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        ema = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).is_file() else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ResumeError(f"{path}: checkpoint unreadable ({exc})") from None
    return trainer_state, trainable, optimizer_state, ema


def _sync(folder: Path) -> None:
    """Flush the files (DeepSpeed's in subfolders too) to disk before the rename makes the checkpoint visible."""
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
