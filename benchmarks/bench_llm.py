"""What ``llm.encode`` costs on top of the bare transformers encoder forward it wraps.

    .venv/bin/python -m benchmarks.bench_llm            # T5-v1.1-small and T5-XL (RankGen) sizes
    .venv/bin/python -m benchmarks.bench_llm --small    # the small one only (seconds)
    .venv/bin/python -m benchmarks.bench_llm --load     # also: load_llm of an XL RankGen .bin, fp32/bf16/fp16

Random weights, fp32 on the CPU unless told otherwise. For each size and batch it times, on the
same model object and the same ids, ``model(input_ids, attention_mask).last_hidden_state`` (the
release's call) against ``llm.encode(prompts, 256)`` (tokenizing, padding to 256, the forward,
and with ``step_callback`` the per-layer progress hooks), interleaved so that load from other
processes hits both alike, and prints the fastest run of each (least disturbed by other load on
the machine), the ratios of fastest and of median runs (goal: <= 1.05x), and what ``encode``
spends outside the forward, timed inside the same calls (immune to load from elsewhere). The XL
model is built on the meta device and filled in place, so it costs one copy of its weights
(~4.9 GB fp32). ``--load`` times ``load_llm`` on a random XL encoder in RankGen's release layout
(``pytorch_model.bin``, 4.9 GB, built once and cached with the test models) in a fresh process
per dtype, with that process's peak RSS.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llm4gen_core.llm import LLMEncoder
from llm4gen_core.tokenization import load_t5_tokenizer

from . import common
from .bench_models import NAMES, SIZES, random_t5_encoder, rankgen_folder, t5_tokenizer_folder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = ("Ground view of the Great Pyramids and Sphinx on the moon's surface. The back of an astronaut is in the "
          "foreground. The planet Earth looms in the sky.")


def tokenizer(tmp: Path):
    """ComfyUI's T5 tokenizer when installed (the real vocabulary), else a tiny trained one."""
    try:
        folder = t5_tokenizer_folder()
        if (folder / "tokenizer.json").is_file():
            return load_t5_tokenizer(folder)
    except Exception:
        pass
    from scripts.smoke_models import tiny_spm_tokenizer

    return load_t5_tokenizer(tiny_spm_tokenizer(tmp / "tok"))


def bench(llm: LLMEncoder, batch: int, repeats: int, device: torch.device) -> dict:
    """Fastest and median seconds of bare forward / encode / encode with progress, interleaved;
    and what encode spends outside its forward (timed inside the same calls)."""
    prompts = [PROMPT] * batch
    ids, mask, _, _ = llm.tokenize(prompts, 256)
    ids, mask = ids.to(device), mask.to(device)
    calls = {
        "bare": lambda: llm.model(input_ids=ids, attention_mask=mask).last_hidden_state,
        "encode": lambda: llm.encode(prompts, 256).hidden_states,
        "encode+progress": lambda: llm.encode(prompts, 256, step_callback=lambda d, t: None).hidden_states,
    }
    times = {name: [] for name in calls}
    inside = []  # the forward's share of each encode call, timed within that same call

    def timed_forward(*args, _forward=llm._forward):
        common.sync(device)
        start = time.perf_counter()
        out = _forward(*args)
        common.sync(device)
        inside.append(time.perf_counter() - start)
        return out

    llm._forward = timed_forward
    overhead = []
    try:
        with torch.no_grad():
            for fn in calls.values():  # warm-up
                fn()
            for _ in range(repeats):
                for name, fn in calls.items():
                    inside.clear()
                    common.sync(device)
                    start = time.perf_counter()
                    fn()
                    common.sync(device)
                    times[name].append(time.perf_counter() - start)
                    if name == "encode":
                        overhead.append(times[name][-1] - sum(inside))
    finally:
        del llm._forward
    result = {name: common.fastest_median(t) for name, t in times.items()}
    result["overhead"] = statistics.median(overhead)
    return result


LOAD_CHILD = r"""
import json, sys, time
import torch
from benchmarks import common
from llm4gen_core import load_llm
device = sys.argv[4]
with common.AnonPeak() as anon:
    start = time.perf_counter()
    llm = load_llm(sys.argv[1], tokenizer_path=sys.argv[2], dtype=sys.argv[3], device=device)
    common.sync(torch.device(device))
    took = time.perf_counter() - start
params = sum(p.numel() * p.element_size() for p in llm.model.parameters()) / 2**30
vram = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
print(json.dumps({"dtype": sys.argv[3], "device": device, "seconds": took, "peak_rss_gib": common.peak_rss_gib(),
                  "peak_anon_rss_gib": anon.peak_gib, "rss_gib": common.rss_gib(), "weights_gib": params,
                  "peak_vram_gib": vram, "llm": repr(llm)}))
"""


def bench_load(dtypes=("fp32", "bf16", "fp16"), size: str = "xl", device: str = "cpu") -> list[dict]:
    """load_llm on the cached RankGen folder of ``size``, each dtype in a fresh process."""
    folder = rankgen_folder(size)
    size = (folder / "pytorch_model.bin").stat().st_size / 1e9
    rows = []
    for dtype in dtypes:
        out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(folder), str(t5_tokenizer_folder()), dtype, device],
                             check=True, capture_output=True, text=True, cwd=common.ROOT)
        row = __import__("json").loads(out.stdout.strip().splitlines()[-1])
        row["file_gb"] = size
        rows.append(row)
        print(f"load_llm {dtype}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_gib']:.2f} GiB (anonymous {row['peak_anon_rss_gib']:.2f}), RSS after "
              f"{row['rss_gib']:.2f} GiB, weights {row['weights_gib']:.2f} GiB ({folder.name}/pytorch_model.bin, "
              f"{size:.2f} GB)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="only the small size")
    parser.add_argument("--sizes", default=None, help="comma-separated: small,xl (default both; --small: small)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per call (default 10 small, 4 XL)")
    parser.add_argument("--batches", default="1,2", help="comma-separated batch sizes")
    parser.add_argument("--load", action="store_true", help="also time load_llm on an XL RankGen .bin")
    parser.add_argument("--load-only", action="store_true", help="only the load_llm measurement")
    parser.add_argument("--load-dtypes", default="fp32,bf16,fp16", help="--load: comma-separated dtypes")
    parser.add_argument("--load-size", default="xl", choices=sorted(SIZES), help="--load: which random encoder")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    batches = [int(b) for b in args.batches.split(",")]
    sizes = args.sizes.split(",") if args.sizes else (["small"] if args.small else ["small", "xl"])
    result = {"machine": common.machine(), "device": str(device), "dtype": args.dtype, "rows": [], "load": []}
    if not args.load_only:
        tmp_dir = tempfile.TemporaryDirectory()
        tok = tokenizer(Path(tmp_dir.name))
        print(f"llm.encode vs bare T5 encoder forward | 256 tokens | {device} | {args.dtype} | torch {torch.__version__} | "
              f"{torch.get_num_threads()} threads | tokenizer {Path(tok.source).name} | interleaved runs")
        print(f"{'':<22} {'fastest run (s)':^34} {'encode/bare':^15} {'+progress/bare':^15}")
        print(f"{'model':<16} {'batch':>5} {'bare fwd':>10} {'encode':>10} {'+progress':>10} {'fastest':>7} {'median':>7} "
              f"{'fastest':>7} {'median':>7} {'encode-fwd (ms)':>16}")
        for size in sizes:
            name = NAMES[size]
            start = time.perf_counter()
            model = random_t5_encoder(SIZES[size], dtype, device)
            built = time.perf_counter() - start
            llm = LLMEncoder(model, tok, "t5-encoder", "pre ", -1, f"random {name}")
            params = sum(p.numel() for p in model.parameters()) / 1e9
            repeats = args.repeats or (10 if size == "small" else 4)
            for batch in batches:
                t = bench(llm, batch, repeats, device)
                (bare, bare_med), (enc, enc_med), (prog, prog_med) = t["bare"], t["encode"], t["encode+progress"]
                print(f"{name:<16} {batch:>5} {bare:>10.3f} {enc:>10.3f} {prog:>10.3f} {enc / bare:>7.3f} "
                      f"{enc_med / bare_med:>7.3f} {prog / bare:>7.3f} {prog_med / bare_med:>7.3f} "
                      f"{t['overhead'] * 1e3:>16.2f}", flush=True)
                result["rows"].append({
                    "size": size, "model": name, "batch": batch, "params_b": params, "repeats": repeats,
                    "bare_fastest": bare, "bare_median": bare_med, "encode_fastest": enc, "encode_median": enc_med,
                    "progress_fastest": prog, "progress_median": prog_med, "encode_overhead_s": t["overhead"]})
            print(f"{'':<16} ({params:.2f}B params, built in {built:.1f} s, {repeats} timed runs per call)")
            del llm, model
        tmp_dir.cleanup()
    if args.load or args.load_only:
        result["load"] = bench_load(tuple(args.load_dtypes.split(",")), size=args.load_size, device=args.device)
    result["loadavg_after"] = common.loadavg()
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
