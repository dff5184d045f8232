"""What the benchmark scripts share: timing, memory, machine facts, child processes, tables.

Benchmarks print figures; they never assert on them. Timings on a shared machine are disturbed
by other processes, so calls that are compared are run interleaved (A, B, A, B, ...) and both
the fastest run (least disturbed) and the median are kept.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --- timing -------------------------------------------------------------------------------------

def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, device="cpu", warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call, run in turn ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def fastest_median(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


# --- memory -------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_gib() -> float:
    """Resident memory of this process now (GiB)."""
    kib = _status_kib("VmRSS")
    return kib / 2**20 if kib is not None else float("nan")


def peak_rss_gib() -> float:
    """Peak resident memory of this process since start or the last ``reset_peak_rss`` (GiB)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return kib / 2**20


def reset_peak_rss() -> bool:
    """Restart the peak (VmHWM) at the current RSS, so peaks can be taken per phase (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class AnonPeak:
    """Peak anonymous RSS (RssAnon: heap, not file pages) while the ``with`` block runs,
    sampled every ``interval`` s by a thread. VmHWM also counts pages of memory-mapped files,
    which the kernel can drop and re-read; the anonymous peak is what must fit in RAM."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak_gib, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        kib = _status_kib("RssAnon")
        if kib is not None:
            self.peak_gib = max(self.peak_gib, kib / 2**20)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False


def anon_rss_gib() -> float:
    kib = _status_kib("RssAnon")
    return kib / 2**20 if kib is not None else float("nan")


def available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


# --- the machine --------------------------------------------------------------------------------

def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return " ".join(fields.get("Model name", platform.processor() or "?").split())
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "?"


def machine() -> dict:
    """Date, hardware and software versions a result must be read with."""
    import psutil
    import torch
    import transformers

    info = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "available_gib": round(available_gib(), 1),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "comfyui": comfyui_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": _git_commit(),
    }
    return info


def comfyui_version() -> str | None:
    try:
        from scripts.comfyui_host import comfyui_root

        text = (comfyui_root() / "comfyui_version.py").read_text()
        return text.split("__version__ =", 1)[1].strip().strip("\"'")
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


# --- child processes ----------------------------------------------------------------------------

def write_json(path: str | os.PathLike | None, result: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=1, default=str))


def run_child(module: str, args: list[str], json_path: Path, timeout: float | None = None, log=None) -> dict:
    """Run ``python -m benchmarks.<module>`` from the repository root in a fresh Python (its own
    peak memory, its own ComfyUI settings), its output streamed to ``log`` (default stderr);
    returns the JSON it wrote."""
    command = [sys.executable, "-m", f"benchmarks.{module}", *args, "--json", str(json_path)]
    log = log or sys.stderr
    print(f"\n$ {' '.join(command[1:])}", file=log, flush=True)
    start = time.perf_counter()
    process = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    took = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed with exit code {process.returncode} (see its output above)")
    result = json.loads(Path(json_path).read_text())
    result.setdefault("wall_seconds", took)
    return result


# --- tables -------------------------------------------------------------------------------------

def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def fmt_s(seconds: float | None, digits: int = 2) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.{digits}f} s"


def fmt_x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}x"


def fmt_gib(gib: float | None) -> str:
    return "-" if gib is None else f"{gib:.2f} GiB"
