"""Import a real, unmodified ComfyUI into this Python process, CPU-only.

The model builders (``synthetic.sd15``) and the in-process host (``tests/host``) share this so
that whichever imports ComfyUI first does it the same way:

- ComfyUI's root goes first on ``sys.path``: its top-level modules ``nodes``, ``utils``,
  ``execution``, ``server`` ... would otherwise clash with this repo's ``nodes/`` package.
- ``comfy.cli_args.args`` is ComfyUI's argument namespace (defaults: nothing is parsed when
  ComfyUI is imported as a library). ``cpu`` must be set before ``comfy.model_management``
  is imported (it picks the device at import), ``base_directory`` before ``folder_paths``
  is imported (it computes every folder at import).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# ComfyUI's top-level module names that this repo or the tests could shadow.
_COMFY_TOP_LEVEL = ("nodes", "utils", "execution", "server", "folder_paths", "comfy", "app")


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


def cache_dir() -> Path:
    return _host_module().cache_dir()


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", []) or []), None)
    return Path(path).resolve() if path else None


def prepare(base_directory: str | os.PathLike | None = None) -> Path:
    """Make ``import comfy...`` / ``import nodes`` load ComfyUI (CPU mode); returns its root.

    ``base_directory`` (``--base-directory``) can only be chosen before ``folder_paths`` is
    imported; asking for another one afterwards is an error rather than a silent mix-up.
    """
    root = comfyui_root().resolve()
    if not (root / "comfy" / "model_management.py").exists():
        raise RuntimeError(f"no ComfyUI at {root}: run `python scripts/comfyui_host.py install`")
    for name in _COMFY_TOP_LEVEL:
        where = _module_file(name)
        if name in sys.modules and (where is None or root not in where.parents):
            raise RuntimeError(
                f"module {name!r} was imported from {where}, not from ComfyUI at {root}: "
                "import ComfyUI (tests/synthetic/comfy_env.prepare) before anything named like it"
            )
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    sys.path.insert(0, str(root))

    from comfy.cli_args import args  # parses nothing: ComfyUI's defaults

    if "comfy.model_management" not in sys.modules:
        args.cpu = True
    elif not args.cpu:
        raise RuntimeError("comfy.model_management was imported before CPU mode could be set")
    if base_directory is not None:
        wanted = os.path.abspath(base_directory)
        if "folder_paths" in sys.modules:
            current = sys.modules["folder_paths"].base_path
            if os.path.abspath(current) != wanted:
                raise RuntimeError(f"ComfyUI's folder_paths already uses {current}, not {wanted}")
        args.base_directory = wanted
    return root
