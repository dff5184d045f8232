"""What the headless runner (scripts/run_workflow.py) changes in a workflow before running it: in
smoke mode, 128x128 and 6 steps (README.md, Quick start); the workflow's own settings otherwise."""
from __future__ import annotations

import copy

import pytest

from scripts import run_workflow as rw

SHIPPED = {  # the parts of the text-to-image workflow's API prompt the runner may change
    "3": {"class_type": "KSampler", "inputs": {"steps": 50, "cfg": 7.5, "seed": 1}, "_meta": {"title": "KSampler"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1},
          "_meta": {"title": "Empty Latent Image"}},
}


def overridden(*argv: str, smoke: bool) -> tuple[dict, list[str]]:
    prompt = copy.deepcopy(SHIPPED)
    notes = rw.apply_overrides(prompt, rw.parse_args(["workflow.json", *argv]), smoke=smoke)
    return prompt, notes


def test_smoke_mode_runs_128_pixels_and_6_steps():
    prompt, notes = overridden(smoke=True)
    assert (rw.SMOKE_SIZE, rw.SMOKE_STEPS) == (128, 6)
    assert prompt["3"]["inputs"] == {"steps": 6, "cfg": 7.5, "seed": 1}
    assert prompt["5"]["inputs"] == {"width": 128, "height": 128, "batch_size": 1}
    assert notes == ["steps 6 (workflow: 50)", "size 128x128 (workflow: 512x512)"]


@pytest.mark.parametrize("argv, smoke", [((), False), (("--as-shipped",), True)], ids=["real-files", "as-shipped"])
def test_otherwise_the_workflow_runs_as_shipped(argv, smoke):
    prompt, notes = overridden(*argv, smoke=smoke)
    assert prompt == SHIPPED and notes == []


def test_explicit_size_and_steps_win_in_smoke_mode():
    prompt, notes = overridden("--size", "64", "--steps", "2", smoke=True)
    assert (prompt["3"]["inputs"]["steps"], prompt["5"]["inputs"]["width"]) == (2, 64)
    assert notes == ["steps 2 (workflow: 50)", "size 64x64 (workflow: 512x512)"]
