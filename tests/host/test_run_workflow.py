"""The headless runner (scripts.run_workflow, what `bash scripts/run.sh` runs) as a user runs
it: a child process starting a real ComfyUI server. Without the model files it names each
missing file and where it goes, then runs in a labelled smoke mode on random stand-ins; with the
files present it runs the workflow as shipped (here with explicit, reported size and steps
overrides, to keep CI short)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_harness import REPO
from scripts import workflow_specs as specs

WORKFLOW = REPO / "example_workflows" / "llm4gen_sd15_txt2img.json"
EXPECTED = {  # what workflow 1 loads, where the runner must say it goes
    "models/diffusion_models": specs.UNET, "models/checkpoints": specs.SD15,
    "models/LLM": specs.RANKGEN, "models/llm4gen": specs.PROJECTOR,
}


def run_runner(*args: str, timeout: float = 900) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "scripts.run_workflow", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=REPO)
    return done.returncode, done.stdout


def saved_paths(output: str) -> list[tuple[Path, str]]:
    return [(Path(m.group(1)), m.group(2)) for m in re.finditer(r"^saved: (\S+)(.*)$", output, re.M)]


def assert_picture(path: Path, size: int) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[:2] == (size, size) and pixels.std() > 0


def test_missing_files_are_named_then_smoke_mode_runs_on_random_weights(tmp_path):
    real, smoke = tmp_path / "real", tmp_path / "smoke"
    code, out = run_runner(str(WORKFLOW), "--base-directory", str(real), "--smoke-base", str(smoke),
                           "--size", "64", "--steps", "2")
    assert code == 0, out
    for folder, name in EXPECTED.items():
        assert str(real / folder / name) in out, f"the runner did not say where {name} goes:\n{out}"
    assert "SMOKE MODE: RANDOM WEIGHTS" in out
    assert re.search(r"^\[llm4gen\] device: +(CPU|GPU) \(", out, re.M), "the device ComfyUI runs on is named"
    assert "steps 2 (workflow: 50)" in out and "size 64x64 (workflow: 512x512)" in out
    assert re.search(r"KSampler.*: step 2/2", out), "sampler progress is shown"
    ((path, label),) = saved_paths(out)
    assert "SMOKE MODE" in label
    assert path.is_file() and smoke in path.parents, "the smoke image goes to the smoke base, not the user's"
    assert_picture(path, 64)
    # The stand-ins live in the smoke base only; the user's folders got nothing.
    assert not any((real / "models").rglob("*.safetensors")) and not (real / "models/LLM" / specs.RANKGEN).exists()
    assert (smoke / "models/diffusion_models" / specs.UNET).exists()


def test_with_the_files_present_the_workflow_runs_as_shipped(tmp_path):
    real = tmp_path / "real"
    wanted = [f"{folder.split('/', 1)[1]}/{name}" for folder, name in EXPECTED.items()]
    subprocess.run([sys.executable, "-m", "scripts.smoke_models", str(real), *wanted], check=True, cwd=REPO)
    code, out = run_runner(str(WORKFLOW), "--base-directory", str(real), "--size", "64", "--steps", "2", "--seed", "5")
    assert code == 0, out
    assert "SMOKE" not in out
    assert "all model files found: running the workflow as shipped, except: steps 2 (workflow: 50); " \
           "size 64x64 (workflow: 512x512); seed 5" in out
    ((path, label),) = saved_paths(out)
    assert label == "" and real / "output" in path.parents
    assert_picture(path, 64)


def test_no_smoke_stops_when_files_are_missing(tmp_path):
    code, out = run_runner(str(WORKFLOW), "--base-directory", str(tmp_path / "real"), "--no-smoke")
    assert code == 1
    assert "--no-smoke: stopping" in out and "SMOKE MODE" not in out and not saved_paths(out)


def test_smoke_mode_runs_the_sdxl_workflow_on_sdxl_stand_ins(tmp_path):
    """The SDXL workflow in smoke mode: its checkpoint and adapter names get the SDXL stand-ins
    (a checkpoint stock CheckpointLoaderSimple loads as SDXL, an adapter of CLIP width 2048)."""
    smoke = tmp_path / "smoke"
    workflow = REPO / "example_workflows" / "llm4gen_sdxl_txt2img.json"
    code, out = run_runner(str(workflow), "--smoke", "--smoke-base", str(smoke), "--size", "64", "--steps", "2")
    assert code == 0, out
    assert "SMOKE MODE: RANDOM WEIGHTS" in out
    assert "steps 2 (workflow: 30)" in out and "size 64x64 (workflow: 1024x1024)" in out
    checkpoint = smoke / "models/checkpoints" / specs.SDXL
    adapter = smoke / "models/llm4gen" / specs.SDXL_ADAPTER
    assert "sdxl-tiny-checkpoint" in checkpoint.resolve().name and "cam-sdxl-tiny" in adapter.resolve().name
    ((path, label),) = saved_paths(out)
    assert "SMOKE MODE" in label and smoke in path.parents
    assert_picture(path, 64)
