"""ComfyUI-LLM4GEN: LLM4GEN's Cross-Adapter conditioning as ComfyUI nodes.

ComfyUI imports this file from ``custom_nodes/`` and gets the nodes through
``comfy_entrypoint`` (V3 API, ComfyUI >= 0.3.48). Imported anywhere else (a test, a script
using ``llm4gen_core``) it registers nothing and needs no ComfyUI. When a requirement is missing
it logs one line saying what to install, instead of a traceback.
"""
import logging
import os
import sys

WEB_DIRECTORY = "./web"
_REQUIREMENTS = ("transformers", "safetensors", "einops", "sentencepiece", "google", "tokenizers")
_log = logging.getLogger("LLM4GEN")

if "comfy.model_management" in sys.modules:  # imported by ComfyUI
    try:
        import comfy_api.latest  # noqa: F401
    except ImportError:
        _log.error("LLM4GEN: this ComfyUI is too old for the pack's nodes (needs >= 0.3.48 with the V3 node "
                   "API); update ComfyUI. No LLM4GEN nodes were loaded.")
        NODE_CLASS_MAPPINGS = {}
    else:
        try:
            from .nodes import comfy_entrypoint  # noqa: F401
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in _REQUIREMENTS:
                raise
            _log.error("LLM4GEN: missing requirement '%s'; no LLM4GEN nodes were loaded. Install them into "
                       "ComfyUI's Python: %s -m pip install -r %s", exc.name, sys.executable,
                       os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt"))
            NODE_CLASS_MAPPINGS = {}
