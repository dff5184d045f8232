"""Import a real, unmodified ComfyUI into this Python process, CPU-only.

The model builders (``synthetic.sd15``, ``scripts/smoke_models.py``) and the in-process host
(``tests/host``) share this so that whichever imports ComfyUI first does it the same way
(``scripts/comfyui_host.import_comfyui`` says how).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _host_module():
    """scripts/comfyui_host.py, loaded by path (``scripts`` is not a package)."""
    name = "_llm4gen_comfyui_host"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "comfyui_host.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def comfyui_root() -> Path:
    return _host_module().comfyui_root()


def comfy_t5_tokenizer() -> Path | None:
    """ComfyUI's bundled T5 tokenizer folder (tokenizer.json of the T5 v1.1 vocabulary), or None
    where the host has none."""
    folder = comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
    return folder if (folder / "tokenizer.json").is_file() else None


def cache_dir() -> Path:
    return _host_module().cache_dir()


def prepare(base_directory: str | os.PathLike | None = None) -> Path:
    """Make ``import comfy...`` / ``import nodes`` load ComfyUI (CPU mode); returns its root.
    The work is done by ``scripts/comfyui_host.import_comfyui``, shared with the scripts that
    build random stand-in models; see its docstring."""
    return _host_module().import_comfyui(base_directory)
