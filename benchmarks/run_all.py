"""Every LLM4GEN benchmark, each heavy one in its own fresh process, and one summary table.

    .venv/bin/python -m benchmarks.run_all            # the full run (~20 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.run_all --quick    # small models, a smoke run (< 1 min)
    .venv/bin/python -m benchmarks.run_all --gpu      # on a CUDA machine: GPU, peak VRAM too

(from the repository root; bash scripts/bench.sh sets up the environment first.)

Progress and the children's logs go to stderr and to ``<out>/log.txt``; the table goes to
stdout and ``<out>/table.md``; every child's figures to ``<out>/*.json``. ``<out>`` defaults to
``~/.cache/comfyui-llm4gen/bench-results/<time>`` (outside the repository). Ratios compare two
calls timed interleaved in one process; end-to-end phases compare two fresh processes and are
reported, not judged. Benchmarks print figures; they assert nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from scripts.smoke_models import models_dir

from . import common

HEADER = ["measurement", "LLM4GEN", "reference", "ratio", "goal", "met?"]


def plan(quick: bool, gpu: bool) -> list[tuple[str, str, list[str]]]:
    """(key, module of benchmarks/, args) of each child process, in the order they run."""
    dev = ["--device", "cuda"] if gpu else []
    host = ["--gpu"] if gpu else []
    if quick:
        return [
            ("llm", "bench_llm", ["--sizes", "small", "--batches", "1", "--repeats", "3", "--load", "--load-size",
                                     "small", "--load-dtypes", "fp32", *dev]),
            ("host_all", "bench_host", ["all", "--quick", *host]),
            ("llm_formats_load", "bench_llm_formats", ["load", "--size", "small", "--rounds", "1",
                                                          "--plan", "bin:fp32,bin:bf16,bf16:bf16,fp8:auto"]),
            ("llm_formats_encode", "bench_llm_formats", ["encode", "--size", "small", "--repeats", "2"]),
        ]
    return [
        ("llm", "bench_llm", ["--sizes", "small", "--batches", "1", "--repeats", "10", *dev]),
        ("llm_xl", "bench_llm", ["--sizes", "xl", "--batches", "1", "--repeats", "4", *dev]),
        ("load", "bench_llm", ["--load-only", "--load-size", "xl", *dev]),
        # End to end at the goal's settings: 20 steps at 512x512, loads and both encodes included.
        ("e2e_stock", "bench_host", ["e2e", "--graph", "stock", "--steps", "20", *host]),
        ("e2e_llm4gen", "bench_host", ["e2e", "--graph", "llm4gen", "--steps", "20", "--encode-repeats", "0", *host]),
        ("steps", "bench_host", ["steps", "--rounds", "4", "--steps", "1", *host]),
        # Memory: what is held per node; the latent size does not change what is held.
        ("memory", "bench_host", ["memory", "--steps", "1", "--size", "256", *host]),
        ("memory_nocache", "bench_host", ["memory", "--steps", "1", "--size", "256", "--cache", "none", *host]),
        # LLM Encode in ComfyUI vs the bare forward: only the LLM's size matters, so the small SD1.5.
        ("encode_xl", "bench_host", ["encode", "--small-checkpoint", "--llm", "xl", "--encode-repeats", "4", *host]),
        ("steps_pytorch", "bench_host", ["steps", "--attention", "pytorch", "--rounds", "4", "--steps", "1", *host]),
        # The converter's formats: load peak RSS and time per format; encode with dtype auto.
        ("llm_formats_load", "bench_llm_formats", ["load", "--size", "xl", "--rounds", "2"]),
        ("llm_formats_encode", "bench_llm_formats", ["encode", "--size", "xl", "--repeats", "5"]),
    ]


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _ratio_row(label, a, b, goal, limit):
    ratio = a / b if a is not None and b else None
    return [label, common.fmt_s(a, 3), common.fmt_s(b, 3), common.fmt_x(ratio), goal,
            _met(None if ratio is None or limit is None else ratio <= limit)]


def rows(results: dict, quick: bool) -> list[list[str]]:
    host = results.get("host_all", {})
    get = lambda key: results.get(key) or host.get(key)  # noqa: E731
    out = []
    # 1. llm.encode vs the bare transformers forward, same model, same ids, interleaved.
    for key in ("llm", "llm_xl"):
        for r in (results.get(key) or {}).get("rows", []):
            out.append(_ratio_row(f"llm.encode vs bare T5 forward, {r['model']}, B={r['batch']}, 256 tok, "
                                  f"{results[key]['dtype']} (fastest of {r['repeats']})",
                                  r["encode_fastest"], r["bare_fastest"], "<= 1.05x", 1.05))
    e2e_llm = get("e2e_llm4gen") or {}
    enc = results.get("encode_xl") or e2e_llm
    ev = enc.get("encode_vs_bare")
    if ev:
        name = enc.get("llm_size", "")
        out.append(_ratio_row(f"LLM Encode node in ComfyUI vs bare forward, {name} LLM (median of {ev['repeats']}, "
                              "alternating order)", ev["node_median"], ev["bare_median"], "<= 1.05x", 1.05))
        if "ratio_same_call" in ev:
            out.append([f"LLM Encode node: node time around its forward, same calls, {name} LLM",
                        common.fmt_s(ev["node_forward_median"] + ev["around_forward_median"], 3),
                        f"{common.fmt_s(ev['node_forward_median'], 3)} (its forward)", common.fmt_x(ev["ratio_same_call"]),
                        "<= 1.05x", _met(ev["ratio_same_call"] <= 1.05)])
    if e2e_llm:
        cold = e2e_llm["cold"]["phases"]["encode"]
        again = e2e_llm["again_new_seed"]["phases"]["encode"]
        cached = [n for n in e2e_llm["again_new_seed"]["cached"] if n.startswith(("llm", "fuse"))]
        out.append(["encode phase, same prompt again in one session", common.fmt_s(again, 3),
                    f"{common.fmt_s(cold, 3)} (cold)", common.fmt_x(again / cold if cold else None),
                    "~0 (cached)", _met(again < 0.01 * max(cold, 1e-9) or again < 0.005)
                    + f" ({len(cached)} LLM4GEN nodes cached)"])
    # 2. CAM fuse vs one UNet step; 3. UNet call with 333 vs 77 context tokens.
    for key in ("steps", "steps_pytorch"):
        st = get(key)
        if not st:
            continue
        attention = st.get("facts", {}).get("attention") or (results.get("host_all") or {}).get("facts", {}).get("attention")
        size = st["size"]
        out.append([f"CAM fuse pos+neg (2 x B=1) vs one UNet step {size}x{size}, {attention}",
                    common.fmt_s(2 * st["cam_median"], 3), common.fmt_s(st["stock_median"], 3),
                    f"{st['cam_per_step'] * 100:.2f}%", "<= 5%", _met(st["cam_per_step"] <= 0.05)])
        out.append([f"UNet call (KSampler step, B=2) 333 vs 77 ctx, {size}x{size}, {attention} "
                    f"(median of {len(st['stock_calls'])})", common.fmt_s(st["llm4gen_median"], 3),
                    common.fmt_s(st["stock_median"], 3), common.fmt_x(st["ratio_median"]), "<= 1.15x",
                    _met(st["ratio_median"] <= 1.15)])
    # 4. End to end, stock vs LLM4GEN, each cold in its own process; the total is judged (<= 1.10x at 20 steps).
    e2e_stock = get("e2e_stock") or {}
    if e2e_stock and e2e_llm:
        s, l = e2e_stock["cold"], e2e_llm["cold"]
        what = f"{e2e_llm['size']}x{e2e_llm['size']}, {e2e_llm['steps']} steps"
        for phase in ("load", "encode", "sample", "decode"):
            a, b = l["phases"][phase], s["phases"][phase]
            out.append([f"e2e cold {phase} ({what}; peak RSS in phase)",
                        f"{common.fmt_s(a)} ({common.fmt_gib(l['phase_peak_rss_gib'].get(phase))})",
                        f"{common.fmt_s(b)} ({common.fmt_gib(s['phase_peak_rss_gib'].get(phase))})",
                        common.fmt_x(a / b if b else None), "report", "-"])
        out.append([f"e2e cold total, peak RSS ({what})", f"{common.fmt_s(l['seconds'])}, {common.fmt_gib(l['peak_rss_gib'])}",
                    f"{common.fmt_s(s['seconds'])}, {common.fmt_gib(s['peak_rss_gib'])}",
                    common.fmt_x(l["seconds"] / s["seconds"]),
                    "<= 1.10x" if e2e_llm["steps"] >= 20 else "report",
                    _met(l["seconds"] / s["seconds"] <= 1.10) if e2e_llm["steps"] >= 20 else "-"])
        if l.get("peak_vram_gib") is not None:
            out.append(["e2e cold peak VRAM", common.fmt_gib(l["peak_vram_gib"]), common.fmt_gib(s["peak_vram_gib"]),
                        "-", "report", "-"])
    # 5. Memory: loading the encoder per dtype (fresh process each); offloading before sampling.
    load = results.get("load") or results.get("llm") or {}
    for dtype in ("fp32", "bf16", "fp16"):
        r = next((x for x in load.get("load", []) if x["dtype"] == dtype), None)
        name = "small" if quick else "XL"
        if r is None:
            out.append([f"load_llm {name} {dtype}: peak RSS", "not run (--quick)", "-", "-", "report", "-"])
            continue
        out.append([f"load_llm {name} {dtype}: peak RSS (anon), time", f"{common.fmt_gib(r['peak_rss_gib'])} "
                    f"({r['peak_anon_rss_gib']:.2f}), {common.fmt_s(r['seconds'], 1)}",
                    f"{common.fmt_gib(r['weights_gib'])} weights", f"{r['peak_rss_gib'] / r['weights_gib']:.2f}x",
                    "report", "-"])
    for key in ("memory", "memory_nocache"):
        m = get(key)
        if not m:
            continue
        fm = m.get("free_memory") or {}
        out.append([f"LLM held during KSampler ({m['cache']} cache); RSS after last encode / sampler peak",
                    f"{'yes' if m['llm_loaded_during_sampling'] else 'no'}; {common.fmt_gib(m['rss_after_encode_gib'])}"
                    f" / {common.fmt_gib(m['ksampler_peak_rss_gib'])}",
                    f"free_memory unloads {', '.join(fm.get('unloaded', [])) or '-'}", "-", "report", "-"])
    out += format_rows(results, quick)
    gpu = any((r or {}).get("machine", {}).get("gpu") for r in results.values() if isinstance(r, dict))
    if not gpu:
        out.append(["GPU table (fp16/bf16, with/without offload)", "not run: no GPU on this machine", "-", "-", "report", "-"])
    return out


def format_rows(results: dict, quick: bool) -> list[list[str]]:
    """Issue 15: loading the converter's formats (peak RSS, time) and encoding with dtype auto."""
    out, size = [], "small" if quick else "XL"
    load = {(r["source"], r["dtype"]): r for r in (results.get("llm_formats_load") or {}).get("load", [])}
    names = {"bin": "release .bin (fp32)", "bf16": "bf16 file", "fp16": "fp16 file", "fp8": "fp8 file"}
    for (source, dtype), r in load.items():
        goal = f"<= {r['goal_gib']} GiB" if r.get("goal_gib") else "report"
        out.append([f"format load {size}: {names[source]} as {dtype} (computes {r['compute']}): peak RSS (anon), time",
                    f"{common.fmt_gib(r['peak_rss_gib'])} ({r['peak_anon_rss_gib']:.2f}), {common.fmt_s(r['seconds'], 1)}",
                    f"{common.fmt_gib(r['weights_gib'])} weights, {common.fmt_gib(r['before_gib'])} before",
                    f"{r['growth_per_weights']:.2f}x growth", goal,
                    _met(r["peak_rss_gib"] <= r["goal_gib"]) if r.get("goal_gib") else "-"])
    base, bf16 = load.get(("bin", "fp32")), load.get(("bf16", "bf16"))
    if base and bf16:
        out.append(_ratio_row(f"format load {size} time: bf16 safetensors vs the fp32 .bin as fp32 (fastest of "
                              f"{len(base['seconds_all'])})", bf16["seconds"], base["seconds"], "<= 0.3x", 0.3))
    enc = (results.get("llm_formats_encode") or {}).get("encode")
    if enc:
        native = enc["auto_dtype"] == "bf16"
        limit = 0.5 if native else 1.02
        same = ", the same model as fp32 here" if enc["same_model"] else ""
        times = enc["times"]
        # fastest runs: the least disturbed by other load on a shared machine (medians moved 10% here)
        out.append(_ratio_row(f"llm.encode {size}, 256 tok, B=1: dtype auto (= {enc['auto_dtype']}{same}; {enc['cpu']}, "
                              f"{'native bf16' if native else 'no bf16 units'}) vs fp32 (fastest of {enc['repeats']})",
                              times["auto"]["fastest"], times["fp32"]["fastest"], f"<= {limit}x", limit))
        out.append(_ratio_row(f"llm.encode {size}, 256 tok, B=1: fp8 file, dtype auto (computes "
                              f"{enc['dtypes']['fp8 auto']}) vs fp32 (fastest of {enc['repeats']})",
                              times["fp8 auto"]["fastest"], times["fp32"]["fastest"], "report", None))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, a smoke run; not a measurement")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA (ComfyUI without --cpu)")
    parser.add_argument("--out", default=None, help="folder for logs and JSON (default under ~/.cache)")
    parser.add_argument("--reuse", action="store_true", help="keep results already in --out (resume a run)")
    parser.add_argument("--only", default=None, help="comma-separated keys of the plan to run (see plan())")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else models_dir().parent / "bench-results" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(args.quick, args.gpu)
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s for s in steps if s[0] in wanted]
    load_before = common.loadavg()
    results, start = {}, time.perf_counter()
    with open(out / "log.txt", "a" if args.reuse else "w") as log:
        for key, module, child_args in steps:
            began = time.perf_counter()
            if args.reuse and (out / f"{key}.json").is_file():
                results[key] = __import__("json").loads((out / f"{key}.json").read_text())
                print(f"[run_all] {key}: reused {out / f'{key}.json'}", file=sys.stderr, flush=True)
                continue
            print(f"[run_all] {key}: {module} {' '.join(child_args)} ...", file=sys.stderr, flush=True)
            log.flush()
            results[key] = common.run_child(module, child_args, out / f"{key}.json", log=log)
            print(f"[run_all] {key} done in {time.perf_counter() - began:.0f} s, load {common.loadavg()}",
                  file=sys.stderr, flush=True)
    machine = common.machine()
    table = common.markdown_table(HEADER, rows(results, args.quick))
    head = (f"LLM4GEN benchmarks{' (--quick: small models, a smoke run, not a measurement)' if args.quick else ''} | "
            f"{machine['date_utc']} | {machine['cpu']} | {machine['cores']} cores | {machine['ram_gib']} GiB | "
            f"GPU {machine['gpu'] or 'none'} | torch {machine['torch']} | transformers {machine['transformers']} | "
            f"ComfyUI {machine['comfyui']} | commit {machine['commit']} | load avg {load_before} -> {common.loadavg()} | "
            f"{time.perf_counter() - start:.0f} s")
    text = head + "\n\n" + table + "\n"
    (out / "table.md").write_text(text)
    print(text)
    print(f"(logs and JSON: {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
