"""One ComfyUI server for the bundled-workflow tests (test_workflows.py, test_browser_frontend.py):
its base directory holds random stand-ins under every file name the bundled workflows load,
placed by scripts.smoke_models exactly as the headless runner's smoke mode places them.

    host = workflow_host(tmp_path_factory)     # started once per test session
    host.prompts["llm4gen_sd15_txt2img"]        # the workflow as an API prompt (scripts/workflow_api.py)
    tiny(prompt)                                # 64x64, 2 steps, for CI
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from comfy_harness import REPO, ComfyBase, ComfyServer
from scripts import workflow_api

WORKFLOW_DIR = REPO / "example_workflows"
NAMES = sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))
SIZE, STEPS = 64, 2
_host = None


def load(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text(encoding="utf-8"))


class WorkflowHost:
    def __init__(self, root: Path):
        self.base = ComfyBase(root)
        self.server = ComfyServer(self.base)
        info = self.server.object_info()
        self.workflows = {name: load(name) for name in NAMES}
        prompts = {name: workflow_api.ui_to_api(wf, info) for name, wf in self.workflows.items()}
        files = sorted({f"{folder}/{value}" for p in prompts.values() for *_, folder, value in workflow_api.file_inputs(p)})
        subprocess.run([sys.executable, "-m", "scripts.smoke_models", str(self.base.root), *files], check=True, cwd=REPO)
        self.object_info = self.server.object_info()  # ComfyUI re-lists the folders it watches
        self.prompts = {name: workflow_api.ui_to_api(wf, self.object_info) for name, wf in self.workflows.items()}


def workflow_host(tmp_path_factory) -> WorkflowHost:
    global _host
    if _host is None:
        _host = WorkflowHost(tmp_path_factory.mktemp("workflow-base"))
    return _host


def tiny(prompt: dict) -> dict:
    """The prompt at 64x64 and 2 steps (widget overrides, as a user would type them)."""
    prompt = workflow_api.copy_prompt(prompt)
    workflow_api.set_inputs(prompt, ("EmptyLatentImage", "ImageScale"), width=SIZE, height=SIZE)
    workflow_api.set_inputs(prompt, ("KSampler",), steps=STEPS)
    return prompt
