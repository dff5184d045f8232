"""ComfyUI workflows in the frontend's format (what "Save" writes, what users drag in) turned
into the API format that ``POST /prompt`` takes, using the server's ``/object_info``.

The frontend does this itself when you press Run (``graphToPrompt``); a headless run has no
frontend, so this module does the same, following the frontend's rules (ComfyUI frontend 1.32):

- ``widgets_values`` holds one value per widget input, in the node definition's input order
  (``input_order``: required, then optional), plus the value of the widgets the frontend adds
  after some of them: the "control after generate" combo after INT inputs named ``seed`` /
  ``noise_seed`` or marked ``control_after_generate``, and the upload button after image /
  video / audio upload combos. Those extra values are not node inputs.
- A widget input that is linked takes the link, not its stale value. Inputs that ``forceInput``
  are sockets.
- Dynamic prompts: the value of a STRING widget declared with ``dynamicPrompts`` has each
  ``{a|b|c}`` replaced by one option picked at random (nested choices, ``\\{`` ``\\|`` ``\\}``
  escapes, ``//`` and ``/* */`` comments dropped), once per conversion as the frontend does once
  per queue (its ``processDynamicPrompt``). ``rng`` makes it repeatable.
- Frontend-only nodes are not sent: notes (``Note``, ``MarkdownNote``), ``Reroute`` (links are
  followed through it), the legacy ``PrimitiveNode`` (the widget it feeds keeps its value).
- Muted nodes (mode 2) are left out, with any input fed by them. A bypassed node (mode 4) hands
  on what feeds one of its inputs: for output slot i, input slot i when its type fits, else the
  first input of the type wanted, else the first input whose type fits (the frontend's
  ``ExecutableNodeDTO.resolveOutput``). "Fits" is LiteGraph's ``isValidConnection``.
"""
from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_MUTED, MODE_BYPASSED = 2, 4
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """The workflow cannot be turned into a prompt (unknown nodes, unsupported features)."""


class MissingNodeTypes(WorkflowError):
    """The workflow uses node types this ComfyUI does not have (a custom node pack is missing)."""

    def __init__(self, missing: list[str], message: str | None = None):
        self.missing = list(missing)
        super().__init__(message or f"this ComfyUI has no node type(s) {', '.join(self.missing)} (missing custom nodes?)")


def load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_ui_format(data: dict) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def is_api_format(data: dict) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "class_type" in v and "inputs" in v for v in data.values())


def node_types(workflow: dict) -> set[str]:
    """Node types the workflow needs from the server (frontend-only nodes excluded)."""
    return {n["type"] for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY}


def missing_node_types(workflow: dict, object_info: dict) -> list[str]:
    return sorted(t for t in node_types(workflow) if t not in object_info)


# --- node definitions -----------------------------------------------------------------------

def input_specs(definition: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's required and optional inputs, in the frontend's order."""
    inputs = definition.get("input") or {}
    order = definition.get("input_order") or {}
    found = []
    for group in ("required", "optional"):
        specs = inputs.get(group) or {}
        for name in order.get(group) or list(specs):
            if name in specs:
                found.append((name, specs[name]))
    return found


def is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(spec: list) -> list | None:
    """The choices of a combo input (legacy list form or ``COMBO`` with ``options``), else None."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(options.get("options") or [])
    return None


def widget_layout(definition: dict) -> list[str | None]:
    """What each ``widgets_values`` entry of a node of this type is: an input name, or None for
    the values of widgets the frontend adds that are not inputs (seed control, upload button)."""
    layout: list[str | None] = []
    for name, spec in input_specs(definition):
        if not is_widget(spec):
            continue
        layout.append(name)
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if options.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
            layout.append(None)
        if any(options.get(flag) for flag in UPLOAD_FLAGS):
            layout.append(None)
    return layout


def dynamic_prompt_inputs(definition: dict) -> list[str]:
    """The STRING widget inputs whose value the frontend resolves as a dynamic prompt."""
    return [name for name, spec in input_specs(definition)
            if spec[0] == "STRING" and len(spec) > 1 and isinstance(spec[1], dict)
            and spec[1].get("dynamicPrompts") is True and is_widget(spec)]


_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//[^\n\r\u2028\u2029]*")  # JavaScript's "." stops at these
_ESCAPED = re.compile(r"\\([{}|])")


def resolve_dynamic_prompt(text: str, rng=None) -> str:
    """``text`` with every ``{a|b|...}`` replaced by one of its options, step for step as the
    frontend's ``processDynamicPrompt`` (ComfyUI frontend 1.32): comments are dropped first; a
    backslash keeps the next character as it is (``\\{`` ``\\|`` ``\\}`` lose the backslash at the
    end, other escapes keep it); options may nest, and the chosen one is resolved in turn.
    ``rng``: anything with ``random()`` in [0, 1) (default: the random module)."""
    rng = rng or random
    text = _COMMENTS.sub("", text)
    pos = 0

    def escape() -> str:
        nonlocal pos
        char = text[pos] if pos < len(text) else "undefined"  # what the frontend appends past the end
        pos += 1
        return "\\" + char

    def choice() -> str:
        nonlocal pos
        options, current, depth = [], "", 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\":
                current += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += char
        options.append(current)
        return resolve_dynamic_prompt(options[int(rng.random() * len(options))], rng)

    out = ""
    while pos < len(text):
        char = text[pos]
        pos += 1
        out += escape() if char == "\\" else choice() if char == "{" else char
    return _ESCAPED.sub(r"\1", out)


def widget_values(node: dict, definition: dict) -> dict:
    """The node's widget inputs and their saved values."""
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some nodes save a name -> value mapping
        return dict(values)
    values = list(values or [])
    layout = widget_layout(definition)
    if len(values) != len(layout):
        raise WorkflowError(
            f"node {node['id']} ({node['type']}) has {len(values)} widget values but this ComfyUI's "
            f"definition of {node['type']} has {len(layout)} ({[n or '(control)' for n in layout]}): "
            "the workflow was saved with another version of the node")
    return {name: value for name, value in zip(layout, values) if name is not None}


# --- conversion -------------------------------------------------------------------------------

class _Graph:
    def __init__(self, workflow: dict):
        if workflow.get("definitions", {}).get("subgraphs"):
            raise WorkflowError("workflows with subgraphs are not supported here; unpack them in the editor")
        self.nodes = {n["id"]: n for n in workflow["nodes"]}
        # link id -> (origin node, origin slot, target node, target slot, type)
        self.links = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                        link["target_slot"], link.get("type")]
            self.links[link[0]] = tuple(link[1:6])

    def source(self, link_id, wanted=None, seen=()) -> tuple | None:
        """(node id, output slot) that really feeds this link after following reroutes and
        bypassed nodes; ("value", node) for a legacy PrimitiveNode; None if nothing does.
        ``wanted`` is the type of the input the link goes into."""
        if link_id is None or link_id not in self.links:
            return None
        origin, slot, *_ = self.links[link_id]
        node = self.nodes.get(origin)
        if node is None or origin in seen:
            return None
        seen = (*seen, origin)
        if node["type"] == "Reroute":  # a virtual node: the wanted type goes on unchanged
            return self.source(_input_link(node, 0), wanted, seen)
        if node["type"] == "PrimitiveNode":
            return ("value", node)
        mode = node.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASSED:
            index = _bypass_input(node, slot, wanted)
            if index is None:
                return None
            entry = node["inputs"][index]
            return self.source(entry.get("link"), entry.get("type"), seen)
        return (origin, slot)


def _input_link(node: dict, index: int):
    inputs = node.get("inputs") or []
    return inputs[index].get("link") if index < len(inputs) else None


def types_match(a, b) -> bool:
    """LiteGraph's ``isValidConnection``: "*", "" or no type fit anything; otherwise the names
    compared without case, and comma-separated lists fit when any of their members do."""
    if not a or a == "*" or not b or b == "*" or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(types_match(x, y) for x in a.split(",") for y in b.split(","))


def _bypass_input(node: dict, slot: int, wanted) -> int | None:
    """The input of a bypassed node whose source stands in for its output ``slot``, when that
    output feeds an input of type ``wanted`` (the frontend's rule, see the module docstring)."""
    inputs = node.get("inputs") or []
    if wanted in ("*", ""):
        index = slot if len(inputs) > slot else 0
        return index if index < len(inputs) else None
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) else None
    if slot < len(inputs) and types_match(inputs[slot].get("type"), out_type) \
            and types_match(inputs[slot].get("type"), wanted):
        return slot
    for index, entry in enumerate(inputs):
        if entry.get("type") == wanted:
            return index
    for index, entry in enumerate(inputs):
        if types_match(entry.get("type"), out_type) and types_match(entry.get("type"), wanted):
            return index
    return None


def ui_to_api(workflow: dict, object_info: dict, rng=None) -> dict:
    """The API-format prompt (``{node id: {class_type, inputs, _meta}}``) the frontend would queue.
    ``rng`` (e.g. ``random.Random(seed)``) picks the options of dynamic prompts; default: at random."""
    rng = rng or random.Random()
    missing = missing_node_types(workflow, object_info)
    if missing:
        raise MissingNodeTypes(missing)
    graph = _Graph(workflow)
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        definition = object_info[node["type"]]
        inputs = widget_values(node, definition)
        for entry in node.get("inputs") or []:
            name = entry.get("widget", {}).get("name") or entry["name"]
            if entry.get("link") is None:
                continue
            source = graph.source(entry["link"], entry.get("type"))
            if source is None or source[0] == "value":
                # Fed by nothing that runs (muted): left out. By a legacy PrimitiveNode: the
                # widget already holds its value.
                continue
            inputs[name] = [str(source[0]), source[1]]
        for name in dynamic_prompt_inputs(definition):  # a linked input holds a link, not a string
            if isinstance(inputs.get(name), str):
                inputs[name] = resolve_dynamic_prompt(inputs[name], rng)
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or definition.get("display_name") or node["type"]}}
    return prompt


# --- what a workflow needs --------------------------------------------------------------------

# Loader inputs and the ComfyUI folder their file comes from (for messages and stand-ins).
MODEL_INPUTS = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LLM4GENLoadLLM", "model"): "LLM",
    ("LLM4GENLoadCrossAdapter", "adapter_name"): "llm4gen",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoadImage", "image"): "input",
}


def file_inputs(prompt: dict) -> list[tuple[str, str, str, str]]:
    """(node id, input, folder, file name) of every file a prompt's loaders name."""
    found = []
    for node_id, node in prompt.items():
        for (class_type, name), folder in MODEL_INPUTS.items():
            value = node["inputs"].get(name)
            if node["class_type"] == class_type and isinstance(value, str):
                found.append((node_id, name, folder, value))
    return found


def unavailable_choices(prompt: dict, object_info: dict) -> list[tuple[str, str, str]]:
    """(node id, input, value) of combo values the server does not offer: files that are not in
    its model folders (what the frontend draws as a red widget)."""
    found = []
    for node_id, node in prompt.items():
        definition = object_info.get(node["class_type"]) or {}
        for name, spec in input_specs(definition):
            choices = combo_options(spec)
            value = node["inputs"].get(name)
            if choices is not None and isinstance(value, str) and value not in choices:
                found.append((node_id, name, value))
    return found


def set_inputs(prompt: dict, class_types: tuple[str, ...], **values) -> list[str]:
    """Set inputs (those not fed by a link) on every node of the given types; returns the
    ids changed. Used for explicit overrides (steps, size) of a converted prompt."""
    changed = []
    for node_id, node in prompt.items():
        if node["class_type"] in class_types:
            for name, value in values.items():
                if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                    node["inputs"][name] = value
                    changed.append(node_id)
    return sorted(set(changed))


def copy_prompt(prompt: dict) -> dict:
    return copy.deepcopy(prompt)
