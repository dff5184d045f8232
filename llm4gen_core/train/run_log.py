"""What a run tells its user: the progress bar, train_log.jsonl and the closing summary.
All of it on the main process only."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from . import export

log = logging.getLogger("llm4gen.train")
LOG_FILE = "train_log.jsonl"
COMFY_FOLDERS = {export.ADAPTER_FILE: "models/llm4gen", export.UNET_DIR: "models/diffusion_models",
                 export.COMFY_UNET_FILE: "models/diffusion_models", export.LORA_FILE: "models/loras"}


class RunLog:
    """One JSON line per optimizer step in ``output/train_log.jsonl``, and a tqdm bar with the
    loss, it/s and the time left."""

    def __init__(self, output: Path, total: int, resumed_at: int | None):
        self.path = output / LOG_FILE
        if resumed_at is None:
            self.path.unlink(missing_ok=True)
        else:
            self._drop_after(resumed_at)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=resumed_at or 0, desc="train", unit="step", dynamic_ncols=True)

    def _drop_after(self, step: int) -> None:
        """Lines of steps after the checkpoint go: the resumed run logs those steps again."""
        if self.path.is_file():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def step(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def summary(step: int, tally, written: list[Path]) -> None:
    log.info("done: %d steps", step)
    for path in written:
        log.info("  %s  -> ComfyUI %s", path, COMFY_FOLDERS.get(path.name, "?"))
    log.info("%s", tally.summary())
