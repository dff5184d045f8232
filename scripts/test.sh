#!/usr/bin/env bash
# The test command: sets up the environment (scripts/bootstrap.sh, scripts/install_browser.sh)
# and runs the whole suite: unit tests, tests in a real ComfyUI, and the real-browser test of
# ComfyUI's frontend. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
# Debian's chromium + chromedriver for the real-browser test (tests/host/test_browser_frontend.py).
bash "$ROOT/scripts/install_browser.sh"
cd "$ROOT"
exec "${LLM4GEN_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
