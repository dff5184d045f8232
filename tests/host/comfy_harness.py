"""A real, unmodified ComfyUI for host tests: base directory, in-process host, server.

- ``ComfyBase``: a ``--base-directory`` laid out as ComfyUI expects, with this repo linked
  into ``custom_nodes/ComfyUI-LLM4GEN``, the test-only recorder pack (``recorder_pack/``) as
  ``custom_nodes/llm4gen_test_recorder`` and the test-only SDXL text-encoder loader
  (``sdxl_clip_pack/``) as ``custom_nodes/llm4gen_test_sdxl_clip``. ``place()`` links model
  files or folders into model folders.
- ``InProcessComfy``: ComfyUI imported into this process; ``run(prompt)`` validates with
  ComfyUI's ``execution.validate_prompt`` and runs ComfyUI's ``PromptExecutor``.
- ``ComfyServer``: ``main.py`` as a subprocess on loopback (started by
  ``scripts/comfyui_server.py``, which the headless runner uses too); ``run(prompt)`` POSTs
  ``/prompt`` and polls ``/history/<id>``.

Both hosts share the base directory and the same ``run() -> RunResult`` API, raising
``ComfyValidationError`` / ``ComfyExecutionError`` with ComfyUI's own messages.
"""
from __future__ import annotations

import asyncio
import copy
import gc
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from scripts.comfyui_server import (  # noqa: F401  (re-exported)
    MODEL_FOLDERS, PACK_LINK, ComfyError, ComfyExecutionError, ComfyUIServer, ComfyValidationError, link_dir,
    model_folder, place, prepare_base, raise_if_failed,
)
from synthetic import comfy_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECORDER_PACK = HERE / "recorder_pack"
RECORDER_LINK = "llm4gen_test_recorder"
RECORDS_SUBDIR = "llm4gen_test_records"  # recorder_pack writes here, under the output dir
RECORDER_NODE = "LLM4GENTestRecordUNet"
SDXL_CLIP_PACK = HERE / "sdxl_clip_pack"
SDXL_CLIP_LINK = "llm4gen_test_sdxl_clip"
SDXL_CLIP_NODE = "LLM4GENTestSDXLCLIPLoader"
CLIENT_ID = "llm4gen-tests"


# --- errors and results ---------------------------------------------------------------------
# The server launcher and ComfyUI's errors live in scripts/comfyui_server.py (the headless
# runner uses them too); they are re-exported here under the names the tests use.

_raise_if_failed = raise_if_failed


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
        self.root = prepare_base(root, pack=repo)
        link_dir(self.root / "custom_nodes" / RECORDER_LINK, RECORDER_PACK)
        link_dir(self.root / "custom_nodes" / SDXL_CLIP_LINK, SDXL_CLIP_PACK)

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    def folder(self, name: str) -> Path:
        return model_folder(self.root, name)

    def place(self, folder: str, source: str | os.PathLike, name: str | None = None) -> str:
        """Link ``source`` into ``models/<folder>`` (or ``input``); returns the name ComfyUI lists
        it under (``scripts.comfyui_server.place``)."""
        return place(self.root, folder, source, name)

    def records(self, prompt_id: str, kind: str | None = "unet", label: str | None = None) -> list[dict]:
        import torch

        folder = self.output_dir / RECORDS_SUBDIR / prompt_id
        found = []
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            record = torch.load(path, map_location="cpu", weights_only=True)
            if (kind is None or record["kind"] == kind) and (label is None or record["label"] == label):
                found.append(record)
        return found


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
        for node, pack in ((RECORDER_NODE, RECORDER_PACK), (SDXL_CLIP_NODE, SDXL_CLIP_PACK)):
            if node not in nodes.NODE_CLASS_MAPPINGS:
                raise RuntimeError(f"the test-only node pack did not load from {pack}")
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

class ComfyServer(ComfyUIServer):
    """``main.py`` as a subprocess on 127.0.0.1 with a ``ComfyBase`` as its base directory
    (scripts/comfyui_server.py starts it); ``run()`` gives a ``RunResult``."""

    def __init__(self, base: ComfyBase, extra_args: tuple[str, ...] = ComfyUIServer.DEFAULT_ARGS,
                 python: str = sys.executable, start_timeout: float = 180.0):
        self.base = base
        super().__init__(base.root, root=comfy_env.comfyui_root(), extra_args=extra_args, python=python,
                         start_timeout=start_timeout)

    def run(self, prompt: dict, timeout: float = 300) -> RunResult:
        prompt_id = self.queue(prompt)
        entry = self.wait(prompt_id, timeout)
        messages = [tuple(m) for m in (entry.get("status") or {}).get("messages", [])]
        raise_if_failed(prompt_id, messages)
        return RunResult(prompt_id, entry.get("outputs", {}), messages, self.base)
