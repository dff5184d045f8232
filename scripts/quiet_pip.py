"""Runs a pip command and passes its output on without the messages the set-up causes on purpose,
so that what remains on the screen is a real problem. pip's exit status is kept.

    python -m scripts.quiet_pip PYTHON -m pip install ...      (scripts/bootstrap.sh)

Dropped from pip's error output, and nothing else:

- ``Location 'file://...' is ignored: it is neither a file nor a directory``: this machine's pip
  configuration names file:// indexes that lack most packages; pip says so for each package.
- From pip's dependency-conflict report (an ``ERROR: pip's dependency resolver ...`` line, then one
  line per conflict), the conflict ``torchvision X requires torch..., but you have torch Y which is
  incompatible``: bootstrap.sh installs torchvision's Python side beside the CPU build of torch on
  purpose (torchvision's wheels are CUDA builds pinned to another torch; the shim makes it
  import). A report holding only that conflict is dropped whole; any other conflict in it is
  shown under the report's ERROR line. Every other line, errors included, passes unchanged.

Standard library only: it runs before the virtual environment exists.
"""
from __future__ import annotations

import re
import subprocess
import sys
from typing import Iterable, Iterator

IGNORED_LOCATION = "is ignored: it is neither a file nor a directory"
# pip/_internal/commands/install.py, _warn_about_conflicts: one logged message, first line prefixed.
REPORT_START = re.compile(r"^ERROR: pip's (?:legacy )?dependency resolver ")
CONFLICT = re.compile(r"^\S+ \S+ requires .+(?:, which is not installed| which is incompatible)\.$")
KNOWN_HARMLESS = re.compile(r"^torchvision \S+ requires torch(?![\w.-])[^,]*, but you have torch \S+ which is incompatible\.$")


def filter_lines(lines: Iterable[str]) -> Iterator[str]:
    """pip's error output (lines with their line ends) less the expected messages, in order. A
    conflict report is held back until the line after it (or the end), then passed on what is
    left of it."""
    report: list[str] | None = None
    for line in lines:
        text = line.rstrip("\r\n")
        if report is not None:
            if CONFLICT.match(text):
                report.append(line)
                continue
            yield from _report(report)
            report = None
        if IGNORED_LOCATION in text:
            continue
        if REPORT_START.match(text):
            report = [line]
            continue
        yield line
    if report is not None:
        yield from _report(report)


def _report(report: list[str]) -> list[str]:
    header, conflicts = report[0], report[1:]
    real = [line for line in conflicts if not KNOWN_HARMLESS.match(line.rstrip("\r\n"))]
    if conflicts and not real:
        return []
    return [header, *real]


def run(command: list[str]) -> int:
    """Run ``command`` (its standard output untouched), filter its error output onto ours, and
    return its exit status (128 + N when signal N ended it, as a shell reports it)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        for line in filter_lines(process.stderr):
            sys.stderr.write(line)
            sys.stderr.flush()
    except KeyboardInterrupt:  # Ctrl-C reached pip as well: its status says what happened
        pass
    status = process.wait()
    return 128 - status if status < 0 else status


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    return run(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
