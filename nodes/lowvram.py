"""ComfyUI's per-layer weight casting for the LLM, so that its model management can load it partially.

``ModelPatcher.load`` with a memory budget (``load_models_gpu`` when VRAM is short) moves a module
to the GPU only if it fits; a module it leaves on the offload device must then bring its own weights
to the input's device at each call. ComfyUI's own text encoders are built from ``comfy.ops``
classes that can (``comfy_cast_weights``); ModelPatcher only leaves out modules that have that
attribute, and loads the whole model otherwise. :func:`make_castable` gives the LLM that
behaviour in place, by changing the class of each module that holds weights, never copying them:

- ``torch.nn.Linear`` and ``torch.nn.Embedding`` become ComfyUI's own
  ``comfy.ops.disable_weight_init.Linear`` / ``.Embedding`` (subclasses of the torch ones whose
  forward is torch's until ModelPatcher sets ``comfy_cast_weights``), as ComfyUI's text encoders
  use when the weights are in the compute dtype, which is how Load LLM holds them.
- The scaled-fp8 layers of ``llm4gen_core.fp8`` get a cast path of their own: the fp8 weight and its
  float32 scale travel as they are (1 byte per weight) and are upcast on the compute device, with
  the same arithmetic as their normal forward. The fp8 token embedding looks its rows up where the
  table is and sends only those rows.
- Any other module holding tensors (T5's and the decoders' RMS norms, Gemma's scaled embedding,
  rotary tables) gets a subclass that, in cast mode, lends the module copies of its tensors on the
  input's device for the duration of the call and runs the module's own forward.

With ``comfy_cast_weights`` unset every forward is the original one: a fully loaded LLM computes
exactly as before.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.ops

from ..llm4gen_core import fp8

_COMFY_OPS = comfy.ops.disable_weight_init


def _casting(module) -> bool:
    """ModelPatcher left this module's weights off the compute device (or patches them per call)."""
    return bool(module.comfy_cast_weights or module.weight_function or module.bias_function)


def _no_patches(module) -> None:
    if module.weight_function or module.bias_function:
        raise RuntimeError(f"{type(module).__name__}: weight patches (LoRA) on scaled-fp8 LLM layers are not "
                           "supported")


class CastScaledFP8Linear(fp8.ScaledFP8Linear, comfy.ops.CastWeightBiasOp):
    """``fp8.ScaledFP8Linear`` that ModelPatcher may leave on the offload device."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        if not _casting(self):
            return super().forward(x)
        _no_patches(self)
        # The fp8 weight travels as it is and is upcast to x's dtype on x's device.
        weight, bias, stream = comfy.ops.cast_bias_weight(self, x, offloadable=True)
        scale = mm.cast_to(self.scale_weight, None, x.device)  # float32, 0-dim: as in fp8.ScaledFP8Linear
        out = F.linear(x, weight) * scale
        out = out if bias is None else out + bias
        comfy.ops.uncast_bias_weight(self, weight, bias, stream)
        return out


class CastScaledFP8Embedding(fp8.ScaledFP8Embedding, comfy.ops.CastWeightBiasOp):
    """``fp8.ScaledFP8Embedding`` that ModelPatcher may leave on the offload device: in cast mode the
    rows are looked up where the table is and only they are sent to the ids' device."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        comfy.ops.run_every_op()
        if not _casting(self):
            return super().forward(ids)
        _no_patches(self)
        table = self.weight
        rows = F.embedding(ids.to(table.device), table.view(torch.uint8)).view(fp8.FP8)
        rows = mm.cast_to(rows, None, ids.device)
        scale = mm.cast_to(self.scale_weight, None, ids.device)
        return rows.to(self.compute_dtype) * scale


class _LendTensors(comfy.ops.CastWeightBiasOp):
    """Mixin for modules without a ``comfy.ops`` counterpart: in cast mode the module's own forward
    runs with copies of its parameters and buffers on the device of its first tensor argument
    (``weight_function`` / ``bias_function`` applied to ``weight`` / ``bias``, as ComfyUI's ops do)."""

    def forward(self, *args, **kwargs):
        comfy.ops.run_every_op()
        if _casting(self):
            device = _first_tensor_device(args, kwargs)
            if device is not None:
                with _lent(self, device):
                    return super().forward(*args, **kwargs)
        return super().forward(*args, **kwargs)


def _first_tensor_device(args, kwargs) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


@contextlib.contextmanager
def _lent(module: torch.nn.Module, device: torch.device):
    functions = {"weight": module.weight_function, "bias": module.bias_function}
    saved = []
    try:
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is None:
                    continue
                lent = mm.cast_to(tensor, None, device)
                for f in functions.get(name, ()) if table is module._parameters else ():
                    lent = f(lent)
                if lent is not tensor:
                    saved.append((table, name, tensor))
                    table[name] = lent
        yield
    finally:
        for table, name, tensor in saved:
            table[name] = tensor


_LENDING_CLASSES: dict[type, type] = {}


def _lending_class(cls: type) -> type:
    if cls not in _LENDING_CLASSES:
        _LENDING_CLASSES[cls] = type(f"LowVRAM{cls.__name__}", (_LendTensors, cls),
                                     {"__module__": __name__, "__qualname__": f"LowVRAM{cls.__name__}"})
    return _LENDING_CLASSES[cls]


def _castable_class(module: torch.nn.Module) -> type:
    cls = type(module)
    if cls is torch.nn.Linear:
        return _COMFY_OPS.Linear
    if cls is torch.nn.Embedding:
        return _COMFY_OPS.Embedding
    if cls is fp8.ScaledFP8Linear:
        return CastScaledFP8Linear
    if cls is fp8.ScaledFP8Embedding:
        return CastScaledFP8Embedding
    return _lending_class(cls)


def _holds_tensors(module: torch.nn.Module) -> bool:
    return any(t is not None for t in (*module._parameters.values(), *module._buffers.values()))


def make_castable(model: torch.nn.Module) -> bool:
    """Give every module of ``model`` that holds tensors ComfyUI's cast behaviour, in place (a class
    change; no tensor is copied or moved). Returns whether ModelPatcher can now load the model
    partially: every tensor-holding module is castable and none also has parameters in its children
    (ModelPatcher skips such a module, so its weights would never reach the compute device)."""
    partial_ok = True
    for module in model.modules():
        if not _holds_tensors(module):
            continue
        own = {id(p) for p in module._parameters.values()}
        if any(id(p) not in own for p in module.parameters()):
            partial_ok = False
            continue
        if not hasattr(module, "comfy_cast_weights"):
            module.__class__ = _castable_class(module)
            if isinstance(module, torch.nn.Embedding) and "bias" not in module.__dict__:
                module.bias = None  # comfy.ops.disable_weight_init.Embedding sets it in reset_parameters
    return partial_ok


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's state, each tensor counted once. A T5's input embedding is tied to
    ``shared`` and appears twice in its state dict, where ``comfy.model_management.module_size``
    (ModelPatcher's size unless it is given one) counts it twice: ComfyUI would then believe the
    LLM needs more memory than it does (131 MB more for T5-XL in bf16)."""
    unique = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    return sum(t.nbytes for t in unique.values())
