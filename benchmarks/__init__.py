"""LLM4GEN's benchmarks: figures, never assertions. Each runs as a module from the repository root:

    .venv/bin/python -m benchmarks.run_all --quick     (bash scripts/bench.sh sets up first)
    .venv/bin/python -m benchmarks.bench_host --help

They import the product (``llm4gen_core``) and the tools (``scripts``: random stand-in models,
the ComfyUI host, prompt builders), never the tests.
"""
