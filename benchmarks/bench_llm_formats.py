"""The LLM in the converter's formats: what loading each costs, and encoding with dtype auto.

    .venv/bin/python -m benchmarks.bench_llm_formats load      # XL: peak RSS and time per format
    .venv/bin/python -m benchmarks.bench_llm_formats encode    # XL: encode, dtype auto vs fp32, 256 tokens
    .venv/bin/python -m benchmarks.bench_llm_formats load --size small   # a smoke run

``load``: ``load_llm`` in a fresh process per (file, dtype), alternating over ``--rounds`` rounds: the
release's layout (RankGen folder, fp32 ``pytorch_model.bin``) as fp32 and as bf16, and the files
``python -m llm4gen_core.convert llm`` writes from it (bf16, fp16, scaled fp8; made once and cached
beside the folder), each in its own dtype and in dtype auto. Per load: seconds (fastest round), the
process's peak RSS (VmHWM, which counts mapped file pages too) and peak anonymous RSS, the RSS of
the process before the load (torch, transformers and the tokenizer imported), and the weights'
bytes; growth / weights is the figure the loader promises to keep at or below 1.15.

``encode``: ``llm.encode`` of one 256-token prompt (B=1), interleaved, with dtype auto and fp32, and
with the fp8 file in dtype auto. Which dtype auto chose on this CPU, and why, is printed. Where auto
is fp32 (a CPU without bf16 units) both rows use the same model: the ratio is then the spread of
the measurement. Random weights; the page cache is warm (the files were just written or read).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from . import common
from .bench_models import converted_file, rankgen_folder, t5_tokenizer_folder

GOALS = {  # (source, dtype) -> peak RSS goal, GiB (the goals, at the release's size)
    ("bin", "bf16"): 2.9, ("bf16", "bf16"): 2.9, ("fp8", "auto"): 1.6,
}

CHILD = r"""
import json, sys, time
from benchmarks import common
import torch
from transformers import T5EncoderModel
from llm4gen_core import load_llm
from llm4gen_core.tokenization import load_t5_tokenizer
load_t5_tokenizer(sys.argv[2])
common.reset_peak_rss()
before = common.rss_gib()
with common.AnonPeak() as anon:
    start = time.perf_counter()
    llm = load_llm(sys.argv[1], tokenizer_path=sys.argv[2], dtype=sys.argv[3], device="cpu")
    took = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for p in llm.model.parameters()) / 2**30
print(json.dumps({"seconds": took, "peak_rss_gib": common.peak_rss_gib(), "peak_anon_rss_gib": anon.peak_gib,
                  "before_gib": before, "rss_after_gib": common.rss_gib(), "weights_gib": weights,
                  "compute": str(llm.dtype).removeprefix("torch."),
                  "weights_format": getattr(llm, "weights", str(llm.dtype).removeprefix("torch."))}))
"""


def source_path(source: str, size: str):
    return rankgen_folder(size) if source == "bin" else converted_file(size, source)


def bench_load(size: str, rounds: int, plan: list[tuple[str, str]]) -> list[dict]:
    paths = {source: source_path(source, size) for source, _ in plan}
    tokenizer = t5_tokenizer_folder()
    runs: dict[tuple[str, str], list[dict]] = {key: [] for key in plan}
    for r in range(rounds):
        for key in (plan if r % 2 == 0 else plan[::-1]):
            source, dtype = key
            out = subprocess.run([sys.executable, "-c", CHILD, str(paths[source]), str(tokenizer), dtype],
                                 capture_output=True, text=True, cwd=common.ROOT)
            if out.returncode:
                raise RuntimeError(f"load {source} {dtype} failed:\n{out.stderr[-3000:]}")
            runs[key].append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = runs[key][-1]
            print(f"  round {r + 1}: {source} as {dtype}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_gib']:.2f} GiB",
                  file=sys.stderr, flush=True)
    rows = []
    for (source, dtype), found in runs.items():
        fastest = min(found, key=lambda x: x["seconds"])
        peak = max(x["peak_rss_gib"] for x in found)
        growth = max(x["peak_rss_gib"] - x["before_gib"] for x in found)
        path = paths[source]
        file_bytes = (path / "pytorch_model.bin").stat().st_size if path.is_dir() else path.stat().st_size
        rows.append({"source": source, "dtype": dtype, "file": path.name, "file_gib": file_bytes / 2**30,
                     "seconds": fastest["seconds"], "seconds_all": [x["seconds"] for x in found],
                     "peak_rss_gib": peak, "peak_anon_rss_gib": max(x["peak_anon_rss_gib"] for x in found),
                     "before_gib": fastest["before_gib"], "growth_gib": growth, "weights_gib": fastest["weights_gib"],
                     "growth_per_weights": growth / fastest["weights_gib"], "compute": fastest["compute"],
                     "weights_format": fastest["weights_format"], "goal_gib": GOALS.get((source, dtype))})
    print(f"load_llm per format | {size} | {rounds} rounds alternating, fresh process each | warm page cache")
    print(f"{'file':<42} {'as':<5} {'computes':<9} {'weights':<18} {'file GiB':>8} {'s':>7} {'peak RSS':>9} "
          f"{'anon':>6} {'growth/weights':>15} {'goal':>6}")
    for row in rows:
        goal = f"{row['goal_gib']:.1f}" if row["goal_gib"] else "-"
        print(f"{row['file']:<42} {row['dtype']:<5} {row['compute']:<9} {row['weights_format']:<18} "
              f"{row['file_gib']:>8.2f} {row['seconds']:>7.1f} {row['peak_rss_gib']:>9.2f} {row['peak_anon_rss_gib']:>6.2f} "
              f"{row['growth_per_weights']:>15.3f} {goal:>6}", flush=True)
    return rows


def bench_encode(size: str, repeats: int) -> dict:
    import torch

    from .bench_llm import PROMPT
    from llm4gen_core import load_llm
    from llm4gen_core.dtypes import cpu_auto_dtype

    choice = cpu_auto_dtype()
    tokenizer = t5_tokenizer_folder()
    prompt = " ".join([PROMPT] * 12)  # well over 256 tokens: every call encodes the full 256
    models = {"fp32": load_llm(rankgen_folder(size), tokenizer_path=tokenizer, dtype="fp32", device="cpu")}
    if choice.dtype == torch.float32:
        models["auto"] = models["fp32"]
    else:
        models["auto"] = load_llm(rankgen_folder(size), tokenizer_path=tokenizer, dtype="auto", device="cpu")
    models["fp8 auto"] = load_llm(converted_file(size, "fp8"), tokenizer_path=tokenizer, dtype="auto", device="cpu")
    calls = {name: (lambda llm=llm: llm.encode([prompt], 256)) for name, llm in models.items()}
    times = common.interleaved(calls, repeats)
    result = {"cpu": common.cpu_model(), "auto_dtype": choice.name, "reason": choice.reason, "repeats": repeats,
              "same_model": models["auto"] is models["fp32"], "threads": torch.get_num_threads(),
              "dtypes": {name: str(llm.dtype).removeprefix("torch.") for name, llm in models.items()},
              "times": {name: {"fastest": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()}}
    base = result["times"]["fp32"]
    print(f"llm.encode, 256 tokens, B=1, {size} | {result['cpu']} | dtype auto here: {choice.name} ({choice.reason})"
          f"{' | auto and fp32 are the same model here' if result['same_model'] else ''}")
    for name in times:
        r = result["times"][name]
        print(f"  {name:<9} ({result['dtypes'][name]:<8}) fastest {r['fastest']:.2f} s, median {r['median']:.2f} s, "
              f"vs fp32 {r['fastest'] / base['fastest']:.3f}x fastest, {r['median'] / base['median']:.3f}x median",
              flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["load", "encode"])
    parser.add_argument("--size", default="xl", choices=["small", "xl"])
    parser.add_argument("--rounds", type=int, default=2, help="load: rounds of every load (alternating order)")
    parser.add_argument("--repeats", type=int, default=3, help="encode: timed calls per model")
    parser.add_argument("--plan", default="bin:fp32,bin:bf16,bf16:bf16,bf16:auto,fp16:fp16,fp8:auto,fp8:fp32",
                        help="load: comma-separated source:dtype (source bin, bf16, fp16, fp8)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = {"machine": common.machine(), "size": args.size, "loadavg_before": common.loadavg()}
    start = time.perf_counter()
    if args.what == "load":
        plan = [tuple(item.split(":")) for item in args.plan.split(",")]
        result["load"] = bench_load(args.size, args.rounds, plan)
    else:
        result["encode"] = bench_encode(args.size, args.repeats)
    result["seconds"] = time.perf_counter() - start
    result["loadavg_after"] = common.loadavg()
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
