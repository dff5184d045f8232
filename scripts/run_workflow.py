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


# --- the server ---------------------------------------------------------------------------------

def start_server(base: Path, args, what: str, cpu: bool = True) -> comfyui_server.ComfyUIServer:
    """ComfyUI's main.py on ``base``, run by ``--python``; its log goes beside the base, or to the
    cache for a base the runner does not own, so nothing of ours lands in your ComfyUI."""
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


class Session:
    """The ComfyUI server of this run (at most one at a time; ``run`` stops it however the run
    ends) and whether the run is on random stand-ins."""

    def __init__(self, args, cpu: bool):
        self.args, self.cpu = args, cpu
        self.server: comfyui_server.ComfyUIServer | None = None
        self.smoke = args.smoke

    def start(self, base: Path, what: str) -> dict:
        """Start ComfyUI on ``base``; returns its /object_info, what the conversion reads."""
        self.server = start_server(base, self.args, what, self.cpu)
        return self.server.object_info()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# --- the workflow and its files -----------------------------------------------------------------

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


# --- the steps of a run, in the order run() takes them -----------------------------------------

def describe_setup(workflow_path: Path, base: Path, base_source: str) -> None:
    """Install the host ComfyUI if needed, then say which workflow runs in which ComfyUI with
    which model folders: the first thing to check when a run surprises."""
    root = comfyui_host.install()
    say(f"workflow: {workflow_path}")
    say(f"ComfyUI:  {root}" + (" (COMFYUI_PATH)" if comfyui_host.user_comfyui() else " (the project's host copy)"))
    say(f"models:   {base / 'models'} ({base_source})")


def pick_device(args) -> tuple[bool, str]:
    """(start ComfyUI with --cpu?, the device named in the output). The GPU is used when the
    Python that runs ComfyUI sees one, unless the CPU was asked for; the output says which."""
    cpu_asked = cpu_request(args.cpu)
    gpu, no_gpu = (None, "") if cpu_asked else detect_gpu(args.python)
    cpu, device = choose_device(gpu, cpu_asked, no_gpu)
    say(f"device:   {device}")
    return cpu, device


def prompt_on_real_files(session: Session, workflow: dict, base: Path) -> tuple[dict, list]:
    """Start ComfyUI on the model folders and convert the workflow with what that server lists;
    returns the prompt and the files it names that are not there. A base directory the runner
    does not own (your ComfyUI) is used as it is."""
    if owned_base(base):
        prepare_owned_base(base)
    object_info = session.start(base, "your model folders")
    prompt = to_prompt(workflow, object_info)
    return prompt, missing_files(prompt, object_info)


def list_missing(base: Path, missing: list[tuple[str, str, str, str]]) -> None:
    """Name each missing file with the path it should have, so the user can put it there."""
    say("these files are not in the model folders:")
    for title, name, folder, value in missing:
        where = base / ("input" if folder == "input" else f"models/{folder}") / value
        note(f"    {where}    ({title}: {name})")


def switch_to_smoke(session: Session, prompt: dict) -> None:
    """Stop the server on the real folders and make stand-ins for EVERY file the workflow names
    in the smoke base: smoke mode never mixes real and random weights."""
    session.stop()
    session.smoke = True
    sbase = prepare_owned_base(smoke_base(session.args))
    place_stand_ins(sbase, workflow_api.file_inputs(prompt), session.args)


def prompt_on_stand_ins(session: Session, workflow: dict) -> dict:
    """Start ComfyUI on the smoke base and convert the workflow there; stand-ins for any file it
    still lacks are made while it runs (ComfyUI lists new files without a restart: it watches
    folder times). Raises WorkflowError if ComfyUI still does not list them."""
    sbase = prepare_owned_base(smoke_base(session.args))
    if session.args.smoke:
        say("--smoke: running on random stand-ins without looking for real files")
    object_info = session.start(sbase, "smoke mode, random weights")
    prompt = to_prompt(workflow, object_info)
    absent = missing_files(prompt, object_info)
    if absent:
        place_stand_ins(sbase, [(None, None, folder, name) for _, _, folder, name in absent], session.args)
        still = missing_files(prompt, session.server.object_info())
        if still:
            raise workflow_api.WorkflowError(f"ComfyUI does not list the stand-ins for {still}")
    return prompt


def announce_run(session: Session, notes: list[str], device: str) -> None:
    """Say what is about to run: on random weights, a banner nobody can miss (the image will be
    noise); otherwise that the workflow runs as shipped, less the overrides asked for."""
    if session.smoke:
        banner([
            "SMOKE MODE: RANDOM WEIGHTS. The real model files are missing, so this run uses small random",
            f"stand-ins made locally under the same file names in {session.server.base_dir}.",
            "The image shows noise, not LLM4GEN: it only proves the workflow runs end to end in ComfyUI.",
            *(["Changed for speed: " + "; ".join(notes) + " (--as-shipped keeps the workflow's own)."] if notes else []),
            "For real images put the files listed above in place (README-workflows.md) and run again.",
            f"Device: {device}.",
        ])
    else:
        say("all model files found: running the workflow as shipped" + (f", except: {'; '.join(notes)}" if notes else "")
            + f", on the {device}")


def queue_and_wait(server: comfyui_server.ComfyUIServer, prompt: dict, timeout: float) -> dict:
    """Queue the prompt and follow ComfyUI's progress until it is done; returns its history
    entry. Raises ComfyValidationError / ComfyExecutionError with ComfyUI's own messages."""
    say(f"queueing {len(prompt)} nodes ...")
    started = time.monotonic()
    prompt_id, entry = server.run_following(prompt, on_event=Progress(prompt), timeout=timeout)
    say(f"done in {time.monotonic() - started:.0f} s (prompt {prompt_id})")
    return entry


def report_images(server: comfyui_server.ComfyUIServer, entry: dict, smoke: bool) -> int:
    """Print where each saved image went (stdout: the run's result), labelled when the weights
    were random; a workflow that saved nothing is a failure."""
    images = server.output_files(entry)
    saved = [p for p in images if "/output/" in str(p)] or images
    for path in saved:
        print(f"saved: {path}" + ("   [SMOKE MODE: random weights]" if smoke else ""), flush=True)
    if not saved:
        say("the workflow saved no images")
        return 1
    return 0


def server_failed(error: comfyui_server.ServerError) -> int:
    """ComfyUI did not start or died: its own last lines, and the usual cause with a user's
    ComfyUI (another Python than the one it needs)."""
    say(f"{error}".splitlines()[0])
    note("\n".join(str(error).splitlines()[-15:]))
    say("ComfyUI did not start. With your own ComfyUI (COMFYUI_PATH), run it with its own Python: "
        "COMFYUI_PYTHON=/path/to/its/python (with this pack's requirements.txt installed).")
    return 1


def workflow_refused(error: workflow_api.WorkflowError, base: Path) -> int:
    """The workflow cannot run here; for node types missing from your ComfyUI, how to install the pack."""
    say(f"cannot run this workflow: {error}")
    if isinstance(error, workflow_api.MissingNodeTypes) and not owned_base(base):
        say(f"install the pack into your ComfyUI: ln -s {REPO} {base / 'custom_nodes' / comfyui_server.PACK_LINK}")
    return 1


def run(args) -> int:
    """Run the workflow headless; returns the exit status (0: images saved, 1: the run failed,
    and the output says why). The steps, in order: say what runs where; pick the device; unless
    --smoke, start ComfyUI on the model folders and convert the workflow there, naming missing
    files and switching to random stand-ins when there are any; in smoke mode start ComfyUI on
    the stand-ins; apply the overrides; queue, follow and report. Raises OverrideError for a bad
    --set and comfyui_host.HostSetupError for an unusable ComfyUI (main() reports both)."""
    workflow_path = Path(args.workflow).expanduser().resolve()
    workflow = workflow_api.load(workflow_path)
    base, base_source = comfyui_host.models_base(args.base_directory)
    describe_setup(workflow_path, base, base_source)
    cpu, device = pick_device(args)
    session = Session(args, cpu)
    try:
        if not session.smoke:
            prompt, missing = prompt_on_real_files(session, workflow, base)
            if missing:
                list_missing(base, missing)
                if args.no_smoke:
                    say("--no-smoke: stopping. Put the files there (README-workflows.md) and run again.")
                    return 1
                switch_to_smoke(session, prompt)
        if session.smoke:
            prompt = prompt_on_stand_ins(session, workflow)
        notes = apply_overrides(prompt, args, session.smoke)
        if args.print_api:
            print(json.dumps(prompt, indent=2))
            return 0
        announce_run(session, notes, device)
        entry = queue_and_wait(session.server, prompt, args.timeout)
        return report_images(session.server, entry, session.smoke)
    except comfyui_server.ComfyValidationError as e:
        say(f"ComfyUI refused the workflow:\n{e}")
        return 1
    except comfyui_server.ComfyExecutionError as e:
        say(f"the run failed: {e.node_type} (node {e.node_id}): {e.exception_type}: {e.exception_message}")
        say(f"ComfyUI's log: {session.server.log_path}")
        return 1
    except comfyui_server.ServerError as e:
        return server_failed(e)
    except comfyui_server.LinkError as e:
        say(f"cannot link the pack into ComfyUI's base directory: {e}")
        return 1
    except workflow_api.WorkflowError as e:
        return workflow_refused(e, base)
    finally:
        session.stop()


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
