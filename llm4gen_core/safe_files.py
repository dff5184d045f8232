"""Reading tensors from untrusted weight files, without ever running code from them.

Formats are told apart by their bytes, not their names: safetensors is read with the
safetensors library; torch checkpoints (``.pth``/``.pt``/``.bin``, zip or legacy pickle) only
with ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or
a plain container. Every failure becomes a :class:`CheckpointError` naming the file.

Sizes a file declares are checked against the bytes it holds before anything is allocated for
them: safetensors and torch's zip reader do so themselves, and zip records must be stored, not
compressed (torch would inflate them at any declared size); a legacy torch pickle allocates each
storage at its declared size before reading it, so its declarations are read first (see
:func:`_check_legacy_declared_sizes`). A torch tensor may also view its storage with strides that
make it overlap itself (stride 0): a few bytes on disk, gigabytes once copied. No saved state dict
has such tensors; they are refused, as are tensors aliasing one another beyond twice the data the
file stores.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Weights the pack computes with. Integer, bool, complex and float8 (quantized) tensors are refused.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Tied weights make tensors share storage; beyond this many times the stored bytes it is a bomb.
MAX_ALIASING = 2

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


def read_torch_checkpoint(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A torch checkpoint's state dict. ``mmap``: its tensors are memory-mapped from the file
    (nothing is read until used) rather than read into memory: a zip checkpoint through torch's own
    ``mmap=True``, a legacy one through :func:`_map_legacy_checkpoint` (torch maps only zip files)."""
    try:
        fmt = sniff_format(path)
        if fmt == "torch-pickle":
            _check_legacy_declared_sizes(path)
        elif fmt == "torch-zip":
            check_zip_records(path)
        obj = _map_legacy_checkpoint(path) if mmap and fmt == "torch-pickle" else None
        if obj is None:
            obj = torch_load(path, map_location="cpu", mmap=mmap and fmt == "torch-zip")
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                path,
                "refused: the file holds pickled Python objects besides tensors, which could run code",
                "only plain state dicts are loaded; convert it to .safetensors where it was made",
            ) from None
        raise CheckpointError(path, f"corrupt torch checkpoint: {first_line(exc)}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip, bad storage sizes, EOF, ...
        raise CheckpointError(path, f"corrupt or truncated torch checkpoint: {first_line(exc)}") from None
    state = _as_state_dict(path, obj)
    _check_layouts(path, state)
    return state


def torch_load(path: Path, map_location, mmap: bool = False):
    """``torch.load(weights_only=True)`` of what the file holds, whatever its name: given a path
    ending in ``.safetensors``, torch.load hands it to the safetensors library instead (torch 2.13),
    so it is given the open file. ``mmap`` (zip checkpoints) needs the path itself: a zip
    checkpoint misnamed ``.safetensors`` is then read without mapping."""
    if mmap and not Path(path).name.endswith(".safetensors"):
        return torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
    with open(path, "rb") as f:
        return torch.load(f, map_location=map_location, weights_only=True)


def check_zip_records(path: Path) -> None:
    """A zip torch checkpoint may hold no more bytes, once extracted, than the file itself: torch.save
    stores its records uncompressed, and torch's reader inflates compressed ones into memory at
    their declared size (a 0.5 MB file of deflated zeros became 512 MB)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(path, f"corrupt or truncated torch checkpoint: {first_line(exc)}") from None
    compressed = [r.filename for r in records if r.compress_type != zipfile.ZIP_STORED]
    extracted, size = sum(r.file_size for r in records), os.path.getsize(path)
    if compressed or extracted > size:
        raise CheckpointError(path, f"refused: its zip records hold {extracted:,} bytes once extracted, in a file of "
                                    f"{size:,} ({len(compressed)} compressed: {listed(compressed, 3)}); torch.save "
                                    "never compresses, and a compressed checkpoint can expand to any size")


def _check_legacy_declared_sizes(path: Path) -> None:
    """A legacy (pre-zip) torch checkpoint: refuse it when its storages declare more bytes than the
    file holds. torch's legacy reader allocates every storage at its declared size before reading
    it; here the pickle is read by the same weights-only unpickler with storages on the meta device,
    which allocates nothing."""
    from torch import _weights_only_unpickler as restricted

    declared: dict[str, int] = {}

    def persistent_load(saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] in ("storage", b"storage")):
            raise RuntimeError(f"unexpected storage reference {str(saved_id)[:80]}")
        _, storage_type, key, _location, numel, _view = saved_id
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise RuntimeError(f"malformed storage declaration {str(saved_id)[:80]}")
        nbytes = numel * torch._utils._element_size(dtype)
        declared[str(key)] = nbytes
        meta = torch.UntypedStorage(nbytes, device="meta")
        return torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)

    with open(path, "rb") as f:
        try:
            magic = restricted.Unpickler(f).load()
            if magic != torch.serialization.MAGIC_NUMBER:
                return  # not torch's legacy layout: torch.load reports it
            restricted.Unpickler(f).load()  # protocol version
            restricted.Unpickler(f).load()  # system info
            unpickler = restricted.Unpickler(f)
            unpickler.persistent_load = persistent_load
            unpickler.load()
        except pickle.UnpicklingError as exc:  # worded as torch.load words what its unpickler refuses
            raise pickle.UnpicklingError(f"Weights only load failed: {exc}") from None
    total, size = sum(declared.values()), os.path.getsize(path)
    if total > size:
        raise CheckpointError(path, f"corrupt torch checkpoint: its tensors declare {total:,} bytes but the file holds "
                                    f"only {size:,}", "was the download cut short?")


def _map_legacy_checkpoint(path: Path):
    """A legacy (pre-zip) torch checkpoint with its storages memory-mapped, or None when the file
    is not the common layout (another byte order, pre-1.0 storage views): torch.load reads those.

    The layout torch.save wrote: pickles of the magic number, the protocol version and system
    info; the object, whose storages are persistent ids (key, dtype, element count); the list of
    storage keys; then each listed storage as its element count (int64) and its bytes. The
    object is unpickled twice by torch's weights-only unpickler: first with storages on the meta
    device (nothing allocated, their declarations collected), then, once every declared storage is
    found at its place in the file with the count it declares and within the file's bytes, with
    storages that are slices of one private, read-only-used mapping of the file."""
    from torch import _weights_only_unpickler as restricted

    declared: dict[str, tuple[torch.dtype, int]] = {}

    def declare(saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"Weights only load failed: unexpected storage reference {str(saved_id)[:80]}")
        _, storage_type, key, _location, numel, view = saved_id
        dtype = getattr(storage_type, "dtype", None)
        if view is not None or not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise _Unusual()
        key = str(key)
        if declared.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise _Unusual()
        meta = torch.UntypedStorage(numel * torch._utils._element_size(dtype), device="meta")
        return torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            if restricted.Unpickler(f).load() != torch.serialization.MAGIC_NUMBER:
                return None
            if restricted.Unpickler(f).load() != torch.serialization.PROTOCOL_VERSION:
                return None
            info = restricted.Unpickler(f).load()
            if not isinstance(info, dict) or info.get("little_endian") is not True or sys.byteorder != "little":
                return None
            start = f.tell()
            unpickler = restricted.Unpickler(f)
            unpickler.persistent_load = declare
            unpickler.load()
            keys = restricted.Unpickler(f).load()
        except _Unusual:
            return None
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
            return None
        offsets, at = {}, f.tell()
        for key in map(str, keys):
            dtype, numel = declared[key]
            f.seek(at)
            head = f.read(8)
            nbytes = numel * torch._utils._element_size(dtype)
            if len(head) != 8 or struct.unpack("<q", head)[0] != numel or at + 8 + nbytes > size:
                raise CheckpointError(path, f"corrupt torch checkpoint: storage {key} is not where its "
                                            "declaration says", "was the download cut short?")
            offsets[key] = (at + 8, nbytes, dtype)
            at += 8 + nbytes
        whole = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)

        def mapped(saved_id):
            _, _, key, _, _, _ = saved_id
            offset, nbytes, dtype = offsets[str(key)]
            return torch.storage.TypedStorage(wrap_storage=whole[offset:offset + nbytes], dtype=dtype, _internal=True)

        f.seek(start)
        unpickler = restricted.Unpickler(f)
        unpickler.persistent_load = mapped
        return unpickler.load()


class _Unusual(Exception):
    """A legacy checkpoint outside the common layout: left to torch.load."""


def _check_layouts(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse tensors whose strides make them overlap themselves, and aliasing beyond MAX_ALIASING
    times the stored bytes: both let a small file expand to any size once its tensors are copied."""
    views: dict[tuple, int] = {}
    storages: dict[int, int] = {}
    for key, t in state.items():
        if not _non_overlapping(t):
            raise CheckpointError(path, f"{key} overlaps itself in memory (shape {list(t.shape)}, strides "
                                        f"{list(t.stride())}): no saved state dict has such a tensor, refused")
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        views[(storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)] = t.numel() * t.element_size()
    viewed, stored = sum(views.values()), sum(storages.values())
    if viewed > MAX_ALIASING * stored + (1 << 20):
        raise CheckpointError(path, f"its tensors view {viewed:,} bytes of only {stored:,} stored bytes (tensors "
                                    "aliasing one another far beyond tied weights), refused")


def _non_overlapping(t: torch.Tensor) -> bool:
    """No two indices of ``t`` address the same element of its storage."""
    needed = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride < needed:
            return False
        needed = stride * (size - 1) + needed
    return True


def check_weight(path, key: str, t: torch.Tensor) -> None:
    """A weight the pack can compute with: a float dtype, and only finite values. A NaN or inf makes
    the tensor's sum non-finite, so a finite sum (one fast pass in the tensor's own dtype, no
    temporary) clears it; only a non-finite sum, which may also be an overflow, is looked at element
    by element."""
    if t.dtype not in FLOAT_DTYPES:
        kind = "quantized (float8) weights are not supported" if "float8" in str(t.dtype) else "weights must be floating point"
        raise CheckpointError(path, f"{key} has dtype {t.dtype}; {kind} (float32, float16, bfloat16 or float64)")
    if t.numel() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        raise CheckpointError(path, f"{key} contains NaN or infinite values", "the file is damaged")


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
