"""A run killed with SIGKILL keeps a loadable checkpoint, and `--resume latest` then logs exactly the
losses of a run that was never interrupted (CPU, same seed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm4gen_core import load_cross_adapter
from llm4gen_core.train import state
from llm4gen_core.train.cli import main

from scripts.tiny_training import train_args

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS = 10


def losses(output: Path) -> list[tuple[int, float]]:
    lines = (output / "train_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def killed_run(args: list[str], output: Path, kill_after: Path) -> None:
    """Start the trainer in its own process and SIGKILL it as soon as ``kill_after`` exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "llm4gen_core.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not kill_after.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["cam+lora"])
def test_killed_then_resumed_equals_uninterrupted(tiny, tmp_path, mode):
    extra = ("--checkpoint-every", "2", "--lr", "1e-3", "--ema", "--ema-decay", "0.9", "--lr-scheduler", "cosine",
             "--grad-accum", "2", "--lora-rank", "4")
    straight = tmp_path / "straight"
    assert main(train_args(tiny, straight, *extra, steps=STEPS, mode=mode)) == 0

    broken = tmp_path / "broken"
    args = train_args(tiny, broken, *extra, steps=STEPS, mode=mode)
    killed_run(args, broken, broken / "checkpoint-4")
    complete = state.checkpoints(broken)
    assert complete and complete[-1][0] >= 4
    newest = complete[-1][1]
    trainer_state, weights, optimizer_state, ema = state.load(newest)
    assert trainer_state["step"] == complete[-1][0] and weights and ema is not None
    load_cross_adapter(newest / "adapter.safetensors")  # the adapter of that step loads in the nodes

    assert main(args + ["--resume", "latest"]) == 0
    assert losses(broken) == losses(straight)
    for name in ("lora.safetensors", "adapter.safetensors"):
        assert same_file_content(broken / name, straight / name), name


def same_file_content(a: Path, b: Path) -> bool:
    """Equal tensors and metadata (safetensors orders its metadata differently from run to run)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        return (fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
                and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()))


def test_partial_checkpoint_is_ignored_and_cleaned(tmp_path):
    import torch

    out = tmp_path / "run"
    state.save(out, 2, {"w": torch.ones(2)}, {"optimizer": {}}, {"step": 2})
    partial = out / ".checkpoint-4.partial"
    partial.mkdir()
    (partial / state.TRAINABLE_FILE).write_bytes(b"half a file")
    assert state.find_checkpoint(out, "latest").name == "checkpoint-2"
    (out / "checkpoint-3").mkdir()  # a folder without its state file is not a checkpoint either
    assert state.find_checkpoint(out, "latest").name == "checkpoint-2"
    state.save(out, 6, {"w": torch.ones(2)}, {"optimizer": {}}, {"step": 6}, keep=1)
    assert [p.name for _, p in state.checkpoints(out)] == ["checkpoint-6"]
    assert not partial.exists()


def test_resume_errors_say_what_is_wrong(tiny, tmp_path):
    with pytest.raises(state.ResumeError, match="no complete checkpoint"):
        state.find_checkpoint(tmp_path, "latest")
    with pytest.raises(state.ResumeError, match="not a complete checkpoint"):
        state.find_checkpoint(tmp_path, str(tmp_path))
    # a checkpoint of another mode does not silently load into this one
    out = tmp_path / "cam"
    assert main(train_args(tiny, out, "--checkpoint-every", "1", steps=1, mode="cam")) == 0
    assert main(train_args(tiny, out, "--resume", "latest", steps=2, mode="cam+lora")) == 2
