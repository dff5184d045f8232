"""A real, unmodified ComfyUI for host tests: base directory, in-process host, server.

- ``ComfyBase``: a ``--base-directory`` laid out as ComfyUI expects, with this repo linked
  into ``custom_nodes/ComfyUI-LLM4GEN`` and the test-only recorder pack
  (``recorder_pack/``) as ``custom_nodes/llm4gen_test_recorder``. ``place()`` links model
  files or folders into model folders.
- ``InProcessComfy``: ComfyUI imported into this process; ``run(prompt)`` validates with
  ComfyUI's ``execution.validate_prompt`` and runs ComfyUI's ``PromptExecutor``.
- ``ComfyServer``: ``main.py`` as a subprocess on loopback; ``run(prompt)`` POSTs ``/prompt``
  and polls ``/history/<id>``.

Both hosts share the base directory and the same ``run() -> RunResult`` API, raising
``ComfyValidationError`` / ``ComfyExecutionError`` with ComfyUI's own messages.
"""
from __future__ import annotations

import asyncio
import atexit
import copy
import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from synthetic import comfy_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORDER_PACK = HERE / "recorder_pack"
PACK_LINK = "ComfyUI-LLM4GEN"
RECORDER_LINK = "llm4gen_test_recorder"
RECORDS_SUBDIR = "llm4gen_test_records"  # recorder_pack writes here, under the output dir
RECORDER_NODE = "LLM4GENTestRecordUNet"
CLIENT_ID = "llm4gen-tests"
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "LLM", "llm4gen", "controlnet",
                 "loras", "vae", "clip", "embeddings")


# --- errors and results ---------------------------------------------------------------------

class ComfyError(Exception):
    """A prompt ComfyUI refused or failed; the message is ComfyUI's own."""


class ComfyValidationError(ComfyError):
    """``validate_prompt`` refused the prompt (HTTP 400 from the server)."""

    def __init__(self, error: dict, node_errors: dict):
        self.error, self.node_errors = error, node_errors
        lines = [f"{error.get('message')}: {error.get('details')}".rstrip(": ")]
        for node_id, info in (node_errors or {}).items():
            for e in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__("\n".join(lines))


class ComfyExecutionError(ComfyError):
    """A node raised while the prompt ran (``execution_error`` in the history's messages)."""

    def __init__(self, prompt_id: str, details: dict, interrupted: bool = False):
        self.prompt_id, self.details, self.interrupted = prompt_id, details, interrupted
        self.node_id = details.get("node_id")
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message", "")
        if interrupted:
            text = f"prompt {prompt_id} interrupted at node {self.node_id} ({self.node_type})"
        else:
            text = (f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: "
                    f"{self.exception_message}\n" + "".join(details.get("traceback") or []))
        super().__init__(text)


def _raise_if_failed(prompt_id: str, messages: list) -> None:
    for event, data in messages:
        if event in ("execution_error", "execution_interrupted"):
            raise ComfyExecutionError(prompt_id, data, interrupted=event == "execution_interrupted")


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict          # node id -> UI output, as in /history ("images": [{filename, subfolder, type}])
    messages: list         # [(event, data)] ComfyUI's status messages (execution_start ... success)
    base: "ComfyBase"
    events: list = field(default_factory=list)  # in-process only: every event the executor sent

    def files(self, key: str = "images", node_id: str | None = None) -> list[Path]:
        """Paths of the files output nodes reported under ``key`` ("images" for SaveImage and
        PreviewImage, "latents" for SaveLatent), optionally of one node only."""
        found = []
        for nid, ui in self.outputs.items():
            if node_id is not None and nid != node_id:
                continue
            for item in ui.get(key, []):
                kind = item.get("type", "output")
                folder = self.base.output_dir if kind == "output" else self.base.root / kind
                found.append(folder / item.get("subfolder", "") / item["filename"])
        return found

    def images(self) -> list[Path]:
        return self.files("images")

    def records(self, kind: str = "unet", label: str | None = None) -> list[dict]:
        """What LLM4GENTestRecordUNet nodes recorded during this prompt, in call order."""
        return self.base.records(self.prompt_id, kind=kind, label=label)


# --- the base directory ---------------------------------------------------------------------

class ComfyBase:
    """A ComfyUI ``--base-directory`` in a temp folder, shared by both hosts."""

    def __init__(self, root: str | os.PathLike, repo: Path = REPO):
        self.root = Path(root).resolve()
        for folder in MODEL_FOLDERS:
            (self.root / "models" / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("input", "output", "user", "temp", "custom_nodes"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._link(self.root / "custom_nodes" / PACK_LINK, Path(repo).resolve())
        self._link(self.root / "custom_nodes" / RECORDER_LINK, RECORDER_PACK)

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    def folder(self, name: str) -> Path:
        return self.root / "input" if name == "input" else self.root / "models" / name

    def place(self, folder: str, source: str | os.PathLike, name: str | None = None) -> str:
        """Link ``source`` (file or folder) into ``models/<folder>`` (or ``input``); returns the
        name ComfyUI lists it under (e.g. the value for a loader's combo input).

        ComfyUI caches folder listings (``folder_paths.filename_list_cache``) and trusts them
        while the modification times of the folders it walked are unchanged; the link changes
        the folder's mtime, and this makes sure it really differs (file times are coarse), so
        both the in-process host and a running server see the new entry on their next listing.
        """
        source = Path(source).resolve()
        if not source.exists():
            raise FileNotFoundError(source)
        name = name or source.name
        target = self.folder(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            if target.resolve() == source:
                return name
            raise FileExistsError(f"{target} already exists and is not a link to {source}")
        before = target.parent.stat().st_mtime_ns
        target.symlink_to(source, target_is_directory=source.is_dir())
        after = target.parent.stat()
        if after.st_mtime_ns == before:
            os.utime(target.parent, ns=(after.st_atime_ns, before + 1_000_000))
        folder_paths = sys.modules.get("folder_paths")
        if folder_paths is not None:  # in-process: drop the listing outright as well
            folder_paths.filename_list_cache.clear()
        return name

    def records(self, prompt_id: str, kind: str | None = "unet", label: str | None = None) -> list[dict]:
        import torch

        folder = self.output_dir / RECORDS_SUBDIR / prompt_id
        found = []
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            record = torch.load(path, map_location="cpu", weights_only=True)
            if (kind is None or record["kind"] == kind) and (label is None or record["label"] == label):
                found.append(record)
        return found

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        link.symlink_to(target, target_is_directory=True)


# --- in-process host ------------------------------------------------------------------------

class _EventLog:
    """Stands in for ``server.PromptServer`` where the executor reports to it (``send_sync``,
    ``client_id``, ``last_node_id``); keeps every event so tests can read progress."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.events.append(("progress_text", {"text": text, "node_id": node_id}))

    def queue_updated(self):
        pass


class InProcessComfy:
    """ComfyUI imported into the test process, running prompts with its own executor."""

    def __init__(self, base: ComfyBase, api_nodes: bool = False):
        start = time.perf_counter()
        self.base = base
        self.root = comfy_env.prepare(base.root)
        import comfy.model_management  # noqa: F401  (CPU mode is set: it picks the device now)
        import utils.extra_config  # noqa: F401  (main.py imports it before nodes)
        import folder_paths

        # What main.py's apply_custom_paths adds, so both hosts list the same folders.
        for name in ("checkpoints", "clip", "vae", "diffusion_models", "loras"):
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.get_output_directory(), name))
        import comfy.utils
        import execution
        import hook_breaker_ac10a0
        import nodes

        hook_breaker_ac10a0.save_functions()
        self.import_failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=api_nodes))
        hook_breaker_ac10a0.restore_functions()
        if RECORDER_NODE not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"the test recorder pack did not load from {RECORDER_PACK}")
        self.nodes, self.execution, self.folder_paths = nodes, execution, folder_paths
        self.server = _EventLog()
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.executor = execution.PromptExecutor(self.server, cache_args={"lru": 0, "ram": 0})
        self.startup_seconds = time.perf_counter() - start

    def _progress_hook(self, value, total, preview_image, prompt_id=None, node_id=None):
        """main.py's hijack_progress: lets ProgressBar updates report and honour interrupts."""
        import comfy.model_management
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        prompt_id = prompt_id or (context.prompt_id if context else self.server.last_prompt_id)
        node_id = node_id or (context.node_id if context else self.server.last_node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()
        get_progress_state().update_progress(node_id, value, total, preview_image)
        self.server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id})

    def node_class(self, class_type: str):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    def pack_module(self, link: str = PACK_LINK):
        """The module ComfyUI imported for a custom node pack. ComfyUI names it by its path,
        ``<base>/custom_nodes/<link>`` with "." replaced by "_x_", so relative imports inside
        the pack resolve below that name (``<that name>.nodes``), apart from anything the
        tests import under the pack's own package names."""
        name = str(self.base.root / "custom_nodes" / link).replace(".", "_x_")
        if name not in sys.modules:
            raise KeyError(f"ComfyUI has not imported {link} (see the log for why)")
        return sys.modules[name]

    def node_output(self, node_id: str):
        """The Python outputs (tuple, one entry per output socket) a node of the last prompt
        produced, from the executor's cache: e.g. the CONDITIONING list of an encode node."""
        entry = self.executor.caches.outputs.get(node_id)
        if entry is None:
            raise KeyError(f"no cached output for node {node_id}")
        return tuple(values[0] if len(values) == 1 else values for values in entry.outputs)

    def validate(self, prompt: dict, prompt_id: str | None = None) -> list[str]:
        """Runs ComfyUI's validation; returns the output node ids to execute."""
        ok, error, outputs, node_errors = asyncio.run(
            self.execution.validate_prompt(prompt_id or str(uuid.uuid4()), prompt, None))
        if not ok:
            raise ComfyValidationError(error, node_errors)
        return outputs

    def run(self, prompt: dict, extra_data: dict | None = None) -> RunResult:
        prompt = copy.deepcopy(prompt)
        prompt_id = str(uuid.uuid4())
        outputs = self.validate(prompt, prompt_id)
        first_event = len(self.server.events)
        self.server.last_prompt_id = prompt_id
        self.executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID, **(extra_data or {})}, outputs)
        messages = list(self.executor.status_messages)
        _raise_if_failed(prompt_id, messages)
        return RunResult(prompt_id, dict(self.executor.history_result["outputs"]), messages, self.base,
                         events=self.server.events[first_event:])

    def interrupt(self) -> None:
        self.nodes.interrupt_processing(True)

    def free(self) -> None:
        """Unload models and drop cached node outputs (what POST /free does)."""
        import comfy.model_management

        comfy.model_management.unload_all_models()
        self.executor.reset()
        gc.collect()


# --- server ---------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the server child, before exec (Linux): SIGTERM when the test process dies, so a
    killed pytest never leaves a ComfyUI server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``main.py`` as a subprocess, listening on 127.0.0.1 only; its log goes to a file."""

    # Not needed by the tests and slow or noisy here: API (cloud) nodes; the on-disk database.
    DEFAULT_ARGS = ("--disable-api-nodes", "--database-url", "sqlite:///:memory:")

    def __init__(self, base: ComfyBase, extra_args: tuple[str, ...] = DEFAULT_ARGS,
                 python: str = sys.executable, start_timeout: float = 180.0):
        self.base = base
        self.root = comfy_env.comfyui_root()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base.root / f"server-{self.port}.log"
        self.command = [python, str(self.root / "main.py"), "--cpu", "--listen", "127.0.0.1",
                        "--port", str(self.port), "--disable-auto-launch",
                        "--base-directory", str(base.root), *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        atexit.register(self.stop)
        try:
            self._wait_until_up(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.request("GET", "/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"ComfyUI server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def request(self, method: str, path: str, payload=None, timeout: float = 30):
        """One HTTP call; returns (status, parsed JSON or text). Non-2xx answers are returned."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id, raises ComfyValidationError on a 400."""
        payload = {"prompt": prompt, **({"client_id": client_id} if client_id else {})}
        status, answer = self.request("POST", "/prompt", payload)
        if status == 400 and isinstance(answer, dict):
            raise ComfyValidationError(answer.get("error") or {}, answer.get("node_errors") or {})
        if status != 200:
            raise ComfyError(f"POST /prompt answered {status}: {answer}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Polls /history/<id> until the prompt is done; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, history = self.request("GET", f"/history/{prompt_id}")
            if isinstance(history, dict) and prompt_id in history:
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 300) -> RunResult:
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout)
        messages = [tuple(m) for m in (entry.get("status") or {}).get("messages", [])]
        _raise_if_failed(prompt_id, messages)
        return RunResult(prompt_id, entry.get("outputs", {}), messages, self.base)

    def object_info(self, node_class: str | None = None) -> dict:
        status, info = self.request("GET", f"/object_info/{node_class}" if node_class else "/object_info", timeout=60)
        if status != 200:
            raise ComfyError(f"GET /object_info answered {status}: {info}")
        return info[node_class] if node_class else info

    def interrupt(self) -> None:
        self.request("POST", "/interrupt", {})

    def free(self) -> None:
        """POST /free. ComfyUI's worker reads the flag only when it next takes a prompt off the
        queue, so models are unloaded after the next prompt (or ~1000 s idle), not at once."""
        self.request("POST", "/free", {"unload_models": True, "free_memory": True})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server (our own child, by its pid) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if not self._log_file.closed:
            self._log_file.close()
