"""Dynamic prompts in the headless conversion (scripts/workflow_api.py): ``{red|blue} car`` in a
widget declared with dynamicPrompts is resolved as the frontend resolves it when queueing.

The port is checked against the frontend's own ``processDynamicPrompt``, taken from the installed
comfyui-frontend-package and run in Node.js with the same random numbers (skipped where either
is missing)."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import workflow_api as wa

OBJECT_INFO = {
    "Encode": {"input": {"required": {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
                                      "plain": ["STRING", {"multiline": True}]}},
               "input_order": {"required": ["text", "plain"]}, "output": ["CONDITIONING"]},
    "Text": {"input": {"required": {"value": ["STRING", {"multiline": True}]}}, "output": ["STRING"]},
}


class Sequence:
    """A stand-in for the random source: hands out the given numbers in turn, then repeats."""

    def __init__(self, numbers):
        self.numbers, self.calls = list(numbers), 0

    def random(self) -> float:
        self.calls += 1
        return self.numbers[(self.calls - 1) % len(self.numbers)]


def resolve(text, *numbers):
    return wa.resolve_dynamic_prompt(text, Sequence(numbers or [0.0]))


def test_one_option_of_each_choice():
    assert resolve("{red|blue} car", 0.0) == "red car"
    assert resolve("{red|blue} car", 0.99) == "blue car"
    assert resolve("a {red|blue} car on a {road|hill|beach}", 0.6, 0.5) == "a blue car on a hill"
    assert resolve("no choices here") == "no choices here"


def test_nested_choices_are_resolved_in_the_chosen_option():
    assert resolve("{a|{b|c}} d", 0.9, 0.9) == "c d"
    assert resolve("{a|{b|c}} d", 0.9, 0.1) == "b d"
    assert resolve("{a|{b|c}} d", 0.1) == "a d"
    assert {wa.resolve_dynamic_prompt("{a|{b|c}}", random.Random(seed)) for seed in range(200)} == {"a", "b", "c"}


def test_escapes_and_comments():
    assert resolve(r"\{not|a choice\} \| kept") == "{not|a choice} | kept"
    assert resolve(r"{a\|b|c}", 0.0) == "a|b"
    assert resolve(r"keep \n as typed") == r"keep \n as typed"
    assert resolve("a /* gone */b // to the end\nnext") == "a b \nnext"
    assert resolve("{}|", 0.5) == "|" and resolve("{x", 0.0) == "x" and resolve("x}") == "x}"


def test_the_same_seed_gives_the_same_prompt():
    text = "{red|green|blue} {car|bike|boat} on a {road|{snowy|sandy} hill}"
    picks = [wa.resolve_dynamic_prompt(text, random.Random(7)) for _ in range(3)]
    assert len(set(picks)) == 1
    assert len({wa.resolve_dynamic_prompt(text, random.Random(seed)) for seed in range(50)}) > 5


def node(id, type, widgets, inputs=(), outputs=()):
    return {"id": id, "type": type, "mode": 0, "inputs": list(inputs), "outputs": list(outputs),
            "widgets_values": widgets}


def test_only_widgets_declared_dynamic_are_resolved_and_links_win():
    wf = {"nodes": [node(1, "Encode", ["{red|blue} car", "{red|blue} car"]),
                    node(2, "Text", ["{x|y}"], outputs=[{"type": "STRING", "links": [1]}]),
                    node(3, "Encode", ["{stale|value}", ""],
                         inputs=[{"name": "text", "type": "STRING", "link": 1, "widget": {"name": "text"}}])],
          "links": [[1, 2, 0, 3, 0, "STRING"]]}
    prompt = wa.ui_to_api(wf, OBJECT_INFO, rng=Sequence([0.99]))
    assert prompt["1"]["inputs"] == {"text": "blue car", "plain": "{red|blue} car"}
    assert prompt["2"]["inputs"] == {"value": "{x|y}"}  # the frontend does not resolve it either
    assert prompt["3"]["inputs"]["text"] == ["2", 0]
    assert wa.dynamic_prompt_inputs(OBJECT_INFO["Encode"]) == ["text"]


def test_seeded_conversion_is_repeatable():
    wf = {"nodes": [node(1, "Encode", ["{a|b|c|d|e|f|g|h}", ""])], "links": []}
    runs = {wa.ui_to_api(wf, OBJECT_INFO, rng=random.Random(3))["1"]["inputs"]["text"] for _ in range(3)}
    assert len(runs) == 1 and runs <= set("abcdefgh")


# --- against the frontend's own code -----------------------------------------------------------

CASES = [
    "{red|blue} car", "a {red|{dark|light} blue|green} {car|bike}", r"\{literal\} \| {a\|b|c}",
    "{a|b} // comment {x|y}\n{c|d}", "x /* {p|q} */ {r|s}", "{{a|b}|{c|{d|e}}}", "{}", "{|}", "{a|}",
    "unclosed {a|b", "stray } and | here", r"back\\slash {a\\|b}", r"\n \t \x", "{a|b}}{c|d}", "ünï {日本|猫}",
    "trailing backslash \\",
]


def frontend_function() -> str | None:
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    assets = Path(comfyui_frontend_package.__file__).parent / "static" / "assets"
    end_marker = 'u(processDynamicPrompt,"processDynamicPrompt");'
    for bundle in sorted(assets.glob("*.js")):
        code = bundle.read_text(encoding="utf-8", errors="replace")
        start = code.find("function processDynamicPrompt(")
        if start != -1 and code.find(end_marker, start) != -1:
            return code[start: code.find(end_marker, start)]
    return None


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_port_gives_what_the_frontend_gives():
    function = frontend_function()
    if function is None:
        pytest.skip("comfyui-frontend-package (with processDynamicPrompt) is not installed")
    numbers = [random.Random(11).random() for _ in range(64)]
    script = (
        "const u = (f) => f;\n" + function + "\n"
        "const [cases, numbers] = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const out = [];\n"
        "for (const text of cases) { for (let shift = 0; shift < 8; shift++) {\n"
        "  let i = shift; Math.random = () => numbers[i++ % numbers.length];\n"
        "  out.push(processDynamicPrompt(text)); } }\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    done = subprocess.run(["node", "-e", script], input=json.dumps([CASES, numbers]), capture_output=True,
                          text=True, timeout=60, check=True)
    expected = json.loads(done.stdout)
    ours = []
    for text in CASES:
        for shift in range(8):
            ours.append(wa.resolve_dynamic_prompt(text, Sequence(numbers[shift:] + numbers[:shift])))
    assert ours == expected
