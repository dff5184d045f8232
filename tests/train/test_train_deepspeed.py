"""DeepSpeed ZeRO-2 for real: the shipped deepspeed_zero2.yaml launched with two processes on this
CPU-only machine (DeepSpeed's CPU accelerator, gloo between the processes), the whole UNet trained.

- ZeRO-2 trains exactly what DDP trains: the same losses as multi_gpu.yaml on the same flags
  (gradient accumulation, clipping, LR schedule), up to float summation order;
- a run killed with SIGKILL after a checkpoint, resumed with `--resume latest`, logs the losses of
  the uninterrupted run and exports the same weights, bit for bit: each process's optimizer shard
  went into the checkpoint and came back;
- the checkpoint holds the split optimizer state (one shard per process) and an adapter that loads;
  a run without DeepSpeed refuses to resume it;
- cam+lora with --ema: the frozen UNet stays out of the checkpoint, the EMA is what is exported,
  equal to DDP's, and a resumed run equals the uninterrupted one;
- ZeRO-3 is refused, with the reason.

DeepSpeed compiles its shared-memory communication op with the C++ compiler on first use (about
two minutes on a 2-core machine, cached in ~/.cache/torch_extensions afterwards).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm4gen_core import load_cross_adapter
from llm4gen_core.train import state
from llm4gen_core.train.cli import main

from train.test_train_resume import losses, same_file_content
from scripts.tiny_training import train_args

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "llm4gen_core" / "train" / "accelerate"
STEPS = 6
FLAGS = ("--checkpoint-every", "2", "--lr", "1e-3", "--grad-accum", "2", "--lr-scheduler", "cosine",
         "--max-grad-norm", "0.05")  # a clip norm this small clips every step here: the clipping is exercised


def launch(config: str, args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", "2", "-m", "llm4gen_core.train", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **popen)


def kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL the training processes, then the launcher. torchrun starts each process in a session
    of its own: killing the launcher's process group alone leaves them running to the end."""
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive


def run(config: str, args: list[str]) -> str:
    proc = launch(config, args)
    try:
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            kill_launch(proc)
    assert proc.returncode == 0, err[-4000:]
    return err


def test_zero2_trains_like_ddp_and_resumes_exactly(tiny, tmp_path):
    straight = tmp_path / "zero2"
    err = run("deepspeed_zero2.yaml", train_args(tiny, straight, *FLAGS, steps=STEPS, mode="cam+unet"))
    assert "(DeepSpeed ZeRO-2)" in err and "done: 6 steps" in err

    # the same training as DDP: the same flags through multi_gpu.yaml
    ddp = tmp_path / "ddp"
    run("multi_gpu.yaml", train_args(tiny, ddp, *FLAGS, steps=STEPS, mode="cam+unet"))
    zero_losses, ddp_losses = losses(straight), losses(ddp)
    assert [s for s, _ in zero_losses] == list(range(1, STEPS + 1))
    assert [s for s, _ in zero_losses] == [s for s, _ in ddp_losses]
    for (_, a), (_, b) in zip(zero_losses, ddp_losses):
        assert a == pytest.approx(b, rel=1e-5), (zero_losses, ddp_losses)
    assert len({round(loss, 4) for _, loss in zero_losses}) == STEPS  # it trains: the loss moves

    # the checkpoint: one optimizer shard per process, the adapter of that step, no whole-model copy
    checkpoint = straight / "checkpoint-6"
    trainer_state, weights, optimizer_state, _ = state.load(checkpoint)
    assert trainer_state["engine"] == "deepspeed" and trainer_state["world_size"] == 2 and weights is None
    assert set(optimizer_state) == {"lr_schedule"}
    shards = sorted(p.name for p in (checkpoint / state.DEEPSPEED_DIR).rglob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert same_file_content(checkpoint / "adapter.safetensors", straight / "adapter.safetensors")
    load_cross_adapter(straight / "adapter.safetensors")
    # split by process: a run without DeepSpeed refuses it (and says why) rather than load half of it
    assert main(train_args(tiny, straight, "--resume", "latest", steps=STEPS + 2, mode="cam+unet")) == 2

    # killed after its checkpoint at step 2 or 4, then resumed: the uninterrupted run's numbers
    broken = tmp_path / "broken"
    args = train_args(tiny, broken, *FLAGS, steps=STEPS, mode="cam+unet")
    proc = launch("deepspeed_zero2.yaml", args)
    deadline = time.monotonic() + 900
    try:
        while not (broken / "checkpoint-2").exists():
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.01)
    finally:
        kill_launch(proc)
    complete = state.checkpoints(broken)
    assert complete and complete[-1][0] in (2, 4)
    assert complete[-1][0] < STEPS and not (broken / "adapter.safetensors").exists()
    err = run("deepspeed_zero2.yaml", args + ["--resume", "latest"])
    assert f"resumed from {complete[-1][1]}" in err
    assert losses(broken) == zero_losses
    for name in ("adapter.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert same_file_content(broken / name, straight / name), name


def test_zero2_lora_with_ema(tiny, tmp_path):
    """cam+lora with --ema: the engine holds a frozen UNet (left out of the checkpoint, so resumed
    non-strictly), and what is exported is the EMA. Equal to DDP's run; resumed, equal to itself."""
    flags = ("--checkpoint-every", "1", "--lr", "1e-3", "--lora-rank", "4", "--ema", "--ema-decay", "0.9")
    zero2, ddp = tmp_path / "zero2", tmp_path / "ddp"
    run("deepspeed_zero2.yaml", train_args(tiny, zero2, *flags, steps=3, mode="cam+lora"))
    run("multi_gpu.yaml", train_args(tiny, ddp, *flags, steps=3, mode="cam+lora"))
    for (_, a), (_, b) in zip(losses(zero2), losses(ddp), strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    from safetensors.torch import load_file

    for name in ("adapter.safetensors", "lora.safetensors"):
        ours, theirs = load_file(str(zero2 / name)), load_file(str(ddp / name))
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)
    unet_files = {p.name for p in (zero2 / "checkpoint-3" / state.DEEPSPEED_DIR).rglob("*model_states.pt")}
    assert unet_files == {"mp_rank_00_model_states.pt"}
    model_states = next((zero2 / "checkpoint-3" / state.DEEPSPEED_DIR).rglob("*model_states.pt"))
    module = torch.load(model_states, map_location="cpu", weights_only=True)["module"]
    assert module and all("lora" in key or key.startswith("cam.") for key in module)  # the frozen UNet left out

    resumed = tmp_path / "resumed"
    shutil.copytree(zero2, resumed)
    for path in ("checkpoint-3", "adapter.safetensors", "lora.safetensors"):
        shutil.rmtree(resumed / path) if (resumed / path).is_dir() else (resumed / path).unlink()
    run("deepspeed_zero2.yaml", train_args(tiny, resumed, *flags, "--resume", "latest", steps=3, mode="cam+lora"))
    assert losses(resumed) == losses(zero2)
    for name in ("adapter.safetensors", "lora.safetensors"):
        assert same_file_content(resumed / name, zero2 / name), name


def test_zero3_is_refused_with_the_reason(tiny, tmp_path):
    """Stage 3 splits the parameters too, which the EMA, the checkpoint's adapter and the export read
    whole: the trainer stops before training, saying so."""
    config = tmp_path / "zero3.yaml"
    config.write_text((CONFIGS / "deepspeed_zero2.yaml").read_text().replace("zero_stage: 2", "zero_stage: 3"))
    proc = launch(str(config), train_args(tiny, tmp_path / "zero3", steps=1, mode="cam+unet"))
    try:
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            kill_launch(proc)
    assert proc.returncode != 0
    assert "DeepSpeed ZeRO stage 3: this trainer supports stage 2 only" in err
    assert not (tmp_path / "zero3" / "train_log.jsonl").exists()


def test_shipped_zero2_config_is_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.distributed_type.value == "DEEPSPEED"
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["offload_optimizer_device"] == "none"
    assert config.mixed_precision == "no"  # the trainer's --mixed-precision decides, per device
    assert (config.num_processes, config.num_machines) == (2, 1)
