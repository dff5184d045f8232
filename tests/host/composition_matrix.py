"""Which stock ComfyUI nodes are verified to compose with LLM4GEN conditioning.

The composition tests (tests/host/test_compose_*.py) call ``verified(request, node, placement,
what, model)`` after their assertions passed, so a row exists only for a test that got that far
(``model``: SD1.5, the default, or SDXL, test_compose_sdxl.py). Each
call rewrites ``test-artifacts/composition-matrix.json`` and ``.md`` (the table of this run).
README.md's section between ``<!-- composition-table:start -->`` and
``<!-- composition-table:end -->`` is generated from that artefact, never written by hand:

    .venv/bin/python -m pytest tests/host -k compose              # runs the tests, writes the artefact
    .venv/bin/python tests/host/composition_matrix.py --readme    # rewrites README's section

``--readme`` refuses an artefact that lacks a row of ``EXPECTED`` (a partial or failed run),
so the README never claims less, or more, than a full passing run showed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "test-artifacts" / "composition-matrix.json"
README = REPO / "README.md"
START, END = "<!-- composition-table:start -->", "<!-- composition-table:end -->"

BEFORE, AFTER, MODEL, TEXT, SAMPLING = (
    "before Apply", "after Apply", "model / CLIP patch", "in the CLIP prompt", "sampling")
SD15, SDXL = "SD1.5", "SDXL"
CONTROLNET = "ControlNetLoader + ControlNetApplyAdvanced"

# Every (model, node, placement) a full run of the composition tests verifies, in table order.
EXPECTED = [
    (SD15, CONTROLNET, BEFORE), (SD15, CONTROLNET, AFTER),
    (SD15, "LoraLoader", MODEL),
    (SD15, "LoraLoaderModelOnly", MODEL),
    (SD15, "ConditioningCombine", BEFORE), (SD15, "ConditioningCombine", AFTER),
    (SD15, "ConditioningSetArea", BEFORE), (SD15, "ConditioningSetArea", AFTER),
    (SD15, "ConditioningSetMask", BEFORE), (SD15, "ConditioningSetMask", AFTER),
    (SD15, "ConditioningSetTimestepRange", BEFORE), (SD15, "ConditioningSetTimestepRange", AFTER),
    (SD15, "ConditioningConcat", BEFORE), (SD15, "ConditioningConcat", AFTER),
    (SD15, "ConditioningAverage", BEFORE), (SD15, "ConditioningAverage", AFTER),
    (SD15, "CLIPTextEncode: prompt weights `(word:1.3)`", TEXT),
    (SD15, "CLIPTextEncode: textual inversion `embedding:name`", TEXT),
    (SD15, "CLIPTextEncode: prompts over 77 CLIP tokens", TEXT),
    (SD15, "EmptyLatentImage batch 4 + KSampler", SAMPLING),
    (SDXL, "CLIPTextEncodeSDXL", BEFORE),
    (SDXL, CONTROLNET, BEFORE), (SDXL, CONTROLNET, AFTER),
    (SDXL, "LoraLoader", MODEL),
    (SDXL, "ConditioningCombine", BEFORE), (SDXL, "ConditioningCombine", AFTER),
    (SDXL, "ConditioningSetArea", BEFORE), (SDXL, "ConditioningSetArea", AFTER),
    (SDXL, "EmptyLatentImage batch 2 + KSampler", SAMPLING),
]

_rows: dict[tuple[str, str, str], dict] = {}


def verified(request, node: str, placement: str, what: str, model: str = SD15) -> None:
    """Record that ``node`` composes at ``placement`` on ``model``; call it after the test's assertions."""
    if (model, node, placement) not in EXPECTED:
        raise KeyError(f"({model!r}, {node!r}, {placement!r}) is not in composition_matrix.EXPECTED")
    _rows[(model, node, placement)] = {"model": model, "node": node, "placement": placement, "verified": what,
                                       "test": request.node.nodeid}
    write_artifact(ARTIFACT)


def _key(row: dict) -> tuple[str, str, str]:
    return row.get("model", SD15), row["node"], row["placement"]  # artefacts from before SDXL: SD1.5


def comfyui_version() -> str:
    try:
        from scripts.comfyui_host import comfyui_root

        text = (comfyui_root() / "comfyui_version.py").read_text()
        return text.split("__version__ =", 1)[1].strip().strip("\"'")
    except Exception:
        return "unknown"


def write_artifact(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [_rows[key] for key in EXPECTED if key in _rows]
    data = {"comfyui": comfyui_version(), "rows": rows}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    path.with_suffix(".md").write_text(markdown(data) + "\n")


def missing(data: dict) -> list[tuple[str, str, str]]:
    have = {_key(r) for r in data["rows"]}
    return [key for key in EXPECTED if key not in have]


def markdown(data: dict) -> str:
    """The table: one row per verified (model, node, placement), in EXPECTED's order."""
    order = {key: i for i, key in enumerate(EXPECTED)}
    rows = sorted(data["rows"], key=lambda r: order.get(_key(r), len(order)))
    lines = [f"Verified in a real ComfyUI {data['comfyui']} by the host tests named in the last column "
             "(random-weight models: SD1.5, and a tiny SDXL-architecture model that ComfyUI detects as SDXL; "
             "the tests assert what the UNet and ControlNet received).",
             "",
             "| Model | Stock node | Where | What the test asserts | Test |",
             "|---|---|---|---|---|"]
    for r in rows:
        test = r["test"].split("::", 1)
        model, node, placement = _key(r)
        lines.append(f"| {model} | {node} | {placement} | {r['verified']} | "
                     f"`{Path(test[0]).name}::{test[1] if len(test) > 1 else ''}` |")
    return "\n".join(lines)


def rewrite_section(text: str, table: str) -> str:
    """``text`` with everything between the markers replaced by ``table``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README needs exactly one {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=ARTIFACT)
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's marked section")
    parser.add_argument("--allow-partial", action="store_true", help="accept an artefact with rows missing")
    args = parser.parse_args(argv)
    if not args.artifact.exists():
        print(f"{args.artifact} not found: run the composition tests first "
              "(python -m pytest tests/host -k compose)", file=sys.stderr)
        return 2
    data = json.loads(args.artifact.read_text())
    absent = missing(data)
    if absent and not args.allow_partial:
        print("the artefact lacks rows (a partial or failing run):\n" +
              "\n".join(f"  {m}: {n} ({p})" for m, n, p in absent), file=sys.stderr)
        return 1
    table = markdown(data)
    if args.readme:
        README.write_text(rewrite_section(README.read_text(), table))
        print(f"rewrote the composition table in {README}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
