#!/usr/bin/env bash
# README command 1: set up what is needed (scripts/bootstrap.sh: venv, a real ComfyUI) and run
# the LLM4GEN SD1.5 text-to-image workflow headless through it, printing where the image went.
# Without the real model files it says which are missing and runs in smoke mode on random
# weights (clearly labelled). Arguments go to scripts/run_workflow.py (--help lists them),
# e.g. another workflow: bash scripts/run.sh example_workflows/llm4gen_vs_sd15_dense_prompt.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
# The runner is the module scripts.run_workflow. The repository root goes on the import path
# instead of being made the current folder, so that paths given here stay relative to yours.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "${LLM4GEN_VENV:-$ROOT/.venv}/bin/python" -m scripts.run_workflow "$@"
