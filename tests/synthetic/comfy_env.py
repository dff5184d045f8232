"""Import a real, unmodified ComfyUI into this Python process, CPU-only.

The model builders (``scripts.smoke_models``) and the in-process host (``tests/host``) share this
so that whichever imports ComfyUI first does it the same way (``scripts.comfyui_host.import_comfyui``
says how).
"""
from __future__ import annotations

import os
from pathlib import Path

from scripts.comfyui_host import cache_dir, comfyui_root, import_comfyui  # noqa: F401  (re-exported)


def comfy_t5_tokenizer() -> Path | None:
    """ComfyUI's bundled T5 tokenizer folder (tokenizer.json of the T5 v1.1 vocabulary), or None
    where the host has none."""
    folder = comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
    return folder if (folder / "tokenizer.json").is_file() else None


def prepare(base_directory: str | os.PathLike | None = None) -> Path:
    """Make ``import comfy...`` / ``import nodes`` load ComfyUI (CPU mode); returns its root.
    The work is done by ``scripts.comfyui_host.import_comfyui``, shared with the tools that
    build random stand-in models; see its docstring."""
    return import_comfyui(base_directory)
