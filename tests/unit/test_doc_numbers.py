"""Every number README.md and README-safety.md give is one a test asserts.

``CLAIMS`` lists each phrase of the two documents that holds a number, and where it is checked:
a test whose source holds the number (the test must exist), or the value the tested code or test
uses (a constant read from the file, without importing it). ``test_every_number_is_claimed``
finds every number in the documents and fails on one that no claim covers, so a number added to
a document needs a test here; ``test_each_claim_holds`` fails when a document or a test changes
the number on one side only. The composition table in README.md is generated from the host tests
that it names (tests/host/composition_matrix.py) and is left out.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"(?<![\w.])(?<![A-Za-z]\.)\d+(?:[.,]\d+)*(?:x\d+)?(?!\w)|(?<=\.\.)\d+")
GENERATED = ("<!-- composition-table:start -->", "<!-- composition-table:end -->")


def doc_text(name: str) -> str:
    """The document with its whitespace collapsed (line wrapping is not content), less the
    generated composition table."""
    text = (REPO / name).read_text(encoding="utf-8")
    start, end = (text.find(marker) for marker in GENERATED)
    if start >= 0:
        text = text[:start] + text[end:]
    return " ".join(text.split())


def _module(path: str) -> ast.Module:
    return ast.parse((REPO / path).read_text(encoding="utf-8"))


def source(ref: str) -> str:
    """The source of ``path::function`` (the function must exist)."""
    path, name = ref.split("::")
    text = (REPO / path).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return ast.get_source_segment(text, node)
    raise AssertionError(f"{ref}: no such test")


def constant(path: str, name: str):
    """The value a module-level ``NAME = <expression of literals>`` in ``path`` gives NAME
    (tuple targets too), computed without importing the module."""
    for node in _module(path).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = [target] if isinstance(target, ast.Name) else getattr(target, "elts", [])
                for i, t in enumerate(names):
                    if isinstance(t, ast.Name) and t.id == name:
                        value = eval(compile(ast.Expression(node.value), path, "eval"), {"__builtins__": {}})
                        return value if isinstance(target, ast.Name) else value[i]
    raise AssertionError(f"{path}: no module-level {name}")


@dataclass
class Claim:
    doc: str
    phrase: str                            # as the document says it (whitespace collapsed)
    test: str | None = None                # path::test_function asserting it ...
    literals: tuple[str, ...] = ()         # ... whose source holds each of these
    holds: Callable[[], bool] | None = None  # or: the value the code / the test uses
    why: str = ""                          # for a phrase that is no claim about the pack


CLAIMS = [
    # ---- README.md -----------------------------------------------------------------------------
    Claim("README.md", "arxiv.org/abs/2407.00737) (AAAI 2025)", why="the paper's identifiers"),
    Claim("README.md", "the RankGen T5-XL encoder, 2048-d", "tests/unit/test_cam.py::test_release_shape_is_333_tokens",
          ("torch.randn(1, 256, 2048)",)),
    Claim("README.md", "(77 CLIP + 256 LLM = 333 tokens)", "tests/unit/test_cam.py::test_release_shape_is_333_tokens",
          ("output_tokens(77, 256) == 333",)),
    Claim("README.md", "with Python 3.11 and pip", holds=lambda: 'PY="${PYTHON:-python3.11}"'
          in (REPO / "scripts/bootstrap.sh").read_text()),
    Claim("README.md", "as shipped (512x512, 50 steps, CFG 7.5)", "tests/unit/test_workflow_files.py::test_release_settings",
          ('("fixed", 50, 7.5)', "[512, 512, 1]")),
    Claim("README.md", "random weights (128x128, 6 steps)",
          "tests/unit/test_runner_overrides.py::test_smoke_mode_runs_128_pixels_and_6_steps", ("(128, 6)",)),
    Claim("README.md", "the tests run on 0.3.75",
          holds=lambda: constant("scripts/comfyui_host.py", "HOST_VERSION") == "0.3.75"),
    Claim("README.md", "`v1-5-pruned-emaonly.safetensors`", why="a file name"),
    Claim("README.md", '`"pre "` prefix, 256 tokens, padding kept',
          "tests/unit/test_llm_t5.py::test_rankgen_bin_layout_matches_the_release", ("(len(PROMPTS), 256, 32)",)),
    Claim("README.md", "1.0 = release", "tests/host/test_llm4gen_nodes.py::test_object_info_lists_the_nodes_with_tooltips",
          ('["default"] == 1.0',)),
    Claim("README.md", "(the release's first 77 CLIP tokens, or all chunks of a long prompt)",
          "tests/host/test_compose_clip_path.py::test_long_prompts_warn_and_clip_tokens_chooses",
          ('seen["first 77 (release)"] == 333', "77 * chunks + 256")),
    Claim("README.md", "keep attending to the 77 CLIP tokens they were trained on while the UNet gets the 333 fused "
          "tokens; `fused`: both get 333)", "tests/host/test_compose_controlnet.py::test_controlnet_sees_clip_or_fused_tokens",
          ('{"clip": (333, 77), "fused": (333, 333)}',)),
    Claim("README.md", "CPU build of torch 2.13.0", holds=lambda: "torch==2.13.0" in (REPO / "scripts/bootstrap.sh").read_text()),
    Claim("README.md", "unpacks a real ComfyUI 0.3.75",
          holds=lambda: constant("scripts/comfyui_host.py", "HOST_VERSION") == "0.3.75"),
    Claim("README.md", "# [1, 256, 2048]", "tests/unit/test_cam.py::test_release_shape_is_333_tokens", ("(1, 256, 2048)",)),
    Claim("README.md", "# [1, 77, 768] + [1, 256, 2048] -> [1, 333, 768]",
          "tests/unit/test_cam.py::test_release_shape_is_333_tokens", ("(1, 77, 768)", "(1, 256, 2048)", "(1, 333, 768)")),
    Claim("README.md", "the head count from its metadata, else 8 (the release)",
          "tests/unit/test_checkpoint.py::test_release_projector_pth_loads_with_official_keys",
          ("adapter.config == RELEASE",), lambda: constant("llm4gen_core/checkpoint.py", "DEFAULT_HEADS") == 8),
    Claim("README.md", "`T5Tokenizer` of transformers 4.x", "tests/unit/test_t5_tokenizer_corpus.py::test_corpus_covers_the_edges",
          ('startswith("transformers 4.")',)),
    Claim("README.md", "ids that tokenizer gave for about 500 edge-case strings",
          "tests/unit/test_t5_tokenizer_corpus.py::test_corpus_covers_the_edges", ("450 <= len(cases) <= 550",)),
    Claim("README.md", "a seeded fuzz of 400+ hostile CAM and LLM files",
          "tests/unit/test_untrusted_files.py::test_the_fuzz_covers_both_loaders_with_enough_cases",
          ("len(generated) > 400",)),
    Claim("README.md", "a 135-prompt soak", "tests/host/test_soak.py::test_server_soak", ("len(run.prompts) == 135",)),
    Claim("README.md", "vs one UNet step at 512x512",
          holds=lambda: "(64 if quick else 512)" in (REPO / "benchmarks/bench_host.py").read_text()),
    Claim("README.md", "the 333-token fused context vs the stock 77 tokens",
          "tests/host/test_benchmarks_smoke.py::test_run_all_quick_prints_every_row", ("for row in ROWS",),
          lambda: "UNet call (KSampler step, B=2) 333 vs 77 ctx" in constant("tests/host/test_benchmarks_smoke.py", "ROWS")),
    Claim("README.md", "GPL-3.0 (see `LICENSE`): the pack runs inside ComfyUI (GPL-3.0)",
          holds=lambda: "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()
          and "Version 3" in (REPO / "LICENSE").read_text()),
    # ---- README-safety.md ----------------------------------------------------------------------
    Claim("README-safety.md", "JSON nested 100,000 deep",
          "tests/unit/test_llm_errors.py::test_config_json_nested_100000_deep_is_a_clear_error", ('"[" * 100_000',)),
    Claim("README-safety.md", "(stride 0: a few bytes on disk",
          "tests/unit/test_untrusted_files.py::test_giant_declared_sizes_are_refused_before_allocation",
          ("GIANT_CLAIMS",), lambda: "cam/zip/stride-0-bomb" in constant("tests/unit/test_untrusted_files.py", "GIANT_CLAIMS")),
    Claim("README-safety.md", "beyond twice the stored bytes (plus 1 MiB)",
          "tests/unit/test_checkpoint.py::test_tensors_aliasing_beyond_twice_the_stored_bytes_are_refused",
          ("MAX_ALIASING == 2",), lambda: "(1 << 20)" in (REPO / "llm4gen_core/safe_files.py").read_text()),
    Claim("README-safety.md", "`extra_ids` outside 0..1000",
          "tests/unit/test_llm_tokenization.py::test_extra_ids_from_0_to_1000_are_accepted", ("0 <= extra_ids <= 1000",)),
    Claim("README-safety.md", "blocks not numbered 0..n-1",
          "tests/unit/test_checkpoint.py::test_malformed_file_gives_clear_error", ("MALFORMED[name](path)",),
          lambda: '"block-gap"' in source("tests/unit/test_checkpoint.py::_malformed_cases")),
    Claim("README-safety.md", "tolerates `(word:1.3`",
          "tests/host/test_safety_nodes.py::test_prompt_weight_errors_and_odd_text_encode_and_fuse", ("SYNTAX_TEXTS",),
          lambda: "(word:1.3" in constant("tests/host/test_safety_nodes.py", "SYNTAX_TEXTS")
          and "(word:1.3" in constant("tests/unit/test_text_inputs.py", "TEXTS").values()),
    Claim("README-safety.md", "A 100,000-character prompt is no problem: LLM Encode tokenizes it whole (to report its "
          "length) and keeps 256 tokens; CLIP+LLM Cross-Adapter in its release mode encodes only CLIP's first 77-token "
          "chunk", "tests/host/test_safety_nodes.py::test_100k_character_prompt_takes_seconds_not_minutes",
          ("embeds.hidden_states.shape[:2] == (1, 256)", "context.shape == (1, 333, 768)"),
          lambda: len(constant("tests/host/test_safety_nodes.py", "LONG_TEXT")) >= 100_000),
    Claim("README-safety.md", "own server with 135 queued prompts", "tests/host/test_soak.py::test_server_soak",
          ("len(run.prompts) == 135",)),
    Claim("README-safety.md", "then 8 distinct Cross-Adapters and 4 distinct LLMs", "tests/host/test_soak.py::test_server_soak",
          ("per_adapter", "per_llm"), lambda: (constant("tests/host/test_soak.py", "N_ADAPTERS"),
                                               constant("tests/host/test_soak.py", "N_LLMS")) == (8, 4)),
    Claim("README-safety.md", "within 192 MiB of what it was after warm-up", "tests/host/test_soak.py::test_server_soak",
          ('report["rss"] <= warm["rss"] + RSS_BOUND',),
          lambda: constant("tests/host/test_soak.py", "RSS_BOUND") == 192 * 2**20),
    Claim("README-safety.md", "more than 400 generated files", "tests/unit/test_untrusted_files.py::"
          "test_the_fuzz_covers_both_loaders_with_enough_cases", ("len(generated) > 400",)),
    Claim("README-safety.md", "more than 300 of them always unusable",
          "tests/unit/test_untrusted_files.py::test_the_fuzz_covers_both_loaders_with_enough_cases",
          ("sum(must_fail.values()) > 300",)),
    Claim("README-safety.md", "capped at its imports + 1 GiB and 60 s per case",
          holds=lambda: (constant("tests/unit/test_untrusted_files.py", "CASE_TIMEOUT") == 60
                         and "HEADROOM = GiB" in (REPO / "tests/unit/test_untrusted_files.py").read_text()
                         and constant("tests/synthetic/isolated.py", "GiB") == 2**30)),
    # SDXL (our design)
    Claim("README.md", "CLIP-L (768) and OpenCLIP bigG (1280) side by side",
          "tests/host/test_sdxl_nodes.py::test_widths_that_do_not_fit_are_one_clear_error",
          ("CLIP-L 768 + OpenCLIP bigG 1280",)),
    Claim("README.md", "`[B, 77, 2048]`. The Cross-Adapter",
          "tests/host/test_sdxl_nodes.py::test_unet_gets_the_fused_2048_wide_context_and_the_stock_y", ("[2, 77, 2048]",)),
    Claim("README.md", "`[B, 77, 2048] + [B, 256, D_llm] -> [B, 333, 2048]`",
          "tests/unit/test_cam.py::test_sdxl_width_context_with_heads_from_the_file",
          ("torch.randn(1, 77, 2048", "torch.randn(1, 256, 2048", "(1, 333, 2048)")),
    Claim("README.md", "an SDXL adapter has CLIP width 2048",
          "tests/host/test_sdxl_nodes.py::test_widths_that_do_not_fit_are_one_clear_error", ("(CLIP width 2048)",)),
    Claim("README.md", "else 8 (256-wide heads)", "tests/unit/test_cam.py::test_sdxl_width_context_with_heads_from_the_file",
          ("8 heads of 256", "gets the release's 8")),
    Claim("README.md", "bigG's `pooled_output` (1280)",
          "tests/host/test_sdxl_nodes.py::test_unet_gets_the_fused_2048_wide_context_and_the_stock_y",
          ('shape == (1, 1280)',)),
    Claim("README.md", "(`clip`: 77 CLIP tokens of 2048 for the ControlNet)",
          "tests/host/test_sdxl_nodes.py::test_unet_gets_the_fused_2048_wide_context_and_the_stock_y",
          ('["cross_attn_controlnet"].shape == (1, 77, 2048)',)),
    Claim("README.md", "an SD1.5 adapter (768) on SDXL's CLIP (2048)",
          "tests/host/test_sdxl_nodes.py::test_widths_that_do_not_fit_are_one_clear_error",
          ("fuses CLIP tokens 768 wide", "CLIP tokens 2048 wide")),
    Claim("README.md", "(bigG alone, 1280)",
          "tests/host/test_sdxl_nodes.py::test_widths_that_do_not_fit_are_one_clear_error", ("bigG alone, 1280 wide",)),
    Claim("README.md", "the UNet receives `[2, 333, 2048]` equal to",
          "tests/host/test_sdxl_nodes.py::test_unet_gets_the_fused_2048_wide_context_and_the_stock_y",
          ('["context_shape"] == [2, 333, 2048]',)),
    Claim("README-safety.md", "cast in 4 MiB chunks",
          holds=lambda: constant("llm4gen_core/weight_stream.py", "CHUNK_BYTES") == 4 << 20),
    Claim("README-safety.md", "less than 256 MiB of peak memory growth",
          "tests/unit/test_untrusted_files.py::test_declared_sizes_are_never_allocated", ("PEAK_RSS_BOUND",),
          lambda: constant("tests/unit/test_untrusted_files.py", "PEAK_RSS_BOUND") == 256 * 2**20),
]
# Numbers given in words, found by reading (the scan below finds digits only).
WORDED = [
    Claim("README.md", "The five bundled workflows",
          "tests/unit/test_workflow_files.py::test_the_bundled_workflows_are_the_five_specified", ("sorted(NAMES)",),
          lambda: len(constant("tests/unit/test_workflow_files.py", "SD15_NAMES")) + 1 == 5),
    Claim("README.md", "four for SD1.5, one for SDXL",
          "tests/unit/test_workflow_files.py::test_workflows_folder_holds_the_same_files", ("FAMILY",),
          lambda: len(constant("tests/unit/test_workflow_files.py", "SD15_NAMES")) == 4),
    Claim("README-safety.md", "byte-for-byte the same after every node (tested for all five)",
          holds=lambda: all(source(f"tests/host/test_safety_nodes.py::{t}") for t in (
              "test_loaders_leave_their_inputs_and_files_unchanged", "test_llm_encode_leaves_the_llm_unchanged",
              "test_apply_never_mutates_conditioning_adapter_or_embeds",
              "test_clip_llm_cross_adapter_never_mutates_its_inputs"))),
    Claim("README-safety.md", "At most one Cross-Adapter and one LLM are alive while each runs",
          "tests/host/test_soak.py::test_server_soak",
          ('report["counts"]["CrossAdapter"] <= 1', 'report["counts"]["T5EncoderModel"] <= 1')),
]


@pytest.mark.parametrize("claim", CLAIMS + WORDED, ids=lambda c: f"{c.doc}: {c.phrase[:50]}")
def test_each_claim_holds(claim):
    assert claim.phrase in doc_text(claim.doc), f"{claim.doc} no longer says {claim.phrase!r}: update CLAIMS"
    if claim.why:
        return
    assert claim.test or claim.holds, "a claim names a test, a value, or why it is no claim"
    if claim.test:
        text = source(claim.test)
        missing = [literal for literal in claim.literals if literal not in text]
        assert not missing, f"{claim.test} no longer holds {missing}"
    if claim.holds:
        assert claim.holds(), f"the value behind {claim.phrase!r} changed"


@pytest.mark.parametrize("doc", ["README.md", "README-safety.md"])
def test_every_number_is_claimed(doc):
    text = doc_text(doc)
    spans = [(m.start(), m.start() + len(c.phrase)) for c in CLAIMS if c.doc == doc
             for m in re.finditer(re.escape(c.phrase), text)]
    loose = [(m.group(), text[max(0, m.start() - 40): m.end() + 20]) for m in NUMBER.finditer(text)
             if not any(a <= m.start() and m.end() <= b for a, b in spans)]
    assert not loose, "numbers no test asserts (add a Claim, or stop giving the number):\n" + "\n".join(
        f"  {number!r} in ...{context}..." for number, context in loose)
