"""Fixtures of the training tests: the tiny models and data (built once per session), and the
data layer's folder and shard set of 16 generated images."""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts import tiny_training
from synthetic.train_images import shard_sample, write_folder, write_shard


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tiny_training.TinyTraining:
    return tiny_training.build_all(tmp_path_factory.mktemp("tiny-training"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run makes its own Accelerator (accelerate keeps one state per process)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def folder(tmp_path) -> Path:
    """16 good images of varied size, format and mode, with metadata.jsonl."""
    return write_folder(tmp_path / "data")


@pytest.fixture
def shard_dir(tmp_path) -> Path:
    """The same 16 samples as 4 shards of 4 (data-000.tar .. data-003.tar), captions as txt or json."""
    directory = tmp_path / "shards"
    directory.mkdir()
    for shard in range(4):
        samples = [shard_sample(n, "txt" if n % 2 else "json") for n in range(4 * shard, 4 * shard + 4)]
        write_shard(directory / f"data-{shard:03d}.tar", samples)
    return directory
