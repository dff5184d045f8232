"""The project's tools around the pack. ComfyUI never imports them; the nodes never need them.

The product is ``nodes/`` + ``llm4gen_core/``. This package holds what runs around it: installing
the test host (``comfyui_host``), starting a ComfyUI server (``comfyui_server``), UI -> API
conversion (``workflow_api``), the headless runner (``run_workflow``), random stand-in models
(``smoke_models``, and ``tiny_training`` for the trainer), API-format prompt builders
(``stock_graphs``, ``llm4gen_graphs``), the model fetcher (``get_models``) and the maintainers'
tools. Tests and benchmarks import them as ``scripts.<name>``, and each tool runs as a module from
the repository root, so every module has that one name wherever it runs:

    .venv/bin/python -m scripts.run_workflow --help       (bash scripts/run.sh sets up first)
    .venv/bin/python -m scripts.get_models

The ``*.sh`` files here are the entry points README.md gives. Nothing is imported here: the set-up
runs ``python -m scripts.quiet_pip`` with the system Python before the virtual environment exists.
"""
