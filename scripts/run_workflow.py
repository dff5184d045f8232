"""Run a ComfyUI workflow headless in a real ComfyUI and print where its images were saved.

    python -m scripts.run_workflow [WORKFLOW.json] [options]      (bash scripts/run.sh does setup first)

WORKFLOW is a workflow as the ComfyUI frontend saves it (or an API-format prompt); the default is
the bundled LLM4GEN SD1.5 text-to-image workflow. The runner starts ComfyUI's ``main.py`` on
127.0.0.1 (the project's host copy, or your ComfyUI when ``COMFYUI_PATH`` is set), turns the
workflow into a prompt with the server's ``/object_info`` (scripts/workflow_api.py), queues it,
shows ComfyUI's progress, and prints the saved image paths.

Model files are looked up in the base directory's ``models/`` folders: ``--base-directory`` or
``LLM4GEN_BASE_DIR``, else your ComfyUI (``COMFYUI_PATH``), else
``~/.cache/comfyui-llm4gen/comfyui-base``. With every file the workflow names present, it runs
as shipped. If some are missing it says which and where they go, then runs in SMOKE MODE:
small random stand-ins are made locally under the same names in a separate smoke base directory
(never in your model folders), the run is cut to a small size and few steps, and the output is
labelled as coming from random weights. Nothing is downloaded (see scripts/get_models.py).

ComfyUI runs on the GPU when the Python that runs it (``--python`` / ``COMFYUI_PYTHON``) has a
torch that sees one (CUDA or ROCm, Intel XPU, Apple MPS), else on the CPU (``--cpu``); ``--cpu``
or ``LLM4GEN_CPU=1`` asks for the CPU. The first lines of the output say which.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import comfyui_host, comfyui_server, workflow_api

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKFLOW = REPO / "example_workflows" / "llm4gen_sd15_txt2img.json"
SMOKE_SIZE, SMOKE_STEPS = 128, 6
SAMPLERS = ("KSampler", "KSamplerAdvanced")
SIZED = ("EmptyLatentImage", "ImageScale")
RULE = "=" * 78


class OverrideError(ValueError):
    """A ``--set`` that names no node or input. main() prints the message and exits with 2."""


def say(text: str = "") -> None:
    """Status and progress go to stderr; stdout carries only results (saved paths, --print-api)."""
    print(f"[llm4gen] {text}" if text else "", file=sys.stderr, flush=True)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def banner(lines: list[str]) -> None:
    note("\n".join([RULE, *(f"  {line}" for line in lines), RULE]))


# --- where things are ---------------------------------------------------------------------------

def smoke_base(args) -> Path:
    path = args.smoke_base or os.environ.get("LLM4GEN_SMOKE_BASE") or comfyui_host.cache_dir() / "smoke-base"
    return Path(path).expanduser().resolve()


def owned_base(base: Path) -> bool:
    """A base directory this runner may lay out and link the pack into (not a user's ComfyUI)."""
    return base != comfyui_host.user_comfyui()


# --- the run ------------------------------------------------------------------------------------

class Progress:
    """Prints ComfyUI's websocket events as readable progress lines."""

    def __init__(self, prompt: dict):
        self.titles = {nid: node.get("_meta", {}).get("title") or node["class_type"] for nid, node in prompt.items()}
        self.total = len(prompt)
        self.done = set()
        self.start = time.monotonic()
        self.last_step = {}

    def __call__(self, event: str, data: dict) -> None:
        elapsed = f"{time.monotonic() - self.start:6.1f}s"
        if event == "execution_cached" and data.get("nodes"):
            self.done.update(data["nodes"])
            note(f"  {elapsed}  {len(data['nodes'])} node(s) cached from an earlier run")
        elif event == "executing" and data.get("node") is not None:
            node = data["node"]
            self.done.add(node)
            note(f"  {elapsed}  [{len(self.done)}/{self.total}] {self.titles.get(node, node)}")
        elif event == "progress":
            value, total, node = data.get("value", 0), data.get("max", 0), data.get("node")
            every = max(1, round(total / 8))
            if total > 1 and (value == total or value % every == 0) and self.last_step.get(node) != value:
                self.last_step[node] = value
                note(f"  {elapsed}        {self.titles.get(node, node)}: step {value}/{total}")
        elif event == "execution_error":
            note(f"  {elapsed}  FAILED in {data.get('node_type')}: {data.get('exception_message', '').strip()}")


# --- the device -------------------------------------------------------------------------------

# Asked of the Python that runs ComfyUI: its torch decides what ComfyUI's model_management can use
# (this repo's .venv holds the CPU build; a user's ComfyUI Python may hold a CUDA one). The
# backends ComfyUI picks by itself when started without --cpu; it fails without any of them.
GPU_PROBE = """
import torch
if torch.cuda.is_available():
    print("cuda:", torch.cuda.get_device_name(0))
elif hasattr(torch, "xpu") and torch.xpu.is_available():
    print("xpu:", torch.xpu.get_device_name(0))
elif torch.backends.mps.is_available():
    print("mps: Apple GPU")
"""
CPU_ENV = "LLM4GEN_CPU"


def detect_gpu(python: str, timeout: float = 300) -> tuple[str | None, str]:
    """(the GPU ComfyUI would use when run by ``python``, e.g. "cuda: NVIDIA H200", or None;
    why there is none)."""
    try:
        done = subprocess.run([python, "-c", GPU_PROBE], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"could not ask {python} for a GPU: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"{python} could not look for a GPU: {last}"
    found = done.stdout.strip().splitlines()
    return (found[-1], "") if found else (None, "no GPU found")


def cpu_request(flag: bool, environ=os.environ) -> str | None:
    """How the CPU was asked for (``--cpu``, ``LLM4GEN_CPU=1``), or None."""
    if flag:
        return "--cpu"
    value = environ.get(CPU_ENV, "").strip()
    if value.lower() not in ("", "0", "false", "no", "off"):
        return f"{CPU_ENV}={value}"
    return None


def choose_device(gpu: str | None, cpu_asked: str | None, no_gpu: str = "no GPU found") -> tuple[bool, str]:
    """(start ComfyUI with --cpu?, the device as the output names it). ``gpu``: what
    detect_gpu found (None: nothing, ``no_gpu`` says why); ``cpu_asked``: from cpu_request."""
    if cpu_asked:
        return True, f"CPU (asked for by {cpu_asked})" + (f"; the GPU ({gpu}) is not used" if gpu else "")
    if gpu:
        return False, f"GPU ({gpu})"
    return True, f"CPU ({no_gpu})"


def start_server(base: Path, args, what: str, cpu: bool = True) -> comfyui_server.ComfyUIServer:
    say(f"starting ComfyUI ({what}) ...")
    started = time.monotonic()
    log_path = None
    if not owned_base(base):  # keep our log files out of the user's ComfyUI folder
        logs = comfyui_host.cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    server = comfyui_server.ComfyUIServer(base, root=comfyui_host.install(), python=args.python,
                                          start_timeout=args.start_timeout, log_path=log_path, cpu=cpu)
    say(f"ComfyUI is up on {server.url} after {time.monotonic() - started:.0f} s (log: {server.log_path})")
    return server


def to_prompt(workflow: dict, object_info: dict) -> dict:
    if workflow_api.is_api_format(workflow):
        missing = sorted({n["class_type"] for n in workflow.values()} - set(object_info))
        if missing:
            raise workflow_api.MissingNodeTypes(missing, f"this ComfyUI has no node type(s) {', '.join(missing)}")
        return workflow_api.copy_prompt(workflow)
    if not workflow_api.is_ui_format(workflow):
        raise workflow_api.WorkflowError("not a ComfyUI workflow (neither the frontend's format nor the API format)")
    return workflow_api.ui_to_api(workflow, object_info)


def missing_files(prompt: dict, object_info: dict) -> list[tuple[str, str, str, str]]:
    """(node title, input, folder, file) of every file the prompt names that the server lacks."""
    unavailable = {(nid, name) for nid, name, _ in workflow_api.unavailable_choices(prompt, object_info)}
    found = []
    for node_id, name, folder, value in workflow_api.file_inputs(prompt):
        if (node_id, name) in unavailable:
            found.append((prompt[node_id]["_meta"]["title"], name, folder, value))
    return found


def apply_overrides(prompt: dict, args, smoke: bool) -> list[str]:
    """Explicit overrides and smoke-mode reductions; returns what changed, for the banner.
    Raises OverrideError for a --set that names no node or input."""
    notes = []
    steps = args.steps if args.steps is not None else (SMOKE_STEPS if smoke and not args.as_shipped else None)
    size = args.size if args.size is not None else (SMOKE_SIZE if smoke and not args.as_shipped else None)
    if steps is not None:
        before = sorted({n["inputs"].get("steps") for n in prompt.values() if n["class_type"] in SAMPLERS} - {None})
        if workflow_api.set_inputs(prompt, SAMPLERS, steps=steps):
            notes.append(f"steps {steps} (workflow: {', '.join(map(str, before))})")
    if size is not None:
        before = sorted({f"{n['inputs'].get('width')}x{n['inputs'].get('height')}" for n in prompt.values()
                         if n["class_type"] in SIZED})
        if workflow_api.set_inputs(prompt, SIZED, width=size, height=size):
            notes.append(f"size {size}x{size} (workflow: {', '.join(before)})")
    if args.seed is not None:
        workflow_api.set_inputs(prompt, SAMPLERS, seed=args.seed)
        workflow_api.set_inputs(prompt, SAMPLERS, noise_seed=args.seed)
        notes.append(f"seed {args.seed}")
    for assignment in args.set or []:
        target, _, raw = assignment.partition("=")
        node_ref, _, name = target.rpartition(".")
        ids = [nid for nid, node in prompt.items() if node_ref in (nid, node["_meta"]["title"])]
        if not ids or not name or not raw:
            raise OverrideError(f"--set {assignment!r}: expected NODE.INPUT=VALUE with NODE a node id or title "
                                f"(titles: {sorted(n['_meta']['title'] for n in prompt.values())})")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        for nid in ids:
            prompt[nid]["inputs"][name] = value
        notes.append(f"{target} = {value!r}")
    return notes


def place_stand_ins(base: Path, files: list[tuple], args) -> None:
    """Random stand-ins under the given (.., .., folder, name) file names, made in a child
    process so that torch and ComfyUI's model code stay out of this one."""
    wanted = sorted({f"{folder}/{name}" for *_, folder, name in files})
    say(f"making random stand-ins in {base} (the first time takes a minute or two) ...")
    command = [sys.executable, "-m", "scripts.smoke_models", str(base), *wanted]
    subprocess.run(command, check=True, cwd=REPO)  # from the repository root, where `scripts` is


def prepare_owned_base(base: Path) -> Path:
    """Lay out a base directory this runner owns: folders, the pack linked into custom_nodes,
    and ComfyUI's sample picture input/example.png (the ControlNet workflow's default input)."""
    comfyui_server.prepare_base(base)
    sample = comfyui_host.comfyui_root() / "input" / "example.png"
    target = base / "input" / "example.png"
    if sample.is_file() and not (target.exists() or target.is_symlink()):
        shutil.copyfile(sample, target)
    return base


def run(args) -> int:
    workflow_path = Path(args.workflow).expanduser().resolve()
    workflow = workflow_api.load(workflow_path)
    base, base_source = comfyui_host.models_base(args.base_directory)
    root = comfyui_host.install()
    say(f"workflow: {workflow_path}")
    say(f"ComfyUI:  {root}" + (" (COMFYUI_PATH)" if comfyui_host.user_comfyui() else " (the project's host copy)"))
    say(f"models:   {base / 'models'} ({base_source})")
    cpu_asked = cpu_request(args.cpu)
    gpu, no_gpu = (None, "") if cpu_asked else detect_gpu(args.python)
    cpu, device = choose_device(gpu, cpu_asked, no_gpu)
    say(f"device:   {device}")

    smoke = args.smoke
    server = None
    try:
        if not smoke:
            if owned_base(base):
                prepare_owned_base(base)
            server = start_server(base, args, "your model folders", cpu)
            object_info = server.object_info()
            prompt = to_prompt(workflow, object_info)
            missing = missing_files(prompt, object_info)
            if missing:
                say("these files are not in the model folders:")
                for title, name, folder, value in missing:
                    where = base / ("input" if folder == "input" else f"models/{folder}") / value
                    note(f"    {where}    ({title}: {name})")
                if args.no_smoke:
                    say("--no-smoke: stopping. Put the files there (README-workflows.md) and run again.")
                    return 1
                server.stop()
                server = None
                smoke = True
                # Smoke mode replaces every file the workflow names, never mixing real and random weights.
                sbase = prepare_owned_base(smoke_base(args))
                place_stand_ins(sbase, workflow_api.file_inputs(prompt), args)
        if smoke:
            sbase = prepare_owned_base(smoke_base(args))
            if server is None and args.smoke:
                say("--smoke: running on random stand-ins without looking for real files")
            server = start_server(sbase, args, "smoke mode, random weights", cpu)
            object_info = server.object_info()
            prompt = to_prompt(workflow, object_info)
            absent = missing_files(prompt, object_info)
            if absent:  # ComfyUI lists new files without a restart (it watches folder times)
                place_stand_ins(sbase, [(None, None, folder, name) for _, _, folder, name in absent], args)
                object_info = server.object_info()
                still = missing_files(prompt, object_info)
                if still:
                    raise workflow_api.WorkflowError(f"ComfyUI does not list the stand-ins for {still}")
        notes = apply_overrides(prompt, args, smoke)
        if args.print_api:
            print(json.dumps(prompt, indent=2))
            return 0
        if smoke:
            banner([
                "SMOKE MODE: RANDOM WEIGHTS. The real model files are missing, so this run uses small random",
                f"stand-ins made locally under the same file names in {server.base_dir}.",
                "The image shows noise, not LLM4GEN: it only proves the workflow runs end to end in ComfyUI.",
                *(["Changed for speed: " + "; ".join(notes) + " (--as-shipped keeps the workflow's own)."] if notes else []),
                "For real images put the files listed above in place (README-workflows.md) and run again.",
                f"Device: {device}.",
            ])
        else:
            say("all model files found: running the workflow as shipped" + (f", except: {'; '.join(notes)}" if notes else "")
                + f", on the {device}")
        say(f"queueing {len(prompt)} nodes ...")
        started = time.monotonic()
        try:
            prompt_id, entry = server.run_following(prompt, on_event=Progress(prompt), timeout=args.timeout)
        except comfyui_server.ComfyValidationError as e:
            say(f"ComfyUI refused the workflow:\n{e}")
            return 1
        except comfyui_server.ComfyExecutionError as e:
            say(f"the run failed: {e.node_type} (node {e.node_id}): {e.exception_type}: {e.exception_message}")
            say(f"ComfyUI's log: {server.log_path}")
            return 1
        images = server.output_files(entry)
        say(f"done in {time.monotonic() - started:.0f} s (prompt {prompt_id})")
        saved = [p for p in images if "/output/" in str(p)] or images
        for path in saved:
            print(f"saved: {path}" + ("   [SMOKE MODE: random weights]" if smoke else ""), flush=True)
        if not saved:
            say("the workflow saved no images")
            return 1
        return 0
    except comfyui_server.ServerError as e:
        say(f"{e}".splitlines()[0])
        note("\n".join(str(e).splitlines()[-15:]))
        say("ComfyUI did not start. With your own ComfyUI (COMFYUI_PATH), run it with its own Python: "
            "COMFYUI_PYTHON=/path/to/its/python (with this pack's requirements.txt installed).")
        return 1
    except comfyui_server.LinkError as e:
        say(f"cannot link the pack into ComfyUI's base directory: {e}")
        return 1
    except workflow_api.WorkflowError as e:
        say(f"cannot run this workflow: {e}")
        if isinstance(e, workflow_api.MissingNodeTypes) and not owned_base(base):
            say(f"install the pack into your ComfyUI: ln -s {REPO} {base / 'custom_nodes' / comfyui_server.PACK_LINK}")
        return 1
    finally:
        if server is not None:
            server.stop()


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("workflow", nargs="?", default=str(DEFAULT_WORKFLOW), help="workflow file (default: %(default)s)")
    parser.add_argument("--base-directory", help="ComfyUI base directory with models/, input/, output/ "
                                                 "(default: $LLM4GEN_BASE_DIR, $COMFYUI_PATH, ~/.cache/comfyui-llm4gen/comfyui-base)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="do not look for real files: run on random stand-ins")
    mode.add_argument("--no-smoke", action="store_true", help="fail instead of running on random stand-ins when files are missing")
    parser.add_argument("--as-shipped", action="store_true", help="in smoke mode, keep the workflow's own size and steps")
    parser.add_argument("--smoke-base", help="where smoke mode lays out its stand-ins (default: ~/.cache/comfyui-llm4gen/smoke-base)")
    parser.add_argument("--steps", type=int, help="override the sampler steps")
    parser.add_argument("--size", type=int, help="override the image size (square, pixels)")
    parser.add_argument("--seed", type=int, help="override the sampler seed")
    parser.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                        help="override any input; NODE is a node id or title (repeatable)")
    parser.add_argument("--print-api", action="store_true", help="print the API-format prompt and exit")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds to wait for the run (default: %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for ComfyUI to start")
    parser.add_argument("--cpu", action="store_true",
                        help=f"run ComfyUI on the CPU even when there is a GPU (also: {CPU_ENV}=1)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable),
                        help="Python that runs ComfyUI's main.py (default: $COMFYUI_PYTHON or this one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except (OverrideError, comfyui_host.HostSetupError) as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
