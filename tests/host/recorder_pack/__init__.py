"""Test-only ComfyUI node pack: records what the UNet (and any ControlNet) receives.

Linked into the test host's ``custom_nodes/`` as ``llm4gen_test_recorder``; never shipped.
"LLM4GENTestRecordUNet" takes a MODEL and returns a clone with two wrappers from ComfyUI's
wrapper API (``comfy.patcher_extension.WrappersMP``), keyed so they compose with any other:

- APPLY_MODEL (inside ``BaseModel.apply_model``, once per batched UNet call): batch size,
  ``cond_or_uncond`` (which entries of the batch are positive=0 / negative=1), sigmas, the
  cross-attention context ``c_crossattn`` the UNet gets, its class/size vector ``y`` (SDXL's
  pooled output and size embeddings; None for SD1.5), and the context a ControlNet in the
  same call was given by ComfyUI's rule (``comfy/controlnet.py``:
  ``cond.get('crossattn_controlnet', cond['c_crossattn'])``).
- CALC_COND_BATCH (around the batching of conds): forward hooks on every ControlNet model
  attached to the conds, so the context (and ``y``) a ControlNet actually receives is observed
  directly.

Every record is one file, ``<output dir>/llm4gen_test_records/<prompt_id>/<seq>-<kind>.pt``,
a dict of plain values and CPU tensors (``torch.load(..., weights_only=True)`` reads it), so a
test reads the same records from the in-process host and from the server.
"""
from __future__ import annotations

import itertools
import os
import threading
import uuid

import torch
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

RECORDS_SUBDIR = "llm4gen_test_records"
WRAPPER_KEY = "llm4gen_test_recorder"

_seq = itertools.count()
_lock = threading.Lock()


def _prompt_context():
    from comfy_execution.utils import get_executing_context

    ctx = get_executing_context()
    return (ctx.prompt_id, ctx.node_id) if ctx is not None else ("no-prompt", None)


def _tensor(t, keep: bool):
    return t.detach().to("cpu").clone() if keep and torch.is_tensor(t) else None


def _shape(t):
    return list(t.shape) if torch.is_tensor(t) else None


def _write(record: dict) -> None:
    import folder_paths

    prompt_id, node_id = _prompt_context()
    with _lock:
        seq = next(_seq)
    record.update(prompt_id=prompt_id, node_id=node_id, seq=seq)
    folder = os.path.join(folder_paths.get_output_directory(), RECORDS_SUBDIR, prompt_id)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"{seq:06d}-{record['kind']}.pt")
    tmp = target + f".{os.getpid()}.tmp"
    torch.save(record, tmp)
    os.replace(tmp, target)


def _apply_model_wrapper(label: str, keep: bool):
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        cnet_key = "crossattn_controlnet" if "crossattn_controlnet" in kwargs else "c_crossattn"
        cnet_context = kwargs["crossattn_controlnet"] if cnet_key == "crossattn_controlnet" else c_crossattn
        _write({
            "kind": "unet",
            "label": label,
            "batch_size": int(x.shape[0]),
            "x_shape": _shape(x),
            "sigmas": [float(s) for s in t.flatten()],
            "cond_or_uncond": list(transformer_options.get("cond_or_uncond", [])),
            "context_shape": _shape(c_crossattn),
            "context": _tensor(c_crossattn, keep),
            "has_control": control is not None,
            "controlnet_context_key": cnet_key,
            "controlnet_context_shape": _shape(cnet_context),
            "controlnet_context": _tensor(cnet_context, keep) if cnet_key != "c_crossattn" else None,
            "y_shape": _shape(kwargs.get("y")),
            "y": _tensor(kwargs.get("y"), keep),
            "extra_keys": sorted(kwargs),
        })
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    return wrapper


def _controlnets(conds):
    """Every ControlNet model (the torch module it runs) attached to the conds, once each."""
    seen = {}
    for cond in conds:
        for entry in cond or []:
            control = entry.get("control") if isinstance(entry, dict) else None
            while control is not None:
                module = getattr(control, "control_model", None)
                if isinstance(module, torch.nn.Module):
                    seen[id(module)] = (type(control).__name__, module)
                control = getattr(control, "previous_controlnet", None)
    return list(seen.values())


def _calc_cond_batch_wrapper(label: str, keep: bool):
    def wrapper(executor, model, conds, x_in, timestep, model_options):
        handles = []
        for control_type, module in _controlnets(conds):
            def hook(mod, args, kwargs, control_type=control_type):
                context = kwargs.get("context")
                x = kwargs.get("x", args[0] if args else None)
                _write({
                    "kind": "controlnet",
                    "label": label,
                    "control_type": control_type,
                    "batch_size": int(x.shape[0]) if torch.is_tensor(x) else None,
                    "context_shape": _shape(context),
                    "context": _tensor(context, keep),
                    "y_shape": _shape(kwargs.get("y")),
                    "y": _tensor(kwargs.get("y"), keep),
                    "hint_shape": _shape(kwargs.get("hint")),
                })
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            return executor(model, conds, x_in, timestep, model_options)
        finally:
            for h in handles:
                h.remove()
    return wrapper


class RecordUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENTestRecordUNet",
            display_name="Record UNet calls (LLM4GEN tests)",
            category="_for_testing/llm4gen",
            description="Test-only: records what the UNet and any ControlNet receive on every call.",
            inputs=[
                io.Model.Input("model"),
                io.String.Input("label", default="unet", tooltip="Tag stored with every record."),
                io.Boolean.Input("keep_tensors", default=True, tooltip="Store the context tensors, not only shapes."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        # A new fingerprint every time: ComfyUI never reuses this node's (or its downstream
        # sampler's) cached output, so every prompt with a recorder samples and records again.
        return uuid.uuid4().hex

    @classmethod
    def execute(cls, model, label, keep_tensors) -> io.NodeOutput:
        from comfy.patcher_extension import WrappersMP

        patched = model.clone()
        patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _apply_model_wrapper(label, keep_tensors))
        patched.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, _calc_cond_batch_wrapper(label, keep_tensors))
        return io.NodeOutput(patched)


class RecorderExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [RecordUNet]


async def comfy_entrypoint() -> RecorderExtension:
    return RecorderExtension()
