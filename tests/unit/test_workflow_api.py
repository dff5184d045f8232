"""The UI -> API conversion rules (scripts/workflow_api.py) on small graphs, one rule per test.

Node definitions below are written in the shape ComfyUI's /object_info gives them. That the
conversion agrees with the real frontend's own ``graphToPrompt`` on the bundled workflows is
checked in tests/host/test_browser_frontend.py; that the result runs, in tests/host."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import workflow_api as wa

REPO = Path(__file__).resolve().parents[2]

OBJECT_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP"], "display_name": "Load"},
    "Sampler": {"input": {"required": {
        "model": ["MODEL", {}], "seed": ["INT", {"control_after_generate": True}], "steps": ["INT", {}],
        "sampler_name": ["COMBO", {"options": ["euler", "ddim"]}], "text": ["STRING", {"multiline": True}],
        "count": ["INT", {"forceInput": True}]},
        "optional": {"denoise": ["FLOAT", {}]}},
        "input_order": {"required": ["model", "seed", "steps", "sampler_name", "text", "count"], "optional": ["denoise"]},
        "output": ["LATENT"], "display_name": "Sampler"},
    "LegacySeed": {"input": {"required": {"noise_seed": ["INT", {}], "model": ["MODEL", {}]}}, "output": ["MODEL"]},
    "Image": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}, "output": ["IMAGE"]},
    "Text": {"input": {"required": {"value": ["STRING", {"multiline": True}]}}, "output": ["STRING"]},
    "Number": {"input": {"required": {"value": ["INT", {}]}}, "output": ["INT"]},
    "Pass": {"input": {"required": {"model": ["MODEL", {}], "strength": ["FLOAT", {}]}}, "output": ["MODEL"]},
}


def node(id, type, inputs=(), outputs=(), widgets=None, mode=0, title=None):
    n = {"id": id, "type": type, "mode": mode, "inputs": [dict(i) for i in inputs],
         "outputs": [dict(o) for o in outputs], "pos": [0, 0], "size": [100, 100]}
    if widgets is not None:
        n["widgets_values"] = widgets
    if title:
        n["title"] = title
    return n


def graph(nodes, links):
    return {"nodes": nodes, "links": links, "version": 0.4}


def sampler(id=2, model_link=1, text_link=None, count_link=None, widgets=(7, "fixed", 20, "euler", "hi", 1.0)):
    return node(id, "Sampler", [
        {"name": "model", "type": "MODEL", "link": model_link},
        {"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}},
        {"name": "text", "type": "STRING", "link": text_link, "widget": {"name": "text"}},
        {"name": "count", "type": "INT", "link": count_link},
    ], [{"name": "LATENT", "type": "LATENT", "links": []}], list(widgets))


def test_widget_values_follow_the_input_order_with_the_seed_control_skipped():
    wf = graph([node(1, "Loader", [], [{"type": "MODEL", "links": [1]}, {"type": "CLIP", "links": []}], ["b.safetensors"]),
                sampler()], [[1, 1, 0, 2, 0, "MODEL"]])
    prompt = wa.ui_to_api(wf, OBJECT_INFO)
    assert prompt["1"] == {"class_type": "Loader", "inputs": {"ckpt_name": "b.safetensors"}, "_meta": {"title": "Load"}}
    assert prompt["2"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 20, "sampler_name": "euler",
                                     "text": "hi", "denoise": 1.0}


def test_seed_and_noise_seed_get_a_control_value_even_without_the_flag():
    assert wa.widget_layout(OBJECT_INFO["LegacySeed"]) == ["noise_seed", None]
    assert wa.widget_layout(OBJECT_INFO["Sampler"]) == ["seed", None, "steps", "sampler_name", "text", "denoise"]


def test_upload_combos_carry_the_upload_button_value():
    wf = graph([node(1, "Image", [], [{"type": "IMAGE", "links": []}], ["x.png", "image"])], [])
    assert wa.ui_to_api(wf, OBJECT_INFO)["1"]["inputs"] == {"image": "x.png"}


def test_a_linked_widget_takes_the_link_not_its_stale_value():
    text = node(3, "Text", [], [{"type": "STRING", "links": [2]}], ["from the text node"])
    count = node(4, "Number", [], [{"type": "INT", "links": [3]}], [5])
    loader = node(1, "Loader", [], [{"type": "MODEL", "links": [1]}], ["a.safetensors"])
    wf = graph([loader, sampler(text_link=2, count_link=3), text, count],
               [[1, 1, 0, 2, 0, "MODEL"], [2, 3, 0, 2, 2, "STRING"], [3, 4, 0, 2, 3, "INT"]])
    inputs = wa.ui_to_api(wf, OBJECT_INFO)["2"]["inputs"]
    assert inputs["text"] == ["3", 0] and inputs["count"] == ["4", 0]


def test_notes_and_reroutes_are_not_sent_and_links_pass_through_reroutes():
    loader = node(1, "Loader", [], [{"type": "MODEL", "links": [1]}], ["a.safetensors"])
    reroute = node(5, "Reroute", [{"name": "", "type": "*", "link": 1}], [{"type": "MODEL", "links": [2]}])
    note = node(6, "MarkdownNote", widgets=["# hello"])
    wf = graph([loader, reroute, note, sampler(model_link=2)], [[1, 1, 0, 5, 0, "MODEL"], [2, 5, 0, 2, 0, "MODEL"]])
    prompt = wa.ui_to_api(wf, OBJECT_INFO)
    assert set(prompt) == {"1", "2"}
    assert prompt["2"]["inputs"]["model"] == ["1", 0]


def test_bypassed_nodes_pass_their_input_through_and_muted_nodes_are_dropped():
    loader = node(1, "Loader", [], [{"type": "MODEL", "links": [1]}], ["a.safetensors"])
    bypassed = node(7, "Pass", [{"name": "model", "type": "MODEL", "link": 1}], [{"type": "MODEL", "links": [2]}], [0.5], mode=4)
    muted = node(8, "Number", [], [{"type": "INT", "links": [3]}], [3], mode=2)
    wf = graph([loader, bypassed, muted, sampler(model_link=2, count_link=3)],
               [[1, 1, 0, 7, 0, "MODEL"], [2, 7, 0, 2, 0, "MODEL"], [3, 8, 0, 2, 3, "INT"]])
    prompt = wa.ui_to_api(wf, OBJECT_INFO)
    assert set(prompt) == {"1", "2"}
    assert prompt["2"]["inputs"]["model"] == ["1", 0]
    assert "count" not in prompt["2"]["inputs"]


def definitions_from(workflow: dict) -> dict:
    """Node definitions shaped like /object_info, read back from a saved workflow's own input
    slots (widgets where the frontend marked one; an upload button flags the combo before it):
    enough for the conversion, without a ComfyUI."""
    info = {}
    for n in workflow["nodes"]:
        if n["type"] in wa.FRONTEND_ONLY:
            continue
        required = {}
        for entry in n.get("inputs") or []:
            if entry["type"] == "IMAGEUPLOAD":
                list(required.values())[-1][1]["image_upload"] = True
            elif "widget" in entry:
                required[entry["name"]] = [entry["type"], {}]
            else:
                required[entry["name"]] = [entry["type"], {"forceInput": True}]
        info[n["type"]] = {"input": {"required": required}, "input_order": {"required": list(required)},
                           "output": [o["type"] for o in n.get("outputs") or []]}
    return info


def test_bypassing_apply_controlnet_in_the_bundled_workflow_keeps_positive_and_negative_apart():
    """Bypass "Apply ControlNet" in the bundled ControlNet workflow: its negative output (slot 1)
    must hand on its negative input (slot 1), as the frontend does, not the first CONDITIONING
    input (the positive prompt)."""
    wf = json.loads((REPO / "workflows" / "sd15" / "llm4gen_sd15_controlnet_lora.json").read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    apply_cn = nodes[12]
    assert apply_cn["type"] == "ControlNetApplyAdvanced"
    assert [i["name"] for i in apply_cn["inputs"][:2]] == ["positive", "negative"]
    sampler_inputs = {i["name"]: i["link"] for i in nodes[22]["inputs"]}
    links = {link[0]: link for link in wf["links"]}
    assert links[sampler_inputs["negative"]][1:3] == [12, 1], "the sampler's negative comes from ControlNet's output 1"
    positive_in, negative_in = (links[apply_cn["inputs"][k]["link"]][1] for k in (0, 1))

    apply_cn["mode"] = wa.MODE_BYPASSED
    prompt = wa.ui_to_api(wf, definitions_from(wf))
    assert "12" not in prompt
    assert prompt["22"]["inputs"]["positive"] == [str(positive_in), 0]
    assert prompt["22"]["inputs"]["negative"] == [str(negative_in), 0]
    assert positive_in != negative_in


def test_a_bypassed_output_takes_the_input_at_its_slot_else_the_first_of_the_wanted_type():
    info = {**OBJECT_INFO,
            "Pair": {"input": {"required": {"a": ["MODEL", {}], "b": ["MODEL", {}], "c": ["LATENT", {}]}},
                     "output": ["MODEL", "MODEL", "LATENT"]},
            "Swap": {"input": {"required": {"x": ["LATENT", {}], "m": ["MODEL", {}]}}, "output": ["MODEL"]}}
    loaders = [node(i, "Loader", [], [{"type": "MODEL", "links": [i]}], ["a.safetensors"]) for i in (1, 3, 4)]
    pair = node(5, "Pair", [{"name": "a", "type": "MODEL", "link": 1}, {"name": "b", "type": "MODEL", "link": 3},
                            {"name": "c", "type": "LATENT", "link": None}],
                [{"type": "MODEL", "links": [10]}, {"type": "MODEL", "links": [11]}, {"type": "LATENT", "links": []}],
                [], mode=4)
    swap = node(6, "Swap", [{"name": "x", "type": "LATENT", "link": None}, {"name": "m", "type": "MODEL", "link": 4}],
                [{"type": "MODEL", "links": [12]}], [], mode=4)
    wf = graph([*loaders, pair, swap, sampler(id=7, model_link=10), sampler(id=8, model_link=11),
                sampler(id=9, model_link=12)],
               [[1, 1, 0, 5, 0, "MODEL"], [3, 3, 0, 5, 1, "MODEL"], [4, 4, 0, 6, 1, "MODEL"],
                [10, 5, 0, 7, 0, "MODEL"], [11, 5, 1, 8, 0, "MODEL"], [12, 6, 0, 9, 0, "MODEL"]])
    prompt = wa.ui_to_api(wf, info)
    assert prompt["7"]["inputs"]["model"] == ["1", 0]  # output 0 -> input 0
    assert prompt["8"]["inputs"]["model"] == ["3", 0]  # output 1 -> input 1, not the first MODEL
    assert prompt["9"]["inputs"]["model"] == ["4", 0]  # input 0 is a LATENT: the first MODEL input


def test_connection_types_match_as_litegraph_matches_them():
    assert wa.types_match("IMAGE", "image") and wa.types_match("*", "MODEL") and wa.types_match("", "X")
    assert wa.types_match("INT,FLOAT", "FLOAT") and not wa.types_match("MODEL", "CLIP")


def test_a_legacy_primitive_node_leaves_the_widget_value():
    primitive = node(9, "PrimitiveNode", [], [{"type": "STRING", "links": [4]}], ["ignored", "fixed"])
    loader = node(1, "Loader", [], [{"type": "MODEL", "links": [1]}], ["a.safetensors"])
    wf = graph([loader, primitive, sampler(text_link=4)], [[1, 1, 0, 2, 0, "MODEL"], [4, 9, 0, 2, 2, "STRING"]])
    assert wa.ui_to_api(wf, OBJECT_INFO)["2"]["inputs"]["text"] == "hi"


def test_unknown_node_types_and_wrong_widget_counts_are_clear_errors():
    wf = graph([node(1, "NoSuchNode", widgets=[])], [])
    with pytest.raises(wa.WorkflowError, match="no node type.*NoSuchNode"):
        wa.ui_to_api(wf, OBJECT_INFO)
    wf = graph([node(1, "Loader", [], [], ["a.safetensors", "extra"])], [])
    with pytest.raises(wa.WorkflowError, match="2 widget values but .* has 1"):
        wa.ui_to_api(wf, OBJECT_INFO)
    with pytest.raises(wa.WorkflowError, match="subgraphs"):
        wa.ui_to_api({"nodes": [], "links": [], "definitions": {"subgraphs": [{}]}}, OBJECT_INFO)


def test_unavailable_choices_are_the_files_the_server_does_not_list():
    prompt = {"1": {"class_type": "Loader", "inputs": {"ckpt_name": "missing.safetensors"}, "_meta": {"title": "L"}},
              "2": {"class_type": "Image", "inputs": {"image": "x.png"}, "_meta": {"title": "I"}}}
    assert wa.unavailable_choices(prompt, OBJECT_INFO) == [("1", "ckpt_name", "missing.safetensors")]


def test_set_inputs_changes_values_but_never_links():
    prompt = {"2": {"class_type": "Sampler", "inputs": {"steps": 20, "model": ["1", 0]}}}
    assert wa.set_inputs(prompt, ("Sampler",), steps=2, model=5) == ["2"]
    assert prompt["2"]["inputs"] == {"steps": 2, "model": ["1", 0]}
