"""Reading tensors from untrusted weight files, without ever running code from them.

Formats are told apart by their bytes, not their names: safetensors is read with the
safetensors library; torch checkpoints (``.pth``/``.pt``/``.bin``, zip or legacy pickle) only
with ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or
a plain container. Every failure becomes a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Wrappers training scripts put around a state dict; unwrapped when they hold the only dict.
_WRAPPER_KEYS = ("state_dict", "model", "module", "projector")


def sniff_format(path: Path) -> str:
    """'safetensors', 'torch-zip' or 'torch-pickle', judged from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(path, "file is empty or truncated (fewer than 8 bytes)")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol marker
        return "torch-pickle"
    (header_len,) = struct.unpack("<Q", head[:8])
    if 2 <= header_len <= os.path.getsize(path) - 8 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(
        path, "not a safetensors or torch checkpoint file", "was the download cut short or is it another kind of file?"
    )


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, header JSON errors, ...
        raise CheckpointError(path, f"corrupt safetensors file: {first_line(exc)}") from None
    return tensors, metadata


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                path,
                "refused: the file holds pickled Python objects besides tensors, which could run code",
                "only plain state dicts are loaded; convert it to .safetensors where it was made",
            ) from None
        raise CheckpointError(path, f"corrupt torch checkpoint: {first_line(exc)}") from None
    except MemoryError:
        raise CheckpointError(path, "corrupt torch checkpoint: it declares tensors larger than memory") from None
    except Exception as exc:  # truncated zip, bad storage sizes, EOF, ...
        raise CheckpointError(path, f"corrupt or truncated torch checkpoint: {first_line(exc)}") from None
    return _as_state_dict(path, obj)


def read_tensor_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors by key, metadata) from a safetensors or torch weights file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if sniff_format(path) == "safetensors":
        return read_safetensors(path)
    return read_torch_checkpoint(path), {}


def _as_state_dict(path: Path, obj) -> dict[str, torch.Tensor]:
    for _ in range(2):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if len(inner) == 1:
                obj = inner[0]
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"expected a state dict (a mapping of names to tensors), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"not a plain state dict: entries that are not named tensors: {listed(bad)}")
    return dict(obj)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"unreadable JSON: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def listed(items, limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
