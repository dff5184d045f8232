"""A real ComfyUI server (``main.py``) as a child process on loopback, and a client for it.

Shared by the headless runner (scripts/run_workflow.py) and the tests' harness
(tests/host/comfy_harness.py), so that both start and talk to ComfyUI the same way:

    server = ComfyUIServer(base_dir)              # main.py --cpu --listen 127.0.0.1 --base-directory ...
                                                  # (cpu=False: ComfyUI picks the GPU itself)
    prompt_id, entry = server.run_following(prompt, on_event=print)   # queue, stream progress
    server.stop()

``prepare_base(dir)`` lays out a ``--base-directory`` (model folders, input/output, this pack
linked into custom_nodes). Errors come back as ``ComfyValidationError`` (ComfyUI refused the
prompt) or ``ComfyExecutionError`` (a node raised), with ComfyUI's own messages, and as
``ServerError`` when the server process did not come up or died.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from . import comfyui_host

REPO = Path(__file__).resolve().parents[1]
PACK_LINK = "ComfyUI-LLM4GEN"
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "text_encoders", "LLM", "llm4gen", "controlnet",
                 "loras", "vae", "clip", "embeddings")


# --- errors ---------------------------------------------------------------------------------

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


class ServerError(RuntimeError):
    """The ComfyUI server process is not there to answer: it exited before it was up, did not
    answer in time (``ServerStartTimeout``), or died while running a prompt. The first line of
    the message says which; the rest is the tail of the server's log."""


class ServerStartTimeout(ServerError, TimeoutError):
    """The server did not answer within the start timeout."""


def raise_if_failed(prompt_id: str, messages: list) -> None:
    """Raise ComfyExecutionError if ComfyUI's status messages of a prompt report a failure."""
    for event, data in messages:
        if event in ("execution_error", "execution_interrupted"):
            raise ComfyExecutionError(prompt_id, data, interrupted=event == "execution_interrupted")


# --- the base directory ---------------------------------------------------------------------

class LinkError(Exception):
    """A path the base directory needs as a link is taken by a real file or folder."""


def prepare_base(root: str | os.PathLike, pack: Path = REPO) -> Path:
    """Create a ComfyUI ``--base-directory`` at ``root`` (model folders, input, output, user,
    temp, custom_nodes) with this pack linked as ``custom_nodes/ComfyUI-LLM4GEN``.

    One base directory (the default ``comfyui-base`` holds the user's models) serves every
    checkout of the pack: the link is re-pointed at the checkout that asks, so ComfyUI loads
    that one. A server already running keeps the pack it loaded at its start."""
    root = Path(root).resolve()
    for folder in MODEL_FOLDERS:
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output", "user", "temp", "custom_nodes"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    link_dir(root / "custom_nodes" / PACK_LINK, Path(pack).resolve())
    return root


def link_dir(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to the folder ``target``: created, or re-pointed when it leads
    elsewhere (another checkout, a moved or deleted one). The swap is atomic: a new link is
    renamed over the old one, so a process starting meanwhile finds the old or the new link,
    never none, and two processes re-pointing at once leave one of theirs. A real file or folder
    at ``link`` is left alone: LinkError."""
    link, target = Path(link), Path(target).resolve()
    if link.is_symlink():
        if link.resolve() == target:
            return
    elif link.exists():
        if link.resolve() == target:  # e.g. the pack cloned right there
            return
        raise LinkError(f"{link} is a {'folder' if link.is_dir() else 'file'}, not a link to {target}: "
                        "move it away (or use another base directory) and run again")
    # Beside the link (rename needs the same file system); ComfyUI skips names ending .disabled.
    temporary = link.parent / f".{link.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.disabled"
    temporary.symlink_to(target, target_is_directory=True)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def model_folder(base: Path, name: str) -> Path:
    """``models/<name>`` of a base directory; ``input`` for "input"."""
    return Path(base) / "input" if name == "input" else Path(base) / "models" / name


def place(base: Path, folder: str, source: str | os.PathLike, name: str | None = None) -> str:
    """Link ``source`` (file or folder) into ``models/<folder>`` (or ``input``) of the base
    directory ``base``; returns the name ComfyUI lists it under (e.g. the value for a loader's
    combo input).

    ComfyUI caches folder listings (``folder_paths.filename_list_cache``) and trusts them
    while the modification times of the folders it walked are unchanged; the link changes
    the folder's mtime, and this makes sure it really differs (file times are coarse), so
    both a ComfyUI in this process and a running server see the new entry on their next listing.
    """
    source = Path(source).resolve()
    if not source.exists():
        raise FileNotFoundError(source)
    name = name or source.name
    target = model_folder(base, folder) / name
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
    if folder_paths is not None:  # ComfyUI in this process: drop the listing outright as well
        folder_paths.filename_list_cache.clear()
    return name


# --- the server -----------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the server child, before exec (Linux): SIGTERM when the parent dies, so a killed
    runner or test process never leaves a ComfyUI server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyUIServer:
    """``main.py`` as a subprocess, listening on 127.0.0.1 only; its log goes to a file.
    ``cpu``: start it with ``--cpu`` (the tests' default); False lets ComfyUI use the GPU, which
    it requires to exist then (see run_workflow.choose_device)."""

    # Not needed here and slow or noisy: API (cloud) nodes; the on-disk database.
    DEFAULT_ARGS = ("--disable-api-nodes", "--database-url", "sqlite:///:memory:")

    def __init__(self, base_dir: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = DEFAULT_ARGS, python: str = sys.executable,
                 start_timeout: float = 180.0, log_path: str | os.PathLike | None = None,
                 on_wait=None, cpu: bool = True):
        self.base_dir = Path(base_dir).resolve()
        self.root = Path(root) if root else comfyui_host.comfyui_root()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.base_dir / f"server-{self.port}.log"
        self.command = [python, str(self.root / "main.py"), *(["--cpu"] if cpu else []), "--listen", "127.0.0.1",
                        "--port", str(self.port), "--disable-auto-launch",
                        "--base-directory", str(self.base_dir), *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        atexit.register(self.stop)
        try:
            self._wait_until_up(start_timeout, on_wait)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - start

    def _wait_until_up(self, timeout: float, on_wait=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.request("GET", "/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if on_wait:
                    on_wait()
                time.sleep(0.2)
        raise ServerStartTimeout(f"ComfyUI server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    # --- HTTP ---------------------------------------------------------------------------------

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

    def history(self, prompt_id: str) -> dict | None:
        _, history = self.request("GET", f"/history/{prompt_id}")
        return history.get(prompt_id) if isinstance(history, dict) else None

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Polls /history/<id> until the prompt is done; returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI server died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s:\n{self.log_tail()}")

    def run_following(self, prompt: dict, on_event=None, timeout: float = 3600) -> tuple[str, dict]:
        """Queue ``prompt`` and call ``on_event(event, data)`` for each of ComfyUI's websocket
        messages about it (``executing``, ``progress``, ``executed``, ...) until it is done;
        returns (prompt id, its /history entry). Raises ComfyValidationError /
        ComfyExecutionError. Without a websocket (no aiohttp), polls /history instead."""
        client_id = f"llm4gen-{uuid.uuid4().hex[:12]}"
        try:
            import aiohttp  # noqa: F401  (ComfyUI's own dependency)
        except ImportError:
            prompt_id = self.queue(prompt, client_id)
            entry = self.wait(prompt_id, timeout)
        else:
            prompt_id = asyncio.run(self._follow(prompt, client_id, on_event or (lambda e, d: None), timeout))
            entry = self.wait(prompt_id, timeout=60)
        raise_if_failed(prompt_id, [tuple(m) for m in (entry.get("status") or {}).get("messages", [])])
        return prompt_id, entry

    async def _follow(self, prompt: dict, client_id: str, on_event, timeout: float) -> str:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}",
                                          max_msg_size=0, heartbeat=30) as ws:
                prompt_id = await asyncio.to_thread(self.queue, prompt, client_id)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s:\n{self.log_tail()}")
                    try:
                        message = await ws.receive(timeout=min(left, 5.0))
                    except asyncio.TimeoutError:
                        if self.process.poll() is not None:
                            raise ServerError(f"ComfyUI server died while running {prompt_id}:\n{self.log_tail()}")
                        if self.history(prompt_id) is not None:  # finished while we were not looking
                            return prompt_id
                        continue
                    if message.type == aiohttp.WSMsgType.BINARY:  # latent previews
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        if self.history(prompt_id) is None:
                            raise ComfyError(f"the websocket closed before prompt {prompt_id} finished:\n{self.log_tail()}")
                        return prompt_id
                    event = json.loads(message.data)
                    kind, data = event.get("type"), event.get("data") or {}
                    if data.get("prompt_id") not in (None, prompt_id):
                        continue
                    on_event(kind, data)
                    if kind in ("execution_success", "execution_error", "execution_interrupted"):
                        return prompt_id
                    if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                        return prompt_id

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

    def output_files(self, entry: dict, key: str = "images") -> list[Path]:
        """Paths of the files the prompt's output nodes reported (SaveImage: ``images``)."""
        found = []
        for ui in (entry.get("outputs") or {}).values():
            for item in ui.get(key, []):
                folder = self.base_dir / item.get("type", "output")
                found.append(folder / item.get("subfolder", "") / item["filename"])
        return found

    # --- logs and shutdown ----------------------------------------------------------------------

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
