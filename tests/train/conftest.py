"""Fixtures of the training tests: the tiny models and data (built once per session)."""
from __future__ import annotations

import pytest

from train import tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tiny_models.TinyTraining:
    return tiny_models.build_all(tmp_path_factory.mktemp("tiny-training"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process run makes its own Accelerator (accelerate keeps one state per process)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
