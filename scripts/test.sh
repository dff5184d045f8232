#!/usr/bin/env bash
# The test command: sets up the environment (scripts/bootstrap.sh) and runs the whole suite,
# unit tests and tests in a real ComfyUI. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "${LLM4GEN_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
