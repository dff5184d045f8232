#!/usr/bin/env bash
# Sets up everything the tests and the headless runner need, from a fresh machine that has only
# Python 3.11 and pip: a virtual environment with the CPU build of torch, the pack's and the
# test host's requirements, and a real ComfyUI for the tests (scripts/comfyui_host.py).
# Idempotent: a second run with unchanged requirements only checks and returns.
#
#   LLM4GEN_VENV       where the venv goes (default: .venv in the repo)
#   LLM4GEN_CACHE_DIR  where the test host and random weights are cached (default: ~/.cache/comfyui-llm4gen)
#   COMFYUI_PATH       use an existing ComfyUI checkout as the host instead of installing one
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLM4GEN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
# Absolute, as given from where this was run: the tools below run from the repository root.
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac

say() { printf '[bootstrap] %s\n' "$*" >&2; }

# Runs pip through scripts/quiet_pip.py (as python -m scripts.quiet_pip, from the repository root),
# which drops what this set-up causes on purpose (the line this machine's pip configuration prints
# for every package; the torchvision/torch conflict below) so that only real errors show. Keeps
# pip's status.
quiet_pip() {
  (cd "$ROOT" && "$PY" -m scripts.quiet_pip "$@")
}

stamp_inputs() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-train.txt" "$ROOT/tests/requirements.txt" "$ROOT/tests/constraints.txt" \
      "$ROOT/scripts/bootstrap.sh" "$ROOT/scripts/torchvision_shim.py"
}
want="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.llm4gen-bootstrap"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "environment up to date: $VENV"
else
  say "creating the environment in $VENV (first run takes a few minutes)"
  "$PY" -m venv "$VENV"
  pip=(quiet_pip "$VENV/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  # The CPU wheel of torch 2.13.0 (never a CUDA build): the constraint makes pip fail rather
  # than quietly replace it.
  "${pip[@]}" install -q -c "$ROOT/tests/constraints.txt" torch==2.13.0
  # torchvision's only wheels are CUDA builds pinned to another torch: install its Python side
  # alone (ComfyUI needs nothing more); the shim below lets it import beside CPU torch.
  # kornia (the Canny node) and spandrel (upscale models) need it too, so they come without
  # their pins as well.
  # pip's next install then reports "torchvision 0.29.1 requires torch>=2.14.0": expected, and
  # harmless here; quiet_pip drops that report (and shows any other conflict or error).
  "${pip[@]}" install -q --no-deps torchvision==0.29.1 kornia==0.9.0 spandrel==0.4.2
  "${pip[@]}" install -q -c "$ROOT/tests/constraints.txt" -r "$ROOT/tests/requirements.txt"
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cp "$ROOT/scripts/torchvision_shim.py" "$site/_llm4gen_torchvision_shim.py"
  echo "import _llm4gen_torchvision_shim" > "$site/_llm4gen_torchvision_shim.pth"
  "$VENV/bin/python" -c 'import torch, torchvision, transformers; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| transformers", transformers.__version__)' >&2
  echo "$want" > "$stamp"
fi

# The real ComfyUI the tests run in (or the user's, via COMFYUI_PATH).
(cd "$ROOT" && "$VENV/bin/python" -m scripts.comfyui_host install) >&2
