"""Training speed and memory per mode: steps/s, peak RSS and the share of step time spent waiting
for data, each run in a fresh process (so each peak RSS is that run's own).

    .venv/bin/python -m benchmarks.bench_train --sizes tiny          # seconds
    .venv/bin/python -m benchmarks.bench_train --sizes tiny sd15     # + SD1.5 size (~15 min, ~20 GiB)

Sizes (random weights, made locally, nothing downloaded):
- tiny: the training tests' models (CLIP 32-d, a 2-level UNet, T5 48-d), 32x32 images.
- sd15: a full-size SD1.5 single-file checkpoint (UNet 860M, CLIP-L, VAE) and a 2-layer T5 at the
  release's width (2048, so the CAM has the release's 768/2048 dims), 256x256 images, batch 1.
On a CPU the peak RSS approximates what the same run holds in GPU memory (weights, gradients,
optimizer state, activations); the times are this CPU's, not a GPU's. The first step (warm-up)
is left out of the rates. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts import tiny_training

from . import common

MODES = ("cam", "cam+lora", "cam+unet")


def tiny_inputs(folder: Path) -> tuple[list[str], int]:
    tiny = tiny_training.build_all(folder)
    return (["--base", str(tiny.base), "--llm", str(tiny.llm), "--tokenizer", str(tiny.t5_tokenizer),
             "--data", str(tiny.data), "--resolution", str(tiny_training.RESOLUTION), "--batch-size", "2"], 12)


def sd15_inputs(folder: Path) -> tuple[list[str], int]:
    from scripts.smoke_models import full_sd15_checkpoint, tiny_t5_encoder, tiny_t5_rankgen_folder

    clip_tokenizer, t5_tokenizer = tiny_training.comfy_tokenizers()
    t5 = tiny_t5_encoder(seed=1, vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_heads=32, num_layers=2)
    llm = tiny_t5_rankgen_folder(folder / "t5-2048", t5, fmt="safetensors")
    data = tiny_training.build_data(folder / "data", size=288)
    return (["--base", str(full_sd15_checkpoint()), "--clip-tokenizer", str(clip_tokenizer), "--llm", str(llm),
             "--tokenizer", str(t5_tokenizer), "--data", str(data), "--resolution", "256", "--batch-size", "1"], 4)


def run_mode(inputs: list[str], steps: int, mode: str, output: Path, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "llm4gen_core.train", *inputs, "--train", mode, "--output", str(output),
            "--max-steps", str(steps), "--checkpoint-every", str(10 * steps), "--mixed-precision", "no", *extra]
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace")
    if status != 0:
        return {"mode": mode, "error": stderr[-1500:]}
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()][1:]  # no warm-up
    step_s = sum(r["step_s"] for r in log)
    return {"mode": mode, "steps_per_s": len(log) / step_s, "s_per_step": step_s / len(log),
            "data_share": sum(r["data_s"] for r in log) / step_s, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "wall_s": wall, "steps_timed": len(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=("tiny", "sd15"))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for every run")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    extra = ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    results = []
    with tempfile.TemporaryDirectory(prefix="llm4gen-bench-train-") as tmp:
        for size in args.sizes:
            inputs, steps = (tiny_inputs if size == "tiny" else sd15_inputs)(Path(tmp) / size)
            for mode in args.modes:
                print(f"[bench_train] {size} {mode} ...", file=sys.stderr, flush=True)
                result = run_mode(inputs, steps, mode, Path(tmp) / size / mode.replace("+", "_"), extra)
                results.append({"size": size, **result})
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["size"], r["mode"], "failed", "", "", "", r["error"].splitlines()[-1][:80]])
            continue
        rows.append([r["size"], r["mode"], f"{r['steps_per_s']:.3f}", common.fmt_s(r["s_per_step"]),
                     common.fmt_gib(r["peak_rss_gib"]), f"{100 * r['data_share']:.1f}%",
                     "yes" if r["data_share"] < 0.05 else "NO"])
    print(common.markdown_table(["size", "mode", "steps/s", "s/step", "peak RSS", "waiting for data",
                                 "< 5%?"], rows))
    print(f"\nmachine: {json.dumps(common.machine())}")
    common.write_json(args.json, {"machine": common.machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
