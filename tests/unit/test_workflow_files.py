"""The bundled workflows as files: the frontend's (UI) format with a consistent link table, one
folder the template browser lists, and a note in each naming every file it loads and where.

That the real frontend loads them, that every node exists in ComfyUI and that they run is
checked in tests/host/test_workflows.py and tests/host/test_browser_frontend.py."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from scripts import workflow_specs as specs

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "example_workflows"
SD15_NAMES = ["llm4gen_sd15_txt2img", "llm4gen_sd15_apply_conditioning", "llm4gen_sd15_controlnet_lora",
              "llm4gen_vs_sd15_dense_prompt"]
SDXL_NAME = "llm4gen_sdxl_txt2img"
NAMES = [*SD15_NAMES, SDXL_NAME]
FAMILY = {**{name: "sd15" for name in SD15_NAMES}, SDXL_NAME: "sdxl"}  # workflows/<family>/
FILES = {  # file name -> ComfyUI folder, as README-workflows.md documents them
    specs.UNET: "diffusion_models", specs.SD15: "checkpoints", specs.RANKGEN: "LLM",
    specs.PROJECTOR: "llm4gen", specs.CONTROLNET: "controlnet", specs.CONTROL_IMAGE: "input",
    specs.SDXL: "checkpoints", specs.SDXL_ADAPTER: "llm4gen",
}
REQUIRED = {  # the model files each workflow must load
    **{name: {specs.UNET, specs.SD15, specs.RANKGEN, specs.PROJECTOR} for name in SD15_NAMES},
    SDXL_NAME: {specs.SDXL, specs.RANKGEN, specs.SDXL_ADAPTER},
}
# ComfyUI lists custom-node templates from each of these folders of a pack (app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def load(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text(encoding="utf-8"))


def test_the_bundled_workflows_are_the_five_specified():
    assert sorted(p.stem for p in FOLDER.glob("*.json")) == sorted(NAMES)
    assert [make().name for make in specs.WORKFLOWS] == NAMES


def test_only_one_folder_is_listed_by_the_template_browser():
    """ComfyUI lists *.json from every one of these folders of a pack (one level deep), so a
    copy directly in workflows/ would show every template twice."""
    listed = [folder for folder in TEMPLATE_FOLDERS if list((REPO / folder).glob("*.json"))]
    assert listed == ["example_workflows"]


def test_workflows_folder_holds_the_same_files():
    """workflows/<family>/ (sd15, sdxl) is the repository's workflow folder: the same files,
    byte for byte, each in its model family's subfolder."""
    copies = {p.name: p.read_bytes() for p in (REPO / "workflows").glob("*/*.json")}
    assert copies == {p.name: p.read_bytes() for p in FOLDER.glob("*.json")}
    for name, family in FAMILY.items():
        assert (REPO / "workflows" / family / f"{name}.json").is_file()
    assert [make().family for make in specs.WORKFLOWS] == [FAMILY[name] for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_ui_format_and_link_table(name):
    wf = load(name)
    assert {"id", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"} <= set(wf)
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "node ids are unique"
    assert wf["last_node_id"] >= max(nodes)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for node in wf["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} <= set(node)
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed"
    seen = set()
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        assert link_id not in seen
        seen.add(link_id)
        out = nodes[origin]["outputs"][origin_slot]
        into = nodes[target]["inputs"][target_slot]
        assert link_id in out["links"], f"link {link_id} missing from node {origin}'s output"
        assert into["link"] == link_id, f"link {link_id} missing from node {target}'s input"
        assert out["type"] == kind and into["type"] in (kind, "*"), f"link {link_id}: {out['type']} -> {into['type']}"
    for node in wf["nodes"]:  # every link a node names is in the table
        for entry in node.get("inputs", []):
            assert entry.get("link") is None or entry["link"] in seen
        for entry in node.get("outputs", []):
            assert set(entry.get("links") or []) <= seen


@pytest.mark.parametrize("name", NAMES)
def test_the_note_says_which_file_goes_where(name):
    wf = load(name)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    values = [v for n in wf["nodes"] if n["type"] != "MarkdownNote" for v in n.get("widgets_values") or []
              if isinstance(v, str)]
    used = [v for v in values if v in FILES]
    assert REQUIRED[name] <= set(used)
    for file_name in used:
        folder = FILES[file_name]
        assert f"{folder}/{file_name}" in text, f"the note does not say where {file_name} goes"
    if any(n["type"] == "LoraLoader" for n in wf["nodes"]):
        assert "loras/" in text


@pytest.mark.parametrize("name", SD15_NAMES)
def test_release_settings(name):
    """50 steps, CFG 7.5, 512x512, a fixed seed, and the negative prompt through the same
    LLM + Cross-Adapter path as the positive (both samplers' conditioning comes from fusing nodes)."""
    wf = load(name)
    samplers = [n for n in wf["nodes"] if n["type"] == "KSampler"]
    for sampler in samplers:
        seed, control, steps, cfg = sampler["widgets_values"][:4]
        assert (control, steps, cfg) == ("fixed", 50, 7.5)
    (latent,) = [n for n in wf["nodes"] if n["type"] == "EmptyLatentImage"]
    assert latent["widgets_values"] == [512, 512, 1]
    fusing = {n["id"] for n in wf["nodes"] if n["type"].startswith("LLM4GEN") and "Encode" not in n["type"]
              and "Load" not in n["type"]}
    assert len(fusing) == 2, "one fusing node for the positive, one for the negative"


def test_sdxl_settings_and_stock_sdxl_path():
    """SDXL base from one checkpoint, CLIP Text Encode (SDXL) at 1024 for both prompts, each
    fused by Apply LLM4GEN Conditioning with the SDXL adapter; 1024x1024, 30 steps, CFG 7."""
    wf = load(SDXL_NAME)
    nodes = {n["id"]: n for n in wf["nodes"]}
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    (ckpt,) = by_type["CheckpointLoaderSimple"]
    assert ckpt["widgets_values"] == [specs.SDXL]
    (adapter,) = by_type["LLM4GENLoadCrossAdapter"]
    assert adapter["widgets_values"] == [specs.SDXL_ADAPTER]
    assert "UNETLoader" not in by_type and "CLIPTextEncode" not in by_type
    (sampler,) = by_type["KSampler"]
    assert sampler["widgets_values"][1:] == ["fixed", 30, 7.0, "dpmpp_2m", "karras", 1.0]
    (latent,) = by_type["EmptyLatentImage"]
    assert latent["widgets_values"] == [1024, 1024, 1]
    encoders = by_type["CLIPTextEncodeSDXL"]
    assert len(encoders) == 2
    for encoder in encoders:  # width, height, crop_w, crop_h, target_width, target_height, text_g, text_l
        assert encoder["widgets_values"][:6] == [1024, 1024, 0, 0, 1024, 1024]
    links = {link[0]: link for link in wf["links"]}

    def source(node, input_name):
        (entry,) = [i for i in node["inputs"] if i["name"] == input_name]
        return nodes[links[entry["link"]][1]]

    fusing = by_type["LLM4GENApplyConditioning"]
    assert len(fusing) == 2
    assert {source(sampler, side)["id"] for side in ("positive", "negative")} == {n["id"] for n in fusing}
    for fuse in fusing:
        assert source(fuse, "conditioning")["type"] == "CLIPTextEncodeSDXL"
        assert source(fuse, "adapter") is adapter
        assert source(source(fuse, "conditioning"), "clip") is ckpt
    assert source(sampler, "model") is ckpt


def test_the_sdxl_notes_training_command_is_one_the_trainer_accepts():
    """The note tells how to train the adapter the workflow loads; that command line parses with
    the trainer's own options (placeholders filled in)."""
    from llm4gen_core.train.cli import parser

    (note,) = [n for n in load(SDXL_NAME)["nodes"] if n["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    (command,) = re.findall(r"```\n(python -m llm4gen_core\.train [^`\n]+)\n```", text)
    argv = shlex.split(command.replace("<sdxl diffusers folder>", "sdxl-base/"))[3:]
    args = parser().parse_args(argv)
    assert args.base == "sdxl-base/" and args.train == "cam" and args.resolution == 1024
    assert f"llm4gen/{specs.SDXL_ADAPTER}" in text and "adapter.safetensors" in text


def test_file_names_are_the_documented_ones():
    readme = (REPO / "README-workflows.md").read_text(encoding="utf-8")
    for file_name, folder in FILES.items():
        where = "input" if folder == "input" else f"models/{folder}"
        assert f"{where}/{file_name}" in readme, f"README-workflows.md does not give {where}/{file_name}"
