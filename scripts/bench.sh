#!/usr/bin/env bash
# The benchmark command: sets up the environment (scripts/bootstrap.sh, as scripts/test.sh does)
# and runs every benchmark (python -m benchmarks.run_all), each heavy one in a fresh process, then
# prints one summary table. Arguments go to run_all.py: --quick (small models, < 1 min),
# --gpu (on a CUDA machine), --out DIR. Full run: ~20 min on 2 CPU cores, ~10 GiB peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "${LLM4GEN_VENV:-$ROOT/.venv}/bin/python" -m benchmarks.run_all "$@"
