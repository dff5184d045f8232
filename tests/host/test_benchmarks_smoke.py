"""The benchmarks do not rot: ``python -m benchmarks.run_all --quick`` runs in a real ComfyUI and
prints its summary table with every row. No timing is asserted (benchmarks are not tests);
only that each measurement ran and produced a figure. About a minute on 2 cores."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    "llm.encode vs bare T5 forward, t5-v1.1-small",
    "LLM Encode node in ComfyUI vs bare forward",
    "encode phase, same prompt again in one session",
    "CAM fuse pos+neg (2 x B=1) vs one UNet step",
    "UNet call (KSampler step, B=2) 333 vs 77 ctx",
    "e2e cold load",
    "e2e cold encode",
    "e2e cold sample",
    "e2e cold decode",
    "e2e cold total, peak RSS",
    "load_llm small fp32: peak RSS",
    "load_llm small bf16: peak RSS",
    "load_llm small fp16: peak RSS",
    "LLM held during KSampler",
    "format load small: release .bin (fp32) as fp32",
    "format load small: release .bin (fp32) as bf16",
    "format load small: bf16 file as bf16",
    "format load small: fp8 file as auto",
    "format load small time: bf16 safetensors vs the fp32 .bin",
    "llm.encode small, 256 tok, B=1: dtype auto",
    "llm.encode small, 256 tok, B=1: fp8 file",
    "GPU table",
]


def test_run_all_quick_prints_every_row(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:] + (tmp_path / "log.txt").read_text()[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "measurement"
    for row in ROWS:
        matching = [line for line in lines if row in line]
        assert len(matching) == 1, f"{row!r} not in the table:\n{done.stdout}"
        cells = [c.strip() for c in matching[0].strip("|").split("|")]
        assert len(cells) == 6 and cells[1], matching[0]
    assert (tmp_path / "table.md").read_text().strip() in done.stdout
