"""What ``llm.encode`` costs on top of the bare transformers encoder forward it wraps.

    .venv/bin/python benchmarks/bench_llm.py            # T5-v1.1-small and T5-XL (RankGen) sizes
    .venv/bin/python benchmarks/bench_llm.py --small    # the small one only (seconds)
    .venv/bin/python benchmarks/bench_llm.py --load     # also: load_llm of an XL RankGen-layout .bin

Random weights, fp32 on the CPU unless told otherwise. For each size and batch it times, on the
same model object and the same ids, ``model(input_ids, attention_mask).last_hidden_state`` (the
release's call) against ``llm.encode(prompts, 256)`` (tokenizing, padding to 256, the forward,
and with ``step_callback`` the per-layer progress hooks), interleaved so that load from other
processes hits both alike, and prints the fastest run of each (least disturbed by other load on
the machine), the ratios of fastest and of median runs (goal: <= 1.05x), and what ``encode``
spends outside the forward, timed inside the same calls (immune to load from elsewhere). The XL model is
built on the meta device and filled in place, so it costs one copy of its weights (~4.9 GB fp32).
``--load`` writes that model as RankGen's ``pytorch_model.bin`` (4.9 GB on disk, in a temporary
folder) and times ``load_llm`` on it in a fresh process, with that process's peak memory.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from llm4gen_core.llm import LLMEncoder  # noqa: E402
from llm4gen_core.tokenization import load_t5_tokenizer  # noqa: E402

SIZES = {  # google/t5-v1_1-small and -xl encoders (RankGen's is the XL one)
    "t5-v1.1-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    "t5-xl (RankGen)": dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = ("Ground view of the Great Pyramids and Sphinx on the moon's surface. The back of an astronaut is in the "
          "foreground. The planet Earth looms in the sky.")


def random_t5_encoder(dims: dict, dtype: torch.dtype, device: torch.device):
    """A T5EncoderModel with random weights, made on the meta device and filled in place."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, **dims)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    model.set_input_embeddings(model.shared)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
    return model.to(dtype).eval().requires_grad_(False)


def tokenizer(tmp: Path):
    """ComfyUI's T5 tokenizer when installed (the real vocabulary), else a tiny trained one."""
    try:
        from scripts.comfyui_host import comfyui_root

        folder = comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
        if (folder / "tokenizer.json").is_file():
            return load_t5_tokenizer(folder)
    except ImportError:
        pass
    from synthetic.llm import tiny_spm_tokenizer

    return load_t5_tokenizer(tiny_spm_tokenizer(tmp / "tok"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(llm: LLMEncoder, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
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
        sync(device)
        start = time.perf_counter()
        out = _forward(*args)
        sync(device)
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
                    sync(device)
                    start = time.perf_counter()
                    fn()
                    sync(device)
                    times[name].append(time.perf_counter() - start)
                    if name == "encode":
                        overhead.append(times[name][-1] - sum(inside))
    finally:
        del llm._forward
    result = {name: (min(t), statistics.median(t)) for name, t in times.items()}
    result["overhead"] = statistics.median(overhead)
    return result


LOAD_CHILD = r"""
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from llm4gen_core import load_llm
start = time.perf_counter()
llm = load_llm(sys.argv[2], tokenizer_path=sys.argv[3], dtype=sys.argv[4], device="cpu")
took = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"load_llm {sys.argv[4]}: {took:.1f} s, peak RSS {peak:.2f} GiB, {llm}")
"""


def bench_load(tmp: Path, tok_source: str) -> None:
    """Time load_llm on an XL RankGen-layout folder, each dtype in a fresh process."""
    import subprocess

    model = random_t5_encoder(SIZES["t5-xl (RankGen)"], torch.float32, torch.device("cpu"))
    folder = tmp / "rankgen-t5-xl"
    folder.mkdir()
    state = {f"t5_encoder.{k}": v for k, v in model.state_dict().items()}
    start = time.perf_counter()
    torch.save(state, folder / "pytorch_model.bin")
    print(f"wrote {folder / 'pytorch_model.bin'} ({(folder / 'pytorch_model.bin').stat().st_size / 1e9:.2f} GB) "
          f"in {time.perf_counter() - start:.1f} s")
    del state, model
    for dtype in ("fp32", "bf16"):
        subprocess.run([sys.executable, "-c", LOAD_CHILD, str(ROOT), str(folder), tok_source, dtype], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="only the small size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per call (default 10 small, 4 XL)")
    parser.add_argument("--batches", default="1,2", help="comma-separated batch sizes")
    parser.add_argument("--load", action="store_true", help="also time load_llm on an XL RankGen .bin")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    batches = [int(b) for b in args.batches.split(",")]
    tmp_dir = tempfile.TemporaryDirectory()
    tok = tokenizer(Path(tmp_dir.name))
    print(f"llm.encode vs bare T5 encoder forward | 256 tokens | {device} | {args.dtype} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | tokenizer {Path(tok.source).name} | interleaved runs")
    print(f"{'':<22} {'fastest run (s)':^34} {'encode/bare':^15} {'+progress/bare':^15}")
    print(f"{'model':<16} {'batch':>5} {'bare fwd':>10} {'encode':>10} {'+progress':>10} {'fastest':>7} {'median':>7} "
          f"{'fastest':>7} {'median':>7} {'encode-fwd (ms)':>16}")
    for name, dims in SIZES.items():
        if args.small and "small" not in name:
            continue
        start = time.perf_counter()
        model = random_t5_encoder(dims, dtype, device)
        built = time.perf_counter() - start
        llm = LLMEncoder(model, tok, "t5-encoder", "pre ", -1, f"random {name}")
        params = sum(p.numel() for p in model.parameters()) / 1e9
        repeats = args.repeats or (10 if "small" in name else 4)
        for batch in batches:
            t = bench(llm, batch, repeats, device)
            (bare, bare_med), (enc, enc_med), (prog, prog_med) = t["bare"], t["encode"], t["encode+progress"]
            print(f"{name:<16} {batch:>5} {bare:>10.3f} {enc:>10.3f} {prog:>10.3f} {enc / bare:>7.3f} "
                  f"{enc_med / bare_med:>7.3f} {prog / bare:>7.3f} {prog_med / bare_med:>7.3f} {t['overhead'] * 1e3:>16.2f}")
        print(f"{'':<16} ({params:.2f}B params, built in {built:.1f} s, {repeats} timed runs per call)")
        del llm, model
    if args.load:
        bench_load(Path(tmp_dir.name), str(Path(tok.source).parent))
    tmp_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
