"""Maintainers' tool: build the bundled workflows in ComfyUI's real frontend and save them.

Each workflow in scripts/workflow_specs.py is created node by node in the frontend that ships
with ComfyUI (``comfyui-frontend-package``, served by a real ComfyUI with this pack loaded),
driven by a headless Chromium; what the frontend's own serializer returns is written to
``example_workflows/<name>.json`` (the folder ComfyUI's template browser lists) and, byte for
byte the same, to ``workflows/<family>/<name>.json`` (the repository's workflow folder, by model
family: ``sd15``, ``sdxl``; one level down because ComfyUI lists ``workflows/*.json`` of a pack too,
and would show each template twice). The files are therefore exactly what "Save" in ComfyUI
writes for that graph (format, widget order, link table), not a hand-made imitation.

    .venv/bin/python -m scripts.build_workflows [--check]

``--check`` rebuilds in memory and fails if a committed file differs (nodes, links, widgets).
Needs chromium + chromedriver (scripts/install_browser.sh) and selenium (tests/requirements.txt),
see scripts/chromium.py. Not used at run time.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from . import chromium, comfyui_server, workflow_specs

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "example_workflows"
COPY_ROOT = REPO / "workflows"  # same files, in a subfolder per model family; see the module docstring
VIEW = (1600, 860)  # the browser viewport the saved view is fitted to

BUILD_JS = r"""
const spec = arguments[0];
const graph = app.graph;
graph.clear();
const made = {};
for (const n of spec.nodes) {
  const node = LiteGraph.createNode(n.type);
  if (!node) throw new Error('the frontend has no node type ' + n.type);
  graph.add(node);
  node.pos = [n.pos[0], n.pos[1]];
  if (n.title) node.title = n.title;
  if (n.color) { node.color = n.color[0]; node.bgcolor = n.color[1]; }
  for (const [name, value] of Object.entries(n.widgets || {})) {
    const widget = (node.widgets || []).find((w) => w.name === name);
    if (!widget) throw new Error(n.type + ' has no widget ' + name);
    widget.value = value;
  }
  if (n.size) node.size = [Math.max(n.size[0], node.computeSize()[0]), Math.max(n.size[1], node.computeSize()[1])];
  made[n.key] = node;
}
for (const [from, slot, to, input] of spec.links) {
  const source = made[from], target = made[to];
  const index = target.findInputSlot(input);
  if (index < 0) throw new Error(target.type + ' has no input ' + input);
  const link = source.connect(slot, target, index);
  if (!link) throw new Error('could not link ' + from + '[' + slot + '] -> ' + to + '.' + input);
}
for (const [title, bounding, color] of spec.groups) {
  const group = new LiteGraph.LGraphGroup(title, color);
  group.pos = [bounding[0], bounding[1]];
  group.size = [bounding[2], bounding[3]];
  graph.add(group);
}
graph.setDirtyCanvas(true, true);
return JSON.stringify(graph.serialize());
"""


def _view(workflow: dict) -> dict:
    """A saved canvas view (``extra.ds``) that shows the whole graph in the viewport."""
    xs = [n["pos"][0] for n in workflow["nodes"]] + [n["pos"][0] + n["size"][0] for n in workflow["nodes"]]
    ys = [n["pos"][1] - 30 for n in workflow["nodes"]] + [n["pos"][1] + n["size"][1] for n in workflow["nodes"]]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    # Not below 0.62: under ~0.6 the frontend stops drawing text (low-quality rendering).
    scale = round(max(0.62, min(1.0, (VIEW[0] - 120) / width, (VIEW[1] - 140) / height)), 3)
    offset = [round(100 / scale - min(xs), 1), round(100 / scale - min(ys), 1)]
    return {"scale": scale, "offset": offset}


FRONTEND_READY = ("return !!(window.app && app.graph && window.LiteGraph && LiteGraph.registered_node_types"
                  " && LiteGraph.registered_node_types['LLM4GENLoadLLM'])")


def open_frontend(driver, server_url: str, timeout: float = 240) -> None:
    """Load ComfyUI's page in ``driver`` (a selenium WebDriver) and wait until the frontend has
    registered the pack's nodes."""
    from selenium.common.exceptions import JavascriptException
    from selenium.webdriver.support.wait import WebDriverWait

    driver.get(server_url + "/")
    WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(JavascriptException,)).until(
        lambda d: d.execute_script(FRONTEND_READY),
        message=f"waited {timeout:.0f} s for the ComfyUI frontend with the LLM4GEN nodes")


def build_in(driver) -> dict[str, dict]:
    """Every bundled workflow, built in the open frontend and serialised by it."""
    version = driver.execute_script("return window.__COMFYUI_FRONTEND_VERSION__")
    built = {}
    for make in workflow_specs.WORKFLOWS:
        spec = make()
        payload = {"nodes": [asdict(n) for n in spec.nodes], "links": [list(l) for l in spec.links],
                   "groups": [list(g) for g in spec.groups]}
        workflow = json.loads(driver.execute_script(BUILD_JS, payload))
        workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-llm4gen/{spec.name}"))
        workflow.setdefault("extra", {})["ds"] = _view(workflow)
        workflow["extra"]["frontendVersion"] = version
        built[spec.name] = workflow
    driver.execute_script("app.graph.clear(); return true")
    return built


def paths(name: str) -> list[Path]:
    """Where workflow ``name`` is written: example_workflows/ and workflows/<family>/."""
    (spec,) = [make() for make in workflow_specs.WORKFLOWS if make().name == name]
    return [OUT_DIR / f"{name}.json", COPY_ROOT / spec.family / f"{name}.json"]


def file_text(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def build_all(server_url: str, artifacts: Path) -> dict[str, dict]:
    with chromium.start(artifacts) as driver:
        open_frontend(driver, server_url)
        return build_in(driver)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ from a rebuild")
    parser.add_argument("--url", help="use this running ComfyUI (with the pack loaded) instead of starting one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llm4gen-build-") as tmp:
        if args.url:
            built = build_all(args.url.rstrip("/"), Path(tmp))
        else:
            base = comfyui_server.prepare_base(Path(tmp) / "base")
            with comfyui_server.ComfyUIServer(base) as server:
                built = build_all(server.url, Path(tmp))
    different = []
    for name, workflow in built.items():
        for path in paths(name):
            path.parent.mkdir(parents=True, exist_ok=True)
            text = file_text(workflow)
            if args.check:
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    different.append(str(path.relative_to(REPO)))
            else:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(REPO)} ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links)")
    if different:
        print(f"out of date (run python -m scripts.build_workflows): {', '.join(different)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
