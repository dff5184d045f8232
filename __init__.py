"""ComfyUI-LLM4GEN: LLM4GEN's Cross-Adapter conditioning as ComfyUI nodes.

ComfyUI imports this file from ``custom_nodes/`` and gets the nodes through
``comfy_entrypoint``. Imported anywhere else (a test, a script using ``llm4gen_core``), it
registers nothing and needs no ComfyUI.
"""
