"""Run the pack's loaders on untrusted files in a separate, resource-limited worker process.

A loader that crashes (segfault, abort), hangs or allocates without bound on a damaged file must
show up as one failed case, never as a dead or stuck pytest. ``IsolatedLoader`` keeps a worker
process that has torch, transformers and ``llm4gen_core`` imported, and hands it one case at a
time:

- memory: the worker's address space is capped (``RLIMIT_AS``) at what it uses after its imports
  plus ``headroom`` bytes, and each case reports its peak resident memory (``VmHWM``, reset before
  the case through ``/proc/self/clear_refs``);
- time: a case that does not answer within ``timeout`` seconds is a hang: the worker (our own
  child, by its pid) is killed and a fresh one started;
- a worker that dies is a crash: its exit status and the tail of its stderr are the outcome;
- side effects: an audit hook (PEP 578) records what a loader must never do (open a socket,
  start a process, write a file, import code from outside the Python installation and this
  repository), so a test can check that no file made anything of that kind happen.

    with IsolatedLoader() as loader:
        outcome = loader.run("load_cross_adapter", path=str(file))
        assert outcome.status == "error" and outcome.llm4gen_error
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
GiB = 1 << 30


@dataclass
class Outcome:
    """What one case did: ``status`` is "ok", "error" (an exception, described), "crash" or "hang"."""

    status: str
    summary: dict = field(default_factory=dict)        # "ok": what was loaded
    exception_type: str = ""                           # "error": the exception's class name
    llm4gen_error: bool = False                        # "error": an llm4gen_core LLM4GENError
    message: str = ""                                  # "error": str(exception); crash/hang: details
    traceback: str = ""                                # "error" that is not an LLM4GENError
    peak_rss_growth: int = 0                           # bytes: peak resident memory during the case - before
    events: list = field(default_factory=list)         # forbidden side effects the audit hook saw
    seconds: float = 0.0


class IsolatedLoader:
    def __init__(self, headroom: int = GiB, timeout: float = 30.0, python: str = sys.executable):
        self.headroom, self.timeout, self.python = headroom, timeout, python
        self.restarts = -1
        self._stderr = tempfile.TemporaryFile()
        self._start()

    def __enter__(self) -> "IsolatedLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._stderr.seek(0)
        self._stderr.truncate()
        self.process = subprocess.Popen(
            [self.python, "-c", "from synthetic.isolated import worker_main; worker_main()", str(self.headroom)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self.restarts += 1
        ready = self._read_line(180.0)
        if ready is None or json.loads(ready).get("ready") is not True:
            raise RuntimeError(f"the isolated loader worker did not start:\n{self.stderr_tail()}")

    def _read_line(self, timeout: float) -> str | None:
        """One line from the worker, or None when it died or said nothing for ``timeout`` s."""
        deadline = time.monotonic() + timeout
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.process.stdout], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            if not chunk:
                return None
            buffer += chunk
            if buffer.endswith(b"\n"):
                return buffer.decode()

    def stderr_tail(self, chars: int = 3000) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    def run(self, op: str, **args) -> Outcome:
        """Run ``op`` (see OPS) with ``args`` in the worker; a fresh worker replaces a dead one."""
        start = time.monotonic()
        self.process.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self.process.stdin.flush()
        line = self._read_line(self.timeout)
        seconds = time.monotonic() - start
        if line is not None:
            return Outcome(**json.loads(line), seconds=seconds)
        hung = self.process.poll() is None
        if hung:
            self.process.kill()
        code = self.process.wait()
        details = f"exit status {code}; worker stderr:\n{self.stderr_tail()}"
        self._start()
        if hung:
            return Outcome("hang", message=f"no answer within {self.timeout:.0f} s ({details})", seconds=seconds)
        return Outcome("crash", message=details, seconds=seconds)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()


# --- the worker -----------------------------------------------------------------------------

def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak resident set size (VmHWM)
        f.write("5")


class _Audit:
    """Records the side effects no loader may have. Installed after the worker's own imports."""

    PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                      "os.forkpty", "pty.spawn")
    NETWORK_EVENTS = ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                      "urllib.Request", "http.client.connect")

    def __init__(self):
        import sysconfig

        self.active = False
        self.events: list[str] = []
        self.trusted_code = tuple({os.path.realpath(p) for p in (
            sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"], sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"], sys.prefix, sys.base_prefix, str(REPO))})

    def __call__(self, event: str, args) -> None:
        if not self.active:
            return
        if event.startswith(self.PROCESS_EVENTS) or event.startswith(self.NETWORK_EVENTS):
            self.events.append(f"{event} {str(args)[:200]}")
        elif event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            if writes and str(path) not in ("/dev/null",) and not str(path).startswith("/proc/self/"):
                self.events.append(f"open for writing {path}")
        elif event == "import":
            module, filename = args[0], args[1]
            if filename and not os.path.realpath(str(filename)).startswith(self.trusted_code):
                self.events.append(f"import {module} from {filename}")


def _cam_op(path: str, heads: int | None = None):
    import torch

    from llm4gen_core import load_cross_adapter

    adapter = load_cross_adapter(path, heads=heads)
    cfg = adapter.config
    with torch.no_grad():
        out = adapter(torch.randn(1, 5, cfg.clip_dim), torch.randn(1, 7, cfg.llm_dim))
    return {"config": vars(cfg), "finite": bool(torch.isfinite(out).all())}


def _llm_op(path: str, tokenizer_path: str | None = None, dtype: str = "fp32", text: str = "a photo of a cat",
            max_tokens: int = 16, template: str = "plain"):
    import torch

    from llm4gen_core import load_llm

    llm = load_llm(path, tokenizer_path=tokenizer_path, dtype=dtype, device="cpu", template=template)
    out = llm.encode([text], max_tokens=max_tokens)
    return {"kind": llm.kind, "hidden_size": llm.hidden_size, "shape": list(out.hidden_states.shape),
            "finite": bool(torch.isfinite(out.hidden_states).all())}


def _read_tensor_file_op(path: str):
    from llm4gen_core.safe_files import read_tensor_file

    tensors, metadata = read_tensor_file(path)
    return {"keys": sorted(tensors)[:20], "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}


OPS = {"load_cross_adapter": _cam_op, "load_llm": _llm_op, "read_tensor_file": _read_tensor_file_op}


def worker_main() -> None:
    import resource
    import traceback

    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, not into the answers
    headroom = int(sys.argv[1])
    import torch
    import transformers  # noqa: F401
    import sentencepiece  # noqa: F401
    import safetensors.torch  # noqa: F401
    from llm4gen_core import LLM4GENError
    import llm4gen_core.llm_loading  # noqa: F401
    import llm4gen_core.tokenization  # noqa: F401

    torch.set_num_threads(1)
    # Warm up the lazy imports a first load does, so that they do not count as a case's effects.
    import transformers.models.t5.modeling_t5  # noqa: F401
    from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel  # noqa: F401

    limit = _status_kb("VmSize") * 1024 + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    audit = _Audit()
    sys.addaudithook(audit)
    results.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        case = json.loads(line)
        before = _status_kb("VmRSS")
        _reset_peak_rss()
        audit.events = []
        audit.active = True
        try:
            answer = {"status": "ok", "summary": OPS[case["op"]](**case["args"])}
        except BaseException as exc:  # everything a damaged file can make a loader raise
            answer = {"status": "error", "exception_type": type(exc).__name__,
                      "llm4gen_error": isinstance(exc, LLM4GENError), "message": str(exc)[:4000]}
            if not isinstance(exc, LLM4GENError):
                answer["traceback"] = traceback.format_exc()[-4000:]
        finally:
            audit.active = False
        answer["peak_rss_growth"] = max(0, _status_kb("VmHWM") - before) * 1024
        answer["events"] = audit.events
        results.write(json.dumps(answer) + "\n")
