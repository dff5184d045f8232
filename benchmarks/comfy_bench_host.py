"""A real ComfyUI (the tests' copy, 0.3.75) in this process, instrumented for benchmarks.

Its base directory is laid out by ``scripts.comfyui_server.prepare_base`` (model folders, this pack
linked into custom_nodes; no test-only node packs), and ComfyUI is imported the way the tools and
tests import it (``scripts.comfyui_host.import_comfyui``).

Nothing in ComfyUI is replaced. What is added:

- ``NodeClock`` stands where ComfyUI's server receives the executor's events ("executing"
  before each node runs, "execution_cached", "execution_success"), and notes the time and the
  process's peak RSS between them: seconds and peak memory per node, and which models
  ``comfy.model_management`` holds after each node.
- ``LLM4GENBenchTimeUNet``, a pass-through node that wraps the MODEL with ComfyUI's own
  APPLY_MODEL wrapper API (as the tests' recorder pack does) and times every UNet call (one
  call per sampling step with CFG: positive and negative batched together).
- ComfyUI's options (``comfy.cli_args.args``: attention backend, --reserve-vram, low-VRAM
  modes, --disable-smart-memory) are set before ComfyUI's modules read them at import, as
  main.py does when it parses its command line; the cache type is the executor's argument, as
  main.py passes it (--cache-none, --cache-ram, --cache-lru).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from scripts import comfyui_host, comfyui_server

from . import common

TIMER_NODE = "LLM4GENBenchTimeUNet"
CLIENT_ID = "llm4gen-bench"
UNET_CALLS: list[dict] = []  # filled by the timer node's wrapper, in call order

PHASES = {
    "load": {"CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "VAELoader", "LLM4GENLoadLLM",
             "LLM4GENLoadCrossAdapter"},
    "encode": {"CLIPTextEncode", "LLM4GENLLMEncode", "LLM4GENCLIPLLMCrossAdapter", "LLM4GENApplyConditioning"},
    "sample": {"KSampler", "KSamplerAdvanced"},
    "decode": {"VAEDecode"},
}


def phase_of(class_type: str) -> str:
    return next((phase for phase, kinds in PHASES.items() if class_type in kinds), "other")


@dataclass
class NodeRun:
    node: str
    class_type: str
    seconds: float
    peak_rss_gib: float      # peak RSS of the process while this node ran
    rss_after_gib: float
    loaded_models: list[str]  # comfy.model_management.current_loaded_models after the node


@dataclass
class PromptRun:
    nodes: list[NodeRun]
    cached: list[str]                       # node ids ComfyUI served from its cache
    unet_calls: list[dict]
    seconds: float
    peak_rss_gib: float
    rss_before_gib: float
    peak_vram_gib: float | None = None      # torch.cuda peak allocated during the prompt (GPU runs)

    def phase_seconds(self) -> dict[str, float]:
        out = {phase: 0.0 for phase in (*PHASES, "other")}
        for n in self.nodes:
            out[phase_of(n.class_type)] += n.seconds
        return out

    def phase_peak_rss(self) -> dict[str, float]:
        out = {}
        for n in self.nodes:
            phase = phase_of(n.class_type)
            out[phase] = max(out.get(phase, 0.0), n.peak_rss_gib)
        return out

    def node_seconds(self, class_type: str) -> list[float]:
        return [n.seconds for n in self.nodes if n.class_type == class_type]

    def as_dict(self) -> dict:
        return {"seconds": self.seconds, "peak_rss_gib": self.peak_rss_gib, "rss_before_gib": self.rss_before_gib,
                "peak_vram_gib": self.peak_vram_gib,
                "phases": self.phase_seconds(), "phase_peak_rss_gib": self.phase_peak_rss(), "cached": self.cached,
                "nodes": [vars(n) for n in self.nodes], "unet_calls": self.unet_calls}


def loaded_models() -> list[str]:
    """What ComfyUI's model management holds: class of each model, device, MiB loaded."""
    import comfy.model_management as mm

    out = []
    for lm in mm.current_loaded_models:
        patcher = lm.model
        if patcher is None:
            continue
        module = getattr(patcher.model, "inner", patcher.model)  # the pack's holder wraps its module
        out.append(f"{type(module).__name__}@{lm.device}:{patcher.loaded_size() / 2**20:.0f}MiB")
    return out


class NodeClock:
    """Stands in for ``server.PromptServer`` where the executor reports (``send_sync``)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.prompt: dict = {}
        self.runs: list[NodeRun] = []
        self.cached: list[str] = []
        self._current = None
        self.peak = 0.0

    def begin(self, prompt: dict) -> None:
        self.prompt, self.runs, self.cached, self._current = prompt, [], [], None
        common.reset_peak_rss()
        self.peak = common.rss_gib()

    def send_sync(self, event, data, sid=None):
        now = time.perf_counter()
        if event in ("executing", "execution_success", "execution_error", "execution_interrupted") and self._current:
            node, start = self._current
            peak = common.peak_rss_gib()
            self.peak = max(self.peak, peak)
            self.runs.append(NodeRun(node, self.prompt[node]["class_type"], now - start, peak, common.rss_gib(),
                                     loaded_models()))
            self._current = None
        if event == "executing" and data.get("node") is not None:
            common.reset_peak_rss()
            self._current = (data["node"], time.perf_counter())
        elif event == "execution_cached":
            self.cached = list(data.get("nodes", []))

    def send_progress_text(self, text, node_id, sid=None):
        pass

    def queue_updated(self):
        pass


def _timer_node_class():
    """A V1-style pass-through node timing each UNet call through ComfyUI's wrapper API."""
    import comfy.model_management as mm
    from comfy.patcher_extension import WrappersMP

    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        device = x.device
        common.sync(device)
        available = common.available_gib()
        start = time.perf_counter()
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        common.sync(device)
        UNET_CALLS.append({"seconds": time.perf_counter() - start, "batch": int(x.shape[0]),
                           "latent": list(x.shape), "context": list(c_crossattn.shape) if c_crossattn is not None else None,
                           "available_gib": available, "dtype": str(x.dtype)})
        return out

    class BenchTimeUNet:
        CATEGORY = "_for_testing/llm4gen"
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "patch"
        DESCRIPTION = "Benchmark only: times every UNet call (ComfyUI's APPLY_MODEL wrapper)."

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": ("MODEL",)}}

        def patch(self, model):
            patched = model.clone()
            patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "llm4gen_bench_timer", wrapper)
            return (patched,)

    del mm
    return BenchTimeUNet


class BenchHost:
    """ComfyUI imported into this process with the given options; runs API-format prompts."""

    def __init__(self, base_dir: Path, *, gpu: bool = False, cache: str = "classic", cache_arg: float = 0,
                 comfy_args: dict | None = None):
        start = time.perf_counter()
        self.root = comfyui_server.prepare_base(base_dir)  # this pack linked in, model folders
        self.gpu = gpu
        comfyui_host.import_comfyui(self.root)
        from comfy.cli_args import args

        if "comfy.model_management" in __import__("sys").modules:
            raise RuntimeError("ComfyUI's model management was imported before its options were set")
        args.cpu = not gpu
        for name, value in (comfy_args or {}).items():
            if not hasattr(args, name):
                raise AttributeError(f"ComfyUI has no option {name!r}")
            setattr(args, name, value)
        self.args = args
        import comfy.model_management  # noqa: F401  (reads the options now)
        import utils.extra_config  # noqa: F401  (main.py imports it before nodes)
        import execution
        import hook_breaker_ac10a0
        import nodes

        hook_breaker_ac10a0.save_functions()
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        hook_breaker_ac10a0.restore_functions()
        if "LLM4GENLLMEncode" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("the LLM4GEN pack did not load (see the log above)")
        nodes.NODE_CLASS_MAPPINGS[TIMER_NODE] = _timer_node_class()
        self.nodes, self.execution = nodes, execution
        self.clock = NodeClock()
        cache_type = {"classic": execution.CacheType.CLASSIC, "lru": execution.CacheType.LRU,
                      "none": execution.CacheType.NONE, "ram": execution.CacheType.RAM_PRESSURE}[cache]
        self.cache = cache
        self.executor = execution.PromptExecutor(self.clock, cache_type=cache_type,
                                                 cache_args={"lru": int(cache_arg) if cache == "lru" else 0,
                                                             "ram": cache_arg if cache == "ram" else 0})
        self.startup_seconds = time.perf_counter() - start
        self.max_peak_rss_gib = common.peak_rss_gib()

    def place(self, folder: str, source, name: str | None = None) -> str:
        return comfyui_server.place(self.root, folder, source, name)

    def attention(self) -> str:
        """The attention function ComfyUI's UNet uses (chosen at import from the options)."""
        import comfy.ldm.modules.attention as attention

        return attention.optimized_attention.__name__

    def facts(self) -> dict:
        import comfy.model_management as mm

        return {"attention": self.attention(), "vram_state": mm.vram_state.name, "device": str(mm.get_torch_device()),
                "text_encoder_device": str(mm.text_encoder_device()), "unet_offload_device": str(mm.unet_offload_device()),
                "disable_smart_memory": mm.DISABLE_SMART_MEMORY, "cache": self.cache,
                "extra_reserved_gib": mm.extra_reserved_memory() / 2**30, "startup_seconds": self.startup_seconds}

    def run(self, prompt: dict) -> PromptRun:
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not ok:
            raise RuntimeError(f"ComfyUI refused the prompt: {error} {node_errors}")
        UNET_CALLS.clear()
        cuda = self._cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self.clock.begin(prompt)
        rss_before = common.rss_gib()
        start = time.perf_counter()
        self.executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, outputs)
        took = time.perf_counter() - start
        for event, data in self.executor.status_messages:
            if event in ("execution_error", "execution_interrupted"):
                raise RuntimeError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                   f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                                   + "".join(data.get("traceback") or []))
        peak = max(self.clock.peak, common.peak_rss_gib())
        self.max_peak_rss_gib = max(self.max_peak_rss_gib, peak)
        vram = cuda.max_memory_allocated() / 2**30 if cuda is not None else None
        return PromptRun(list(self.clock.runs), list(self.clock.cached), list(UNET_CALLS), took, peak, rss_before, vram)

    def _cuda(self):
        import torch

        return torch.cuda if self.gpu and torch.cuda.is_available() else None

    def output(self, node_id: str):
        """A node's Python outputs from the executor's cache (e.g. the LoadedLLM of Load LLM)."""
        entry = self.executor.caches.outputs.get(node_id)
        if entry is None:
            raise KeyError(f"no cached output for node {node_id}")
        return tuple(values[0] if len(values) == 1 else values for values in entry.outputs)
