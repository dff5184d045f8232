"""Which device the headless runner (scripts/run_workflow.py) starts ComfyUI on: the GPU when the
Python that runs ComfyUI sees one, the CPU when it does not or when asked. Decided here without a
GPU: the detection result is injected, or comes from a stand-in "python"."""
from __future__ import annotations

import stat
from types import SimpleNamespace
import sys

import pytest

from scripts import run_workflow as rw


def test_a_gpu_is_used_when_there_is_one():
    assert rw.choose_device("cuda: NVIDIA H200", None) == (False, "GPU (cuda: NVIDIA H200)")


def test_the_cpu_is_used_when_there_is_no_gpu():
    cpu, device = rw.choose_device(None, None, "no GPU found")
    assert cpu and device == "CPU (no GPU found)"


@pytest.mark.parametrize("flag, env, asked", [(True, {}, "--cpu"), (False, {"LLM4GEN_CPU": "1"}, "LLM4GEN_CPU=1")])
def test_the_cpu_is_used_when_asked_even_with_a_gpu(flag, env, asked):
    assert rw.cpu_request(flag, env) == asked
    cpu, device = rw.choose_device("cuda: NVIDIA H200", rw.cpu_request(flag, env))
    assert cpu and device.startswith(f"CPU (asked for by {asked})") and "cuda: NVIDIA H200" in device


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_a_false_env_value_does_not_ask_for_the_cpu(value):
    assert rw.cpu_request(False, {"LLM4GEN_CPU": value}) is None


def test_the_cpu_flag_is_an_option():
    assert rw.parse_args(["--cpu"]).cpu and not rw.parse_args([]).cpu


def fake_python(tmp_path, body: str) -> str:
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_detection_asks_the_python_that_runs_comfyui(tmp_path):
    assert rw.detect_gpu(fake_python(tmp_path, 'echo "cuda: Fake GPU 80GB"')) == ("cuda: Fake GPU 80GB", "")
    gpu, why = rw.detect_gpu(fake_python(tmp_path, "exit 0"))
    assert gpu is None and why == "no GPU found"
    gpu, why = rw.detect_gpu(fake_python(tmp_path, 'echo "ModuleNotFoundError: torch" >&2; exit 1'))
    assert gpu is None and "ModuleNotFoundError: torch" in why
    gpu, why = rw.detect_gpu(str(tmp_path / "no-such-python"))
    assert gpu is None and "could not ask" in why


def test_the_probe_runs_on_this_pythons_torch():
    """The probe itself is valid Python for a real torch (the CPU build here: no GPU)."""
    gpu, why = rw.detect_gpu(sys.executable)
    assert why == "" or why == "no GPU found"


class FakeProcess:
    def __init__(self, command, **kwargs):
        self.command = command

    def poll(self):
        return 0


@pytest.mark.parametrize("cpu", [True, False])
def test_comfyui_gets_the_cpu_flag_only_when_the_cpu_is_chosen(tmp_path, monkeypatch, cpu):
    monkeypatch.setattr(rw.comfyui_server.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(rw.comfyui_server.ComfyUIServer, "_wait_until_up", lambda *a: None)
    monkeypatch.setattr(rw.comfyui_host, "install", lambda: tmp_path)
    monkeypatch.setattr(rw.comfyui_host, "user_comfyui", lambda: None)
    args = SimpleNamespace(python=sys.executable, start_timeout=1)
    server = rw.start_server(tmp_path, args, "test", cpu)
    server.stop()
    assert ("--cpu" in server.process.command) == cpu
