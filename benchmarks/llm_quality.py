"""How close each weight format's LLM features (and the Cross-Adapter's output) stay to fp32, at
the release's size: the quality table in README-llm-memory.md.

    .venv/bin/python -m benchmarks.llm_quality                  # T5-XL size, 64 prompts
    .venv/bin/python -m benchmarks.llm_quality --readme         # ... and rewrite README-llm-memory.md's table
    .venv/bin/python -m benchmarks.llm_quality --size small --prompts 8      # a smoke run

Model: the random T5-XL-size encoder in RankGen's layout (``bench_models.rankgen_folder``: T5 v1.1 XL
dims, random weights drawn as T5 initialises itself, built once and cached outside the repository)
and the files ``python -m llm4gen_core.convert llm`` writes from it (bf16, fp16, scaled fp8).
Prompts: 64 varied ones (short to far over 256 tokens, several scripts, numbers; seeded), through
ComfyUI's T5 tokenizer, encoded as the release does (``"pre "``, 256 tokens, padding kept).

Per format, against the fp32 load of the release's ``.bin``: each prompt's features [256, 2048]
(every position: the Cross-Adapter fuses them all) flattened to one vector, its cosine similarity to
fp32's, mean and minimum over the prompts; the worst single token's cosine; and the CAM's output
(a random CAM of the release's dims; the same random CLIP tokens per prompt for every format): its
largest absolute difference from the output on fp32 features, over all prompts, also relative to
the largest output magnitude.

Each format is computed as a machine would compute it: in fp32 (CPUs without bf16 units load bf16
and fp16 files as fp32; fp8 files keep fp8 weights and compute in fp32), and in bf16 where the
machine has it. A CPU without bf16 units runs bf16 matmuls at ~0.2 GF/s (hours for this table), so
there ``--emulate-bf16`` (the default on such CPUs) computes in fp32 with every linear layer's and
layer norm's input, weight and output, and each sublayer's residual sum, rounded to bf16 (what a
bf16 GEMM with fp32 accumulation does); attention scores and softmax stay fp32, so it slightly
understates bf16's error. Such rows say "emulated". fp16 compute is only measured on a GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

from . import common
from .bench_models import converted_file, rankgen_folder, release_cam_file, t5_tokenizer_folder

README = common.ROOT / "README-llm-memory.md"
START, END = "<!-- llm-quality:start -->", "<!-- llm-quality:end -->"
GOALS = {"bf16": 0.999, "fp8": 0.99}

_SUBJECTS = ["an old lighthouse keeper", "a red fox", "two astronauts", "a glass teapot", "the Great Pyramids",
             "a cyberpunk street market", "a violinist", "a field of sunflowers", "a steam locomotive", "a koi pond",
             "a snow leopard", "a medieval library", "three children", "a vintage typewriter", "a coral reef",
             "a mountain monastery"]
_DETAILS = ["wearing a yellow raincoat", "under a violet sky", "with intricate gold filigree", "in heavy rain",
            "lit by neon signs", "at golden hour", "covered in frost", "surrounded by floating lanterns",
            "reflected in a puddle", "with a cracked stone floor", "beside a wooden bench", "in the foreground",
            "while the planet Earth looms behind", "holding a tiny paper boat", "with dust in the sunbeams",
            "next to a sleeping cat", "among tall pine trees", "on a rainy night", "from a low angle"]
_STYLES = ["oil painting", "35mm photograph", "watercolor", "isometric 3D render", "ukiyo-e woodblock print",
           "charcoal sketch", "studio portrait", "cinematic still", "children's book illustration"]
_EXTRA = ["東京の夜景", "café au lait", "naïve art", "Привет, мир", "2024", "3.14", "f/1.8", "1/250 s", "ISO 400",
          "50% grey", "#ff8800", "(masterpiece)", "über-detailed", "北京", "déjà vu"]


def prompts(n: int, seed: int = 2407) -> list[str]:
    """``n`` varied prompts: a quarter each short, medium, long and far over 256 tokens."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        words = [rng.choice(_SUBJECTS)]
        count = {0: rng.randint(0, 2), 1: rng.randint(3, 6), 2: rng.randint(8, 16), 3: rng.randint(40, 60)}[kind]
        for _ in range(count):
            words.append(rng.choice(_DETAILS))
            if rng.random() < 0.3:
                words.append(rng.choice(_EXTRA))
        text = ", ".join(words)
        if kind:
            text += f". {rng.choice(_STYLES).capitalize()}, highly detailed."
        if kind == 3:
            text = text + " " + " ".join(f"Then {rng.choice(_SUBJECTS)} {rng.choice(_DETAILS)}." for _ in range(10))
        out.append(text[0].upper() + text[1:])
    return out


def emulate_bf16(model: torch.nn.Module) -> None:
    """Round what bf16 compute rounds: each linear layer's weight, input and output, each layer
    norm's output and each sublayer's output (the residual sum), to bf16; accumulate in fp32."""
    from transformers.models.t5.modeling_t5 import T5LayerFF, T5LayerNorm, T5LayerSelfAttention

    from llm4gen_core.fp8 import ScaledFP8Embedding, ScaledFP8Linear

    def rounded(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(torch.bfloat16).to(x.dtype)
        if isinstance(x, tuple):
            return tuple(rounded(v) for v in x)
        return x

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(rounded(module.weight))
            if isinstance(module, (torch.nn.Linear, ScaledFP8Linear, T5LayerNorm, torch.nn.Embedding,
                                   ScaledFP8Embedding, T5LayerFF, T5LayerSelfAttention)):
                module.register_forward_pre_hook(lambda m, args: rounded(args))
                module.register_forward_hook(lambda m, args, out: rounded(out))


def measure(llm, texts, reference, cam, clips, batch: int) -> dict:
    feats = []
    for i in range(0, len(texts), batch):
        feats.append(llm.encode(texts[i:i + batch], 256).hidden_states.float().cpu())
        print(f"    {min(i + batch, len(texts))}/{len(texts)} prompts", file=sys.stderr, flush=True)
    feats = torch.cat(feats)
    if reference is None:
        return {"features": feats}
    ref_feats, ref_cam = reference
    per_prompt = torch.nn.functional.cosine_similarity(feats.flatten(1).double(), ref_feats.flatten(1).double(), dim=-1)
    per_token = torch.nn.functional.cosine_similarity(feats.double(), ref_feats.double(), dim=-1)
    with torch.no_grad():
        out = torch.cat([cam(clips[i:i + 1], feats[i:i + 1]) for i in range(len(texts))])
    diff = (out - ref_cam).abs().max().item()
    return {"cos_mean": per_prompt.mean().item(), "cos_min": per_prompt.min().item(),
            "token_cos_min": per_token.min().item(), "cam_max_abs_diff": diff,
            "cam_max_rel_diff": diff / ref_cam.abs().max().item()}


def rows_plan(device: str, emulate: bool) -> list[dict]:
    """(label, source, dtype to load, emulate bf16?) per row, for what this machine computes."""
    gpu = device.startswith("cuda")
    plan = [dict(format="fp32 (release .bin)", source="bin", dtype="fp32", emulate=False),
            dict(format="bf16 file", source="bf16", dtype="fp32", emulate=False)]
    if gpu or not emulate:
        plan.append(dict(format="bf16 file", source="bf16", dtype="bf16", emulate=False))
    else:
        plan.append(dict(format="bf16 file", source="bf16", dtype="fp32", emulate=True))
    plan.append(dict(format="fp16 file", source="fp16", dtype="fp32", emulate=False))
    if gpu:
        plan.append(dict(format="fp16 file", source="fp16", dtype="fp16", emulate=False))
    plan.append(dict(format="fp8 file", source="fp8", dtype="fp32", emulate=False))
    if gpu or not emulate:
        plan.append(dict(format="fp8 file", source="fp8", dtype="bf16", emulate=False))
    else:
        plan.append(dict(format="fp8 file", source="fp8", dtype="fp32", emulate=True))
    return plan


def table(result: dict) -> str:
    head = ("| file | computes in | features: cosine to fp32, mean | min (of prompts) | worst token | "
            "CAM output: largest abs. difference | relative to its largest value | goal (mean) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for row in result["rows"][1:]:
        compute = row["computes"] + (" (emulated)" if row["emulate"] else "")
        goal = GOALS.get(row["source"])
        met = f">= {goal}: {'met' if row['cos_mean'] >= goal else 'NOT met'}" if goal else "-"
        lines.append(f"| {row['format']} | {compute} | {row['cos_mean']:.6f} | {row['cos_min']:.6f} | "
                     f"{row['token_cos_min']:.5f} | {row['cam_max_abs_diff']:.3g} | {row['cam_max_rel_diff']:.2%} | "
                     f"{met} |")
    m = result["machine"]
    size = {"xl": "T5-XL-size (release-size)", "small": "T5-v1.1-small-size (smoke run)"}[result["size"]]
    caption = (f"Measured by `benchmarks/llm_quality.py` on {m['date_utc']}: random {size} encoder (T5's own "
               f"initialisation; {result['params_b']:.2f} B parameters), {result['prompts']} prompts, 256 tokens, "
               f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {result['device']}; "
               f"{result['seconds'] / 60:.0f} min. Reference: the fp32 load of the release-layout `.bin`.")
    return caption + "\n\n" + head + "\n".join(lines) + "\n"


class ReadmeSectionError(ValueError):
    """README-llm-memory.md lacks the marked section the table goes into."""


def rewrite_readme(text: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise ReadmeSectionError(f"{README} has no {START} ... {END} section")
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    README.write_text(before + START + "\n" + text + END + after)


def main(argv=None) -> int:
    try:
        return measure_and_report(argv)
    except ReadmeSectionError as e:
        print(e, file=sys.stderr)
        return 2


def measure_and_report(argv=None) -> int:
    from llm4gen_core import load_cross_adapter, load_llm
    from llm4gen_core.dtypes import cpu_auto_dtype

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="xl", choices=["small", "xl"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--emulate-bf16", choices=["auto", "yes", "no"], default="auto",
                        help="auto: emulate bf16 compute on CPUs without native bf16 units")
    parser.add_argument("--only", default=None, help="comma-separated row numbers (1 = first after fp32) to run")
    parser.add_argument("--json", default=None, help="results, written after every row")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --json (and the fp32 features cached beside it); run the rest")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's quality table")
    parser.add_argument("--from-json", default=None, help="print (and with --readme write) the table of a saved run")
    args = parser.parse_args(argv)
    if args.resume and not args.json:
        parser.error("--resume needs --json")
    if args.from_json:  # the table of an earlier run, without running anything
        text = table(json.loads(Path(args.from_json).read_text()))
        print(text)
        if args.readme:
            rewrite_readme(text)
        return 0
    start = time.perf_counter()
    device = torch.device(args.device)
    emulate = {"yes": True, "no": False}.get(args.emulate_bf16, device.type == "cpu" and
                                             cpu_auto_dtype().dtype != torch.bfloat16)
    texts = prompts(args.prompts)
    tokenizer = t5_tokenizer_folder()
    cam_dir = rankgen_folder(args.size).parent
    cam = load_cross_adapter(release_cam_file(cam_dir, 2048 if args.size == "xl" else 512)).eval()
    g = torch.Generator().manual_seed(77)
    clips = torch.randn(len(texts), 77, cam.config.clip_dim, generator=g)
    plan = rows_plan(args.device, emulate)
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        plan = [plan[0]] + [row for i, row in enumerate(plan[1:], 1) if i in keep]
    result = {"machine": common.machine(), "size": args.size, "prompts": len(texts), "device": str(device),
              "rows": [], "prompt_texts": texts}
    reference = None
    json_path = Path(args.json) if args.json else None
    ref_cache = json_path.with_suffix(".fp32-features.pt") if json_path else None
    if args.resume and json_path.is_file():
        done = json.loads(json_path.read_text())
        if done.get("prompt_texts") == texts and done.get("size") == args.size and ref_cache.is_file():
            result["rows"], result["params_b"] = done["rows"], done.get("params_b")
            result["seconds_before"] = done.get("seconds", 0) + done.get("seconds_before", 0)
            reference = torch.load(ref_cache, weights_only=True)
            reference = (reference["features"], reference["cam"])
            print(f"[quality] resuming: {len(result['rows'])} rows from {json_path}", file=sys.stderr, flush=True)
    key = lambda row: (row["format"], row["dtype"], row["emulate"])  # noqa: E731
    finished = {key(row) for row in result["rows"]}
    for row in plan:
        if key(row) in finished:
            continue
        path = rankgen_folder(args.size) if row["source"] == "bin" else converted_file(args.size, row["source"])
        began = time.perf_counter()
        print(f"[quality] {row['format']} computing in {row['dtype']}{' (bf16 emulated)' if row['emulate'] else ''}",
              file=sys.stderr, flush=True)
        llm = load_llm(path, tokenizer_path=tokenizer, dtype=row["dtype"], device=device)
        result.setdefault("params_b", sum(p.numel() for p in llm.model.parameters()) / 1e9)
        if row["emulate"]:
            emulate_bf16(llm.model)
        got = measure(llm, texts, reference, cam, clips, args.batch)
        del llm
        gc.collect()
        if reference is None:
            feats = got["features"]
            with torch.no_grad():
                ref_cam = torch.cat([cam(clips[i:i + 1], feats[i:i + 1]) for i in range(len(texts))])
            reference = (feats, ref_cam)
            if ref_cache:
                torch.save({"features": feats, "cam": ref_cam}, ref_cache)
            got = {"cos_mean": 1.0, "cos_min": 1.0, "token_cos_min": 1.0, "cam_max_abs_diff": 0.0, "cam_max_rel_diff": 0.0}
        computes = "bf16" if row["emulate"] else row["dtype"]
        result["rows"].append({**row, **got, "computes": computes, "seconds": time.perf_counter() - began})
        print(f"[quality] {row['format']} ({computes}{', emulated' if row['emulate'] else ''}): cosine mean "
              f"{got['cos_mean']:.6f}, min {got['cos_min']:.6f}, worst token {got['token_cos_min']:.5f}, CAM max diff "
              f"{got['cam_max_abs_diff']:.3g} ({got['cam_max_rel_diff']:.2%}) in {time.perf_counter() - began:.0f} s",
              file=sys.stderr, flush=True)
        result["seconds"] = time.perf_counter() - start
        common.write_json(args.json, result)  # a killed run keeps its rows (--resume)
    result["rows"].sort(key=lambda row: [key(r) for r in plan].index(key(row)) if key(row) in map(key, plan) else 99)
    result["seconds"] = time.perf_counter() - start + result.pop("seconds_before", 0)
    text = table(result)
    print(text)
    common.write_json(args.json, result)
    if args.readme:
        rewrite_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
