#!/usr/bin/env bash
# Makes a headless Chromium and its WebDriver available for the real-browser test
# (tests/host/test_browser_frontend.py) and scripts/build_workflows.py, which drive them with
# selenium (scripts/chromium.py): Debian's `chromium` and `chromium-driver` packages, never a
# browser or driver download.
# Idempotent: returns at once when both are already installed. Installs with apt-get when run
# as root (CI machines are fresh Debian images with only Python); otherwise says what to run.
# Always exits 0: the browser test itself reports loudly when no browser could be had.
#
#   LLM4GEN_CHROMIUM / LLM4GEN_CHROMEDRIVER   use these binaries instead of the system ones
set -uo pipefail

say() { printf '[install_browser] %s\n' "$*" >&2; }

chromium="${LLM4GEN_CHROMIUM:-$(command -v chromium || true)}"
driver="${LLM4GEN_CHROMEDRIVER:-$(command -v chromedriver || true)}"
if [ -n "$chromium" ] && [ -x "$chromium" ] && [ -n "$driver" ] && [ -x "$driver" ]; then
  say "chromium and chromedriver present: $chromium, $driver"
  exit 0
fi

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  say "WARNING: no chromium/chromedriver and cannot install them here (needs root and apt-get)."
  say "         Install Debian's packages: sudo apt-get install -y chromium chromium-driver"
  say "         The real-browser test will be skipped and say so."
  exit 0
fi

say "installing Debian's chromium and chromium-driver (apt-get; first time only) ..."
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
if apt-get update -q >"$log" 2>&1 \
   && apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core >>"$log" 2>&1; then
  say "installed: $(chromium --version 2>/dev/null) / $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
else
  say "WARNING: apt-get could not install chromium; the real-browser test will be skipped. Last lines:"
  tail -n 20 "$log" >&2
fi
rm -f "$log"
exit 0
