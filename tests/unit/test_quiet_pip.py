"""The set-up's pip output filter (scripts/quiet_pip.py, used by scripts/bootstrap.sh): the
torchvision/torch conflict the set-up causes on purpose is dropped, any other conflict or error
stays, and pip's exit status is kept."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts import quiet_pip

REPO = Path(__file__).resolve().parents[2]
HEADER = ("ERROR: pip's dependency resolver does not currently take into account all the packages that are "
          "installed. This behaviour is the source of the following dependency conflicts.\n")
# Captured from pip 26.3 installing a package torchvision depends on, after
# `pip install --no-deps torchvision==0.29.1` beside torch 2.13.0 (what bootstrap.sh does).
KNOWN = "torchvision 0.29.1 requires torch>=2.14.0, but you have torch 2.13.0 which is incompatible.\n"
IGNORED = "Location 'file:///opt/pypi-more/simple/aiohttp/' is ignored: it is neither a file nor a directory.\n"
OTHER_CONFLICT = "numpy 2.3.0 requires python>=3.12, but you have python 3.11.9 which is incompatible.\n"
MISSING = "kornia 0.9.0 requires kornia-rs>=0.2.0, which is not installed.\n"
OTHER_ERROR = ("ERROR: Could not find a version that satisfies the requirement nosuchpkg==1.0 (from versions: none)\n"
               "ERROR: No matching distribution found for nosuchpkg==1.0\n")


def filtered(text: str) -> str:
    return "".join(quiet_pip.filter_lines(text.splitlines(keepends=True)))


def test_the_known_conflict_report_is_dropped():
    assert filtered(HEADER + KNOWN) == ""
    assert filtered(IGNORED + HEADER + KNOWN + IGNORED) == ""
    assert filtered("before\n" + HEADER + KNOWN + "after\n") == "before\nafter\n"
    assert filtered(HEADER + KNOWN.rstrip("\n")) == ""  # no line end at the very end


def test_other_conflicts_in_the_same_report_are_kept_under_its_error_line():
    assert filtered(HEADER + KNOWN + OTHER_CONFLICT) == HEADER + OTHER_CONFLICT
    assert filtered(HEADER + MISSING + KNOWN) == HEADER + MISSING
    assert filtered(HEADER + OTHER_CONFLICT) == HEADER + OTHER_CONFLICT


def test_other_errors_pass_unchanged():
    assert filtered(OTHER_ERROR) == OTHER_ERROR
    assert filtered(HEADER + KNOWN + OTHER_ERROR) == OTHER_ERROR
    assert filtered(HEADER) == HEADER  # a report with no conflict lines: not the known one
    near_misses = [
        "torchvision 0.29.1 requires torchaudio>=2.14.0, but you have torchaudio 2.13.0 which is incompatible.\n",
        "torchvision 0.29.1 requires numpy, which is not installed.\n",
        "spandrel 0.4.2 requires torch>=2.14.0, but you have torch 2.13.0 which is incompatible.\n",
    ]
    for line in near_misses:
        assert filtered(HEADER + line) == HEADER + line
    assert filtered(KNOWN) == KNOWN  # outside a report it is just a line


def test_the_wrapper_keeps_stdout_and_the_exit_status():
    script = ("import sys; print('Successfully installed x'); "
              f"sys.stderr.write({(IGNORED + HEADER + KNOWN + OTHER_ERROR)!r}); sys.exit(3)")
    done = subprocess.run([sys.executable, "-m", "scripts.quiet_pip", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 3
    assert done.stdout == "Successfully installed x\n"
    assert done.stderr == OTHER_ERROR


def test_bootstrap_runs_pip_through_the_filter(tmp_path):
    """bootstrap.sh's quiet_pip, as defined there, on a stand-in pip."""
    body = (REPO / "scripts" / "bootstrap.sh").read_text()
    start = body.index("quiet_pip() {")
    function = body[start: body.index("\n}\n", start) + 3]
    fake_pip = tmp_path / "pip.py"
    fake_pip.write_text(f"import sys\nsys.stderr.write({(HEADER + KNOWN + MISSING)!r})\nsys.exit(1)\n")
    done = subprocess.run(["bash", "-c", f'{function}\nquiet_pip "$PY" "$1"', "bash", str(fake_pip)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PY": sys.executable, "ROOT": str(REPO)})
    assert done.returncode == 1
    assert done.stderr == HEADER + MISSING
