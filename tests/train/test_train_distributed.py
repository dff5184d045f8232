"""The distributed path for real: the shipped multi_gpu.yaml launched with `accelerate launch
--num_processes 2` runs two processes, DDP over gloo on this CPU-only machine. (accelerate 1.x's
`--cpu` flag would start one process only; without a GPU the trainer puts each launched process on
the CPU by itself.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm4gen_core import load_cross_adapter
from llm4gen_core.train import state

from scripts.tiny_training import train_args

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_two_processes_train_on_different_samples_and_write_once(tiny, tmp_path):
    out = tmp_path / "ddp"
    args = train_args(tiny, out, "--log-samples", "--checkpoint-every", "2", "--lr", "1e-3", steps=4, mode="cam+unet")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    config = REPO / "llm4gen_core" / "train" / "accelerate" / "multi_gpu.yaml"  # the file users launch with
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
              "-m", "llm4gen_core.train", *args]
    done = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one line per step: only the main process logs
    assert all(r["samples"] == r["step"] * 2 * 2 for r in records)  # batch 2 on each of 2 processes
    for record in records:
        rank0, rank1 = record["sample_keys"]
        assert len(rank0) == len(rank1) == 2
        assert not set(rank0) & set(rank1), record  # the processes see different samples
    first_epoch = [key for r in records for keys in r["sample_keys"] for key in keys]
    assert len(set(first_epoch)) == 16  # 4 steps x 2 processes x 2 = the whole set, each sample once

    # written once, complete, and what DDP kept in sync: the checkpoint's weights are the exported ones
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", ".checkpoint"))) == \
        ["checkpoint-2", "checkpoint-4"]
    _, weights, _, _ = state.load(out / "checkpoint-4")
    adapter = load_cross_adapter(out / "adapter.safetensors")
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, weights["cam." + key])
    assert "done: 4 steps" in done.stderr


@pytest.mark.parametrize("name, kind, processes, machines", [
    ("one_gpu", "NO", 1, 1), ("multi_gpu", "MULTI_GPU", 2, 1), ("multi_node", "MULTI_GPU", 16, 2)])
def test_shipped_accelerate_configs_are_valid(name, kind, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "llm4gen_core" / "train" / "accelerate" / f"{name}.yaml"))
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (kind, processes, machines)
    assert config.mixed_precision == "no"  # the trainer's --mixed-precision decides, per device
