"""The tools' library functions raise typed errors; only each tool's main() turns one into a
message on stderr and exit status 2. A library function that called SystemExit instead would end
whatever imported it (a test, a benchmark, the headless runner) and could not be caught by type.
Callers tell errors apart by type, never by their message text."""
from __future__ import annotations

import json
import stat
import sys

import pytest

from scripts import comfyui_host, comfyui_server, get_models, make_t5_tokenizer_corpus, workflow_api
from scripts import run_workflow as rw
from synthetic.comfy_env import comfy_t5_tokenizer


def executable(path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


# --- comfyui_host --------------------------------------------------------------------------------

def test_a_folder_that_is_no_comfyui_raises_host_setup_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(comfyui_host.HostSetupError, match="does not look like a ComfyUI checkout: main.py"):
        comfyui_host.install()


def test_host_main_reports_it_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert comfyui_host.main(["comfyui_host", "install"]) == 2
    assert f"{tmp_path} does not look like a ComfyUI checkout" in capsys.readouterr().err


def test_importing_a_missing_comfyui_raises_host_setup_error(tmp_path, monkeypatch):
    monkeypatch.setattr(comfyui_host, "comfyui_root", lambda: tmp_path / "nothing")
    with pytest.raises(comfyui_host.HostSetupError, match="no ComfyUI at"):
        comfyui_host.import_comfyui()


# --- get_models ----------------------------------------------------------------------------------

def test_a_release_folder_without_its_files_raises_get_models_error(tmp_path):
    with pytest.raises(get_models.GetModelsError, match="not found: --release needs the release folder"):
        get_models.link_release(tmp_path / "base", tmp_path / "release", copy=False)


def test_download_without_huggingface_hub_raises_get_models_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(get_models.GetModelsError, match="needs huggingface_hub"):
        get_models.download(tmp_path, None, with_controlnet=False)


def test_get_models_main_reports_it_and_exits_2(tmp_path, capsys):
    code = get_models.main(["--base-directory", str(tmp_path / "base"), "--release", str(tmp_path / "release")])
    assert code == 2
    assert "not found: --release needs the release folder" in capsys.readouterr().err


# --- run_workflow ---------------------------------------------------------------------------------

PROMPT = {"3": {"class_type": "KSampler", "inputs": {"steps": 50}, "_meta": {"title": "KSampler"}}}


@pytest.mark.parametrize("assignment", ["NoSuchNode.steps=3", "KSampler.steps=", "KSampler=3"])
def test_a_bad_set_raises_override_error(assignment):
    args = rw.parse_args(["workflow.json", "--set", assignment])
    with pytest.raises(rw.OverrideError, match=r"expected NODE.INPUT=VALUE .*titles: \['KSampler'\]"):
        rw.apply_overrides(json.loads(json.dumps(PROMPT)), args, smoke=False)


@pytest.mark.parametrize("error", [rw.OverrideError("--set 'x': expected NODE.INPUT=VALUE"),
                                   comfyui_host.HostSetupError("/x does not look like a ComfyUI checkout")])
def test_runner_main_reports_them_and_exits_2(monkeypatch, capsys, error):
    def run(args):
        raise error

    monkeypatch.setattr(rw, "run", run)
    assert rw.main(["workflow.json"]) == 2
    assert capsys.readouterr().err == f"{error}\n"


def test_a_server_that_exits_at_start_raises_server_error(tmp_path, monkeypatch):
    class Exited:
        returncode = 3

        def __init__(self, command, **kwargs):
            pass

        def poll(self):
            return 3

    monkeypatch.setattr(comfyui_server.subprocess, "Popen", Exited)
    with pytest.raises(comfyui_server.ServerError, match="^ComfyUI server exited with 3"):
        comfyui_server.ComfyUIServer(tmp_path, root=tmp_path)
    assert issubclass(comfyui_server.ServerStartTimeout, comfyui_server.ServerError)
    assert issubclass(comfyui_server.ServerStartTimeout, TimeoutError)


def test_the_runner_reports_a_server_error_by_its_type(capsys):
    error = comfyui_server.ServerError("ComfyUI server exited with 3:\nTraceback ...\nImportError: no torch")
    assert rw.server_failed(error) == 1
    err = capsys.readouterr().err
    assert "[llm4gen] ComfyUI server exited with 3:" in err and "ImportError: no torch" in err
    assert "COMFYUI_PYTHON" in err


def test_missing_node_types_are_a_typed_workflow_error():
    workflow = {"nodes": [{"id": 1, "type": "NoSuchNode", "mode": 0}], "links": []}
    with pytest.raises(workflow_api.MissingNodeTypes) as raised:
        workflow_api.ui_to_api(workflow, {})
    assert raised.value.missing == ["NoSuchNode"] and isinstance(raised.value, workflow_api.WorkflowError)
    with pytest.raises(workflow_api.MissingNodeTypes, match=r"^this ComfyUI has no node type\(s\) NoSuchNode$"):
        rw.to_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}}, {})


def test_only_missing_node_types_in_your_comfyui_get_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rw.comfyui_host, "user_comfyui", lambda: tmp_path)  # tmp_path is "your ComfyUI"
    assert rw.workflow_refused(workflow_api.MissingNodeTypes(["X"]), tmp_path) == 1
    assert "install the pack into your ComfyUI: ln -s" in capsys.readouterr().err
    # The same words in another workflow error are no reason for the hint.
    assert rw.workflow_refused(workflow_api.WorkflowError("no node type here"), tmp_path) == 1
    assert "install the pack" not in capsys.readouterr().err


# --- the tokenizer corpus ---------------------------------------------------------------------------

def test_a_reference_python_without_transformers_4_raises_corpus_error(tmp_path, capsys):
    folder = comfy_t5_tokenizer()
    if folder is None:
        pytest.skip("the host ComfyUI has no T5 tokenizer")
    fake = executable(tmp_path / "python", """printf '{"version": "5.0.0", "ids": []}' > "$5\"""")
    with pytest.raises(make_t5_tokenizer_corpus.CorpusError, match="has transformers 5.0.0"):
        make_t5_tokenizer_corpus.slow_ids(fake, folder / "tokenizer.json", ["a cat"])
    code = make_t5_tokenizer_corpus.main(["--tf4-python", fake, "--tokenizer", str(folder), "--out",
                                          str(tmp_path / "corpus.json")])
    assert code == 2 and "the reference is transformers 4.x" in capsys.readouterr().err
    assert not (tmp_path / "corpus.json").exists()


# --- the quality benchmark --------------------------------------------------------------------------

def test_a_readme_without_the_table_markers_raises_and_main_exits_2(tmp_path, monkeypatch, capsys):
    from benchmarks import llm_quality

    readme = tmp_path / "README-llm-memory.md"
    readme.write_text("# no markers here\n")
    monkeypatch.setattr(llm_quality, "README", readme)
    with pytest.raises(llm_quality.ReadmeSectionError, match="has no <!-- llm-quality:start -->"):
        llm_quality.rewrite_readme("| table |\n")
    monkeypatch.setattr(llm_quality, "table", lambda result: "| table |\n")
    saved = tmp_path / "run.json"
    saved.write_text("{}")
    assert llm_quality.main(["--from-json", str(saved), "--readme"]) == 2
    assert "has no <!-- llm-quality:start -->" in capsys.readouterr().err
    assert readme.read_text() == "# no markers here\n"

