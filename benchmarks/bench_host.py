"""LLM4GEN text-to-image vs stock SD1.5 text-to-image in a real ComfyUI, side by side.

    .venv/bin/python -m benchmarks.bench_host e2e --graph stock|llm4gen [--attention default|pytorch]
    .venv/bin/python -m benchmarks.bench_host steps [--attention default|pytorch] [--rounds 3] [--steps 3]
    .venv/bin/python -m benchmarks.bench_host memory --cache classic|none|ram [--llm xl]
    add --quick for small models (seconds; a smoke run, not a measurement)

ComfyUI 0.3.75 runs in this process (benchmarks/comfy_bench_host.py), CPU-only unless --gpu,
with the full-size random SD1.5 checkpoint (scripts/smoke_models.py), a random encoder of
RankGen's T5-XL size in RankGen's release layout, and a random Cross-Adapter of the release's
dims. Graphs are the tests' (scripts/stock_graphs.py, llm4gen_graphs.py): CheckpointLoader,
CLIP Text Encode (stock) or Load LLM + LLM Encode + CLIP+LLM Cross-Adapter (LLM4GEN), both for
the positive and the negative prompt "", EmptyLatentImage, KSampler (euler, normal, CFG 7.5),
VAEDecode, SaveImage. Every UNet call is timed; so is every node.

- e2e: one graph, cold, in a fresh process: time and peak RSS per phase (load / encode /
  sample / decode); then the same prompt again with a new seed (ComfyUI serves the unchanged
  encodes from its cache); for LLM4GEN also LLM Encode in ComfyUI vs a bare transformers
  forward of the same model on the same ids, interleaved.
- steps: stock and LLM4GEN graphs alternating in one process, same seed, sampling only
  (SaveLatent, no decode): seconds per UNet call with the 77-token vs the 333-token context;
  and the Cross-Adapter's fuse vs one UNet call.
- memory: the LLM4GEN graph with the XL encoder under a ComfyUI cache setting, RSS and
  ComfyUI's loaded models after every node; then ComfyUI's own free_memory on the LLM's device.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scripts import llm4gen_graphs as lg
from scripts import smoke_models
from scripts import stock_graphs as g

from . import bench_models, common

# 61 CLIP tokens: the stock graph gets one 77-token chunk, as the release's CLIP does.
PROMPT = ("A cozy attic reading nook in warm afternoon light: a green velvet armchair by a round window, a ginger cat "
          "asleep on a knitted blanket, stacks of old leather books on the floor, a brass lamp, dried flowers in a blue "
          "glass bottle and a cup of tea on a small side table.")
NEGATIVE = ""
ATTENTION_ARGS = {"default": {}, "pytorch": {"use_pytorch_cross_attention": True},
                  "split": {"use_split_cross_attention": True}, "quad": {"use_quad_cross_attention": True}}


def _models(host, quick: bool, llm_size: str, tmp: Path) -> dict:
    """Place the checkpoint, the LLM folder and the Cross-Adapter; names for the loaders."""
    checkpoint = smoke_models.small_sd15_checkpoint() if quick else smoke_models.full_sd15_checkpoint()
    llm_folder = bench_models.rankgen_folder(llm_size)
    llm_dim = bench_models.SIZES[llm_size]["d_model"]
    cam = bench_models.release_cam_file(tmp, llm_dim)
    return {"ckpt": host.place("checkpoints", checkpoint), "llm": host.place("LLM", llm_folder),
            "cam": host.place("llm4gen", cam), "cam_path": cam, "llm_size": llm_size,
            "checkpoint": checkpoint.name}


def graph(kind: str, names: dict, *, size: int, steps: int, seed: int, text: str = PROMPT, decode: bool = True,
          llm_dtype: str = "auto", llm_device: str = "default") -> dict:
    """The stock or the LLM4GEN text-to-image prompt, with the UNet timer before the sampler."""
    from .comfy_bench_host import TIMER_NODE

    prompt = g.txt2img(names["ckpt"], text, NEGATIVE, width=size, height=size, steps=steps, seed=seed,
                       record=False, save_latent=not decode, prefix=kind)
    prompt["timer"] = {"class_type": TIMER_NODE, "inputs": {"model": [g.CKPT, 0]}}
    prompt[g.SAMPLER]["inputs"]["model"] = ["timer", 0]
    if not decode:
        del prompt[g.DECODE], prompt[g.SAVE]
    if kind == "llm4gen":
        prompt = lg.with_cross_adapter(prompt, names["llm"], names["cam"])
        prompt[lg.LOAD_LLM]["inputs"].update(dtype=llm_dtype, device=llm_device)
    return prompt


def _calls(run, skip: int = 0) -> list[float]:
    return [c["seconds"] for c in run.unet_calls[skip:]]


# --- e2e ----------------------------------------------------------------------------------------

def run_e2e(host, names: dict, args) -> dict:
    size, steps = args.size, args.steps
    result = {"graph": args.graph, "size": size, "steps": steps}
    prompt = graph(args.graph, names, size=size, steps=steps, seed=1, llm_dtype=args.llm_dtype)
    cold = host.run(prompt)
    result["cold"] = cold.as_dict()
    _print_run(f"{args.graph} cold", cold)
    # The same prompts again, in the same session: ComfyUI serves the unchanged loaders and
    # encodes from its cache. Only the encodes matter here, so the latent is the smallest and
    # sampling one step (a full-size rerun would only repeat the sample and decode figures).
    again = host.run(graph(args.graph, names, size=64, steps=1, seed=2, llm_dtype=args.llm_dtype))
    result["again_new_seed"] = again.as_dict()
    _print_run(f"{args.graph} same prompt again (64x64, 1 step)", again)
    if args.graph == "llm4gen" and args.encode_repeats > 0:
        result["encode_vs_bare"] = encode_vs_bare(host, names, args)
    return result


def encode_vs_bare(host, names: dict, args) -> dict:
    """LLM Encode as ComfyUI runs it (node time, new text each time so it is not cached) vs the
    bare transformers forward on the same model and the same ids, interleaved, the order
    alternating (node first, then bare first). Inside the node, ``llm.encode`` and its forward
    are timed too, so what the node adds around the forward is known from the same calls,
    whatever load other processes put on the machine."""
    import torch

    node_times, bare_times, inside_node = [], [], []
    loaded = None
    timing: dict = {}

    def bare(text):
        llm = loaded.llm
        ids, mask, _, _ = llm.tokenize([text], 256)
        ids, mask = ids.to(llm.device), mask.to(llm.device)
        common.sync(llm.device)
        start = time.perf_counter()
        with torch.no_grad():
            llm.model(input_ids=ids, attention_mask=mask).last_hidden_state
        common.sync(llm.device)
        return time.perf_counter() - start

    for i in range(args.encode_repeats + 1):
        text = f"{PROMPT} Variation {i}."
        bare_first = loaded is not None and i % 2 == 0
        t_bare = bare(text) if bare_first else None
        timing.clear()
        # The cheapest graph around the encode: 64x64 pixels, one step (its UNet call is tiny).
        run = host.run(graph("llm4gen", names, size=64, steps=1, seed=1, text=text, llm_dtype=args.llm_dtype))
        encodes = [n for n in run.nodes if n.class_type == "LLM4GENLLMEncode"]
        if loaded is not None and len(encodes) != 1:  # the negative "" is unchanged: served from the cache
            raise RuntimeError(f"expected one LLM Encode to run, got {len(encodes)}")
        if loaded is None:
            loaded = host.output(lg.LOAD_LLM)[0]
            _time_inside(loaded.llm, timing)
            bare(text)
            continue  # warm-up of both
        if not bare_first:
            t_bare = bare(text)
        node_times.append(encodes[0].seconds)
        bare_times.append(t_bare)
        inside_node.append(dict(timing))
    node, bare_t = common.fastest_median(node_times), common.fastest_median(bare_times)
    around = [n - t["forward"] for n, t in zip(node_times, inside_node)]
    comfy_part = [n - t["encode"] for n, t in zip(node_times, inside_node)]
    forward = common.fastest_median([t["forward"] for t in inside_node])
    out = {"node_fastest": node[0], "node_median": node[1], "bare_fastest": bare_t[0], "bare_median": bare_t[1],
           "ratio_fastest": node[0] / bare_t[0], "ratio_median": node[1] / bare_t[1], "repeats": len(node_times),
           "node_forward_fastest": forward[0], "node_forward_median": forward[1],
           "around_forward_median": statistics.median(around), "comfy_around_encode_median": statistics.median(comfy_part),
           "node_times": node_times, "bare_times": bare_times, "inside_node": inside_node,
           "ratio_same_call": (forward[1] + statistics.median(around)) / forward[1], "llm": repr(loaded.llm)}
    print(f"LLM Encode node vs bare forward ({out['repeats']} interleaved, order alternating): fastest {node[0]:.3f} / "
          f"{bare_t[0]:.3f} s = {out['ratio_fastest']:.3f}x, median {node[1]:.3f} / {bare_t[1]:.3f} s = "
          f"{out['ratio_median']:.3f}x; inside the node: forward median {forward[1]:.3f} s, node time around it "
          f"{out['around_forward_median'] * 1e3:.1f} ms (ComfyUI's part around llm.encode "
          f"{out['comfy_around_encode_median'] * 1e3:.1f} ms) = {out['ratio_same_call']:.4f}x", flush=True)
    return out


def _time_inside(llm, timing: dict) -> None:
    """Time ``llm.encode`` and its forward on this LLM object (instance attributes; the class
    is untouched)."""
    encode, forward = llm.encode, llm._forward

    def timed_encode(*a, **k):
        start = time.perf_counter()
        try:
            return encode(*a, **k)
        finally:
            timing["encode"] = time.perf_counter() - start

    def timed_forward(*a, **k):
        common.sync(llm.device)
        start = time.perf_counter()
        out = forward(*a, **k)
        common.sync(llm.device)
        timing["forward"] = timing.get("forward", 0.0) + time.perf_counter() - start
        return out

    llm.encode, llm._forward = timed_encode, timed_forward


def _print_run(label: str, run) -> None:
    phases = run.phase_seconds()
    peaks = run.phase_peak_rss()
    calls = _calls(run)
    print(f"[{label}] total {run.seconds:.2f} s, peak RSS {run.peak_rss_gib:.2f} GiB | "
          + " | ".join(f"{p} {phases[p]:.2f} s (peak {peaks.get(p, 0):.2f} GiB)" for p in phases)
          + (f" | UNet calls: {', '.join(f'{c:.2f}' for c in calls)} s" if calls else "")
          + (f" | cached: {', '.join(run.cached)}" if run.cached else ""), flush=True)


# --- steps --------------------------------------------------------------------------------------

def run_steps(host, names: dict, args) -> dict:
    """Stock and LLM4GEN sampling alternating in one process; seconds per UNet call."""
    import torch

    from llm4gen_core import load_cross_adapter

    size, steps = args.size, args.steps
    calls = {"stock": [], "llm4gen": []}
    contexts, available = {}, []
    rounds = []
    for r in range(args.rounds + 1):  # round 0 warms both up (loads, encodes, first calls)
        this_round = {}
        for kind in ("stock", "llm4gen") if r % 2 == 0 else ("llm4gen", "stock"):
            run = host.run(graph(kind, names, size=size, steps=1 if r == 0 else steps, seed=100 + r, decode=False))
            times = _calls(run)
            contexts[kind] = run.unet_calls[0]["context"]
            available += [c["available_gib"] for c in run.unet_calls]
            print(f"round {r} {kind}: context {contexts[kind]}, batch {run.unet_calls[0]['batch']}, "
                  f"UNet calls {', '.join(f'{t:.3f}' for t in times)} s", flush=True)
            if r > 0:
                calls[kind] += times
                this_round[kind] = statistics.median(times)
        if r > 0:
            rounds.append(this_round["llm4gen"] / this_round["stock"])
    stock, fused = common.fastest_median(calls["stock"]), common.fastest_median(calls["llm4gen"])
    result = {"size": size, "steps_per_run": steps, "rounds": args.rounds, "contexts": contexts,
              "stock_calls": calls["stock"], "llm4gen_calls": calls["llm4gen"],
              "stock_fastest": stock[0], "stock_median": stock[1], "llm4gen_fastest": fused[0], "llm4gen_median": fused[1],
              "ratio_fastest": fused[0] / stock[0], "ratio_median": fused[1] / stock[1], "ratio_per_round": rounds,
              "available_gib_min": min(available), "available_gib_max": max(available)}
    print(f"UNet call, {contexts['llm4gen']} vs {contexts['stock']} context: fastest {fused[0]:.3f} / {stock[0]:.3f} s = "
          f"{result['ratio_fastest']:.3f}x, median {fused[1]:.3f} / {stock[1]:.3f} s = {result['ratio_median']:.3f}x; "
          f"per round {', '.join(f'{x:.3f}' for x in rounds)}", flush=True)

    # The Cross-Adapter's fuse as the CLIP+LLM Cross-Adapter node calls it: batch 1, once per
    # prompt (positive and negative: twice per generation).
    adapter = load_cross_adapter(names["cam_path"])
    clip = torch.randn(1, 77, 768)
    llm = torch.randn(1, 256, adapter.config.llm_dim)
    with torch.inference_mode():
        times = common.interleaved({"cam": lambda: adapter(clip, llm)}, repeats=args.cam_repeats)["cam"]
    cam = common.fastest_median(times)
    result.update(cam_fastest=cam[0], cam_median=cam[1], cam_per_step=2 * cam[1] / stock[1])
    print(f"CAM fuse (batch 1): fastest {cam[0] * 1e3:.1f} ms, median {cam[1] * 1e3:.1f} ms; pos+neg = "
          f"{result['cam_per_step'] * 100:.2f}% of one stock UNet call", flush=True)
    return result


# --- memory -------------------------------------------------------------------------------------

def run_memory(host, names: dict, args) -> dict:
    """RSS through the LLM4GEN graph under this cache setting; then ComfyUI's free_memory."""
    import gc

    import comfy.model_management as mm

    # Its own text and seed, so that nothing is served from the cache when other modes ran before.
    run = host.run(graph("llm4gen", names, size=args.size, steps=args.steps, seed=7, text=PROMPT + " Memory run.",
                         llm_dtype=args.llm_dtype))
    timeline = [{"node": n.node, "class_type": n.class_type, "seconds": n.seconds, "peak_rss_gib": n.peak_rss_gib,
                 "rss_after_gib": n.rss_after_gib, "loaded_models": n.loaded_models} for n in run.nodes]
    for t in timeline:
        print(f"  {t['class_type']:<30} {t['seconds']:7.2f} s  RSS after {t['rss_after_gib']:5.2f} GiB "
              f"(peak {t['peak_rss_gib']:5.2f})  loaded: {', '.join(t['loaded_models']) or '-'}", flush=True)
    sampler = next(t for t in timeline if t["class_type"] == "KSampler")
    encodes = [t for t in timeline if t["class_type"] == "LLM4GENLLMEncode"]
    result = {"cache": args.cache, "timeline": timeline, "peak_rss_gib": run.peak_rss_gib,
              "rss_after_encode_gib": encodes[-1]["rss_after_gib"], "ksampler_peak_rss_gib": sampler["peak_rss_gib"],
              "llm_loaded_during_sampling": any(m.startswith("T5EncoderModel") for m in sampler["loaded_models"])}
    # What KSampler's load_models_gpu does on a GPU when memory is short: ComfyUI's own
    # free_memory on the device the LLM is loaded on, asking for more than is free.
    try:
        llm = host.output(lg.LOAD_LLM)[0]
    except KeyError:
        llm = None
    if llm is not None:
        device = llm.patcher.load_device
        before = loaded_models_short()
        gc.collect()
        rss_before = common.rss_gib()
        unloaded = mm.free_memory(mm.get_free_memory(device) + 2**40, device)
        gc.collect()
        result["free_memory"] = {
            "device": str(device), "offload_device": str(llm.patcher.offload_device), "before": before,
            "unloaded": [type(getattr(u.model.model, "inner", u.model.model)).__name__ if u.model else "?" for u in unloaded],
            "after": loaded_models_short(), "rss_before_gib": rss_before, "rss_after_gib": common.rss_gib(),
            "llm_weights_device": str(llm.llm.device)}
        print(f"free_memory on {device}: unloaded {result['free_memory']['unloaded']}; loaded before {before}, after "
              f"{result['free_memory']['after']}; RSS {rss_before:.2f} -> {common.rss_gib():.2f} GiB; LLM weights now on "
              f"{llm.llm.device}", flush=True)
    else:
        result["free_memory"] = None
        print("the Load LLM output is no longer cached (this cache setting dropped it)", flush=True)
    return result


def loaded_models_short() -> list[str]:
    from .comfy_bench_host import loaded_models

    return loaded_models()


# --- main ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["e2e", "steps", "memory", "encode", "all"],
                        help="all: e2e stock, e2e llm4gen, steps and memory in one process (for --quick smoke runs)")
    parser.add_argument("--graph", choices=["stock", "llm4gen"], default="llm4gen", help="e2e: which graph")
    parser.add_argument("--attention", choices=sorted(ATTENTION_ARGS), default="default",
                        help="ComfyUI's attention option: default (its choice: sub-quadratic on CPU), pytorch "
                             "(--use-pytorch-cross-attention), split, quad")
    parser.add_argument("--quick", action="store_true", help="small checkpoint, small LLM, 1-2 steps (a smoke run)")
    parser.add_argument("--small-checkpoint", action="store_true",
                        help="the small random SD1.5 (encode mode: only the LLM's size matters there)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; quick 64)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per run (default e2e 4, steps 3)")
    parser.add_argument("--rounds", type=int, default=None, help="steps: alternating rounds (default 3; quick 1)")
    parser.add_argument("--llm", choices=["xl", "small", "xl-1layer"], default=None,
                        help="random LLM size (default xl; steps: xl-1layer, as only the feature shape matters; quick: small)")
    parser.add_argument("--llm-dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--encode-repeats", type=int, default=None, help="e2e llm4gen: LLM Encode vs bare runs (default 4)")
    parser.add_argument("--cam-repeats", type=int, default=20)
    parser.add_argument("--cache", choices=["classic", "lru", "none", "ram"], default=None,
                        help="ComfyUI's cache (main.py: default classic, --cache-lru, --cache-none, --cache-ram)")
    parser.add_argument("--cache-arg", type=float, default=0, help="--cache-lru N / --cache-ram headroom in GB")
    parser.add_argument("--comfy", action="append", default=[], metavar="NAME=VALUE",
                        help="other ComfyUI option, e.g. reserve_vram=2, lowvram=1, disable_smart_memory=1")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    args.size = args.size or (64 if quick else 512)
    args.steps = args.steps or (2 if quick else (3 if args.mode == "steps" else 4))
    args.rounds = args.rounds or (1 if quick else 3)
    args.encode_repeats = (2 if quick else 4) if args.encode_repeats is None else args.encode_repeats
    args.llm = args.llm or ("small" if quick else ("xl-1layer" if args.mode == "steps" else "xl"))
    # steps alternates two graphs: an LRU cache keeps both graphs' loaders and encodes.
    args.cache = args.cache or ("lru" if args.mode in ("steps", "all") else "classic")
    if args.cache == "lru" and not args.cache_arg:
        args.cache_arg = 64
    comfy_args = dict(ATTENTION_ARGS[args.attention])
    for item in args.comfy:
        name, _, value = item.partition("=")
        comfy_args[name.replace("-", "_")] = float(value) if value.replace(".", "", 1).isdigit() and "." in value else (
            int(value) if value.isdigit() else value)

    from .comfy_bench_host import BenchHost

    tmp = tempfile.TemporaryDirectory(prefix="llm4gen-bench-")
    host = BenchHost(Path(tmp.name) / "base", gpu=args.gpu, cache=args.cache, cache_arg=args.cache_arg, comfy_args=comfy_args)
    names = _models(host, quick or args.small_checkpoint, args.llm, Path(tmp.name))
    facts = host.facts()
    print(f"ComfyUI in-process: {facts} | checkpoint {names['checkpoint']} | LLM {args.llm} | "
          f"{args.size}x{args.size}", flush=True)
    result = {"mode": args.mode, "quick": quick, "facts": facts, "machine": common.machine(), "llm_size": args.llm,
              "checkpoint": names["checkpoint"], "comfy_args": comfy_args}
    if args.mode == "all":
        for key, mode, graph_kind in (("e2e_stock", run_e2e, "stock"), ("e2e_llm4gen", run_e2e, "llm4gen"),
                                      ("steps", run_steps, None), ("memory", run_memory, None)):
            sub = copy.copy(args)
            sub.graph = graph_kind or args.graph
            print(f"--- {key} ---", flush=True)
            result[key] = mode(host, names, sub)
    else:
        runner = {"e2e": run_e2e, "steps": run_steps, "memory": run_memory,
                  "encode": lambda h, n, a: {"encode_vs_bare": encode_vs_bare(h, n, a)}}[args.mode]
        result.update(runner(host, names, args))
    result["process_peak_rss_gib"] = host.max_peak_rss_gib
    result["loadavg_after"] = common.loadavg()
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
