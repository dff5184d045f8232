"""Weights read tensor by tensor from memory-mapped files, so that a load holds about one copy of
the weights, in the dtype asked for, and never the whole file besides.

    with WeightFiles(files, keep=lambda key: True) as weights:
        shapes = {key: ref.shape for key, ref in weights.refs.items()}   # headers only, no data read
        tensor = weights.load(weights.refs[key], torch.bfloat16, check)  # read, checked, cast

- safetensors: opened with the safetensors library (which validates the header against the file)
  and memory-mapped; a tensor's bytes are only read when it is loaded.
- torch zip checkpoints (``.bin``/``.pth``): ``torch.load(mmap=True, weights_only=True)`` after the
  checks of :mod:`.safe_files`; the same.
- legacy (pre-zip) torch checkpoints, which torch cannot map: mapped by
  :func:`~.safe_files.read_torch_checkpoint` itself (the same weights-only unpickler); files outside
  the common layout (big-endian, pre-1.0 storage views) are read whole by torch.load.

A tensor stored in the dtype asked for is used where it lies: the loaded tensor is a view of the
file's private (copy-on-write) mapping, read through once by its check, and costs no copy and no
fresh memory; its pages are the page cache's, which the kernel can drop and read again under
memory pressure (as transformers and llama.cpp use their weight files). Such a file must not be
overwritten in place while a model loaded from it is alive (a truncated mapping faults); replace
it by writing a new file and renaming it over the old one, as ``llm4gen_core.convert`` does.

A tensor stored in another dtype is copied, in chunks of at most :data:`CHUNK_BYTES`, into a fresh
tensor of the dtype asked for, each chunk checked first. Pages of a mapped file that a process has
read count in its resident memory until unmapped, so on Linux each copied chunk's pages are handed
back to the kernel (``madvise(MADV_DONTNEED)``): they stay in the page cache, not in the process.
Only whole pages inside the chunk's bytes and inside this file's own mapping are released (never a
page shared with a tensor used in place); those pages are never written, so a page read again
comes back from the file.
"""
from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import CheckpointError
from .safe_files import first_line, read_torch_checkpoint, sniff_format

CHUNK_BYTES = 4 << 20
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class WeightRef:
    """One tensor of an opened file, not read yet: its key, shape and dtype (from the header)."""

    __slots__ = ("file", "key", "shape", "dtype")

    def __init__(self, file: _WeightFile, key: str, shape: torch.Size, dtype: torch.dtype | str):
        self.file, self.key, self.shape, self.dtype = file, key, shape, dtype

    @property
    def path(self) -> Path:
        return self.file.path

    def __repr__(self) -> str:
        return f"WeightRef({self.key}, {tuple(self.shape)}, {self.dtype}, {self.file.path.name})"


class WeightFiles:
    """Several weight files (shards) opened together; ``refs`` maps every kept key to its tensor."""

    def __init__(self, files: list[Path], keep: Callable[[str], bool] = lambda key: True, *, in_place: bool = True):
        """``in_place``: a tensor stored in the dtype asked for is loaded as a view of the file (see
        above); False copies every tensor (as ComfyUI's ``--disable-mmap`` asks of its own loads)."""
        self.in_place = in_place
        self.files: list[_WeightFile] = []
        self.refs: dict[str, WeightRef] = {}
        try:
            for path in files:
                file = _WeightFile(Path(path), keep)
                self.files.append(file)
                for key, ref in file.refs.items():
                    if key in self.refs:
                        raise CheckpointError(path, f"{key} is also in {self.refs[key].path.name}: shards overlap")
                    self.refs[key] = ref
        except BaseException:
            self.close()
            raise

    @property
    def metadata(self) -> dict[str, str]:
        """The safetensors metadata of a single file (empty for several files or torch files)."""
        return dict(self.files[0].metadata) if len(self.files) == 1 else {}

    def load(self, ref: WeightRef, dtype: torch.dtype, check: Callable[[torch.Tensor], None] | None = None
             ) -> torch.Tensor:
        """The stored tensor in ``dtype``, checked: the stored one itself where it is in ``dtype``
        already and ``in_place``, else a new tensor, read and cast chunk by chunk."""
        return ref.file.load(ref.key, dtype, check, self.in_place)

    def read_chunks(self, ref: WeightRef, check: Callable[[torch.Tensor], None] | None = None):
        """The stored tensor in chunks along dim 0 (views of the file), each checked before it is
        yielded and its pages released after; for a caller that writes them elsewhere."""
        src = ref.file.tensor(ref.key)
        for part, _ in _chunks(src, src):
            if check is not None:
                check(part)
            yield part
            ref.file.release(part)

    def close(self) -> None:
        for file in self.files:
            file.close()
        self.refs.clear()

    def __enter__(self):
        # The per-chunk checks and copies are memory-bound and small: split over torch's intra-op
        # threads they gain nothing, and on a busy machine each of the thousands of small parallel
        # ops can wait milliseconds for its threads (an XL fp32 load took 8-12 s with 2 threads on a
        # loaded 2-core machine, 3.4 s with one). One thread while the files are open.
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        self.close()
        torch.set_num_threads(self._threads)
        return False


class _WeightFile:
    def __init__(self, path: Path, keep: Callable[[str], bool]):
        self.path, self.metadata = path, {}
        self._st = None        # an open safetensors handle
        self._tensors = None   # a torch checkpoint's (mapped) tensors
        self._ranges: list[tuple[int, int]] | None = None
        self.refs: dict[str, WeightRef] = {}
        if not path.is_file():
            raise CheckpointError(path, "no such file")
        if sniff_format(path) == "safetensors":
            self._open_safetensors(keep)
        else:
            state = read_torch_checkpoint(path, mmap=True)
            self._tensors = {k: v for k, v in state.items() if keep(k)}
            self.refs = {k: WeightRef(self, k, v.shape, v.dtype) for k, v in self._tensors.items()}

    def _open_safetensors(self, keep) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(self.path), framework="pt", device="cpu")
            self._st = handle.__enter__()
            self.metadata = dict(self._st.metadata() or {})
            for key in self._st.keys():
                if keep(key):
                    info = self._st.get_slice(key)
                    dtype_name = info.get_dtype()
                    self.refs[key] = WeightRef(self, key, torch.Size(info.get_shape()),
                                               SAFETENSORS_DTYPES.get(dtype_name, dtype_name))
        except CheckpointError:
            raise
        except Exception as exc:  # SafetensorError, OSError, header JSON errors, ...
            self.close()
            raise CheckpointError(self.path, f"corrupt safetensors file: {first_line(exc)}") from None

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor as stored (a view of the mapped file where the format allows)."""
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._st.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(self.path, f"corrupt safetensors file: {key}: {first_line(exc)}") from None

    def load(self, key: str, dtype: torch.dtype, check: Callable[[torch.Tensor], None] | None,
             in_place: bool = True) -> torch.Tensor:
        """The stored tensor in ``dtype``, checked chunk by chunk. Stored in ``dtype`` already (and
        contiguous and aligned) and ``in_place``: that tensor itself, a view of the file's private
        mapping, with no copy. Otherwise a new tensor, cast chunk by chunk, the chunks' file pages
        released as it goes. Either way this file's reference to the stored tensor is dropped."""
        src = self.tensor(key)
        if self._tensors is not None:
            del self._tensors[key]
        if in_place and src.dtype == dtype and src.is_contiguous() and src.data_ptr() % src.element_size() == 0:
            if check is not None:
                for part, _ in _chunks(src, src):
                    check(part)
            return src
        dst = torch.empty(src.shape, dtype=dtype)
        for part, out in _chunks(src, dst):
            if check is not None:
                check(part)
            out.copy_(part)
            self.release(part)
        return dst

    # -- handing read pages back -----------------------------------------------------------------
    def release(self, t: torch.Tensor) -> None:
        """Drop the pages of ``t``'s bytes from this process (Linux; a no-op elsewhere, or when
        ``t`` does not lie in a mapping of this file)."""
        if _MADVISE is None or t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
        if last <= first or not self._in_mapping(first, last):
            return
        _MADVISE(first, last - first)

    def _in_mapping(self, start: int, end: int) -> bool:
        for attempt in range(2):
            if self._ranges is None or attempt:
                self._ranges = _mappings_of(self.path)
            if any(lo <= start and end <= hi for lo, hi in self._ranges):
                return True
        return False

    def close(self) -> None:
        if self._st is not None:
            try:
                self._st.__exit__(None, None, None)
            except Exception:
                pass
            self._st = None
        self._tensors = None


def _chunks(src: torch.Tensor, dst: torch.Tensor):
    """(source part, destination part) pairs of at most CHUNK_BYTES of source, along dim 0."""
    nbytes = src.numel() * src.element_size()
    if src.dim() == 0 or nbytes <= CHUNK_BYTES or not src.is_contiguous() or src.shape[0] < 2:
        yield src, dst
        return
    row = max(1, math.prod(src.shape[1:]) * src.element_size())
    step = max(1, CHUNK_BYTES // row)
    for i in range(0, src.shape[0], step):
        yield src[i:i + step], dst[i:i + step]


# -- Linux: madvise and /proc/self/maps ------------------------------------------------------------

_PAGE = mmap.PAGESIZE


def _load_madvise():
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return lambda address, length: madvise(address, length, mmap.MADV_DONTNEED)


_MADVISE = _load_madvise()


def _mappings_of(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (by name, or by device and inode)."""
    try:
        real = os.path.realpath(path)
        st = os.stat(path)
        ranges = []
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) < 6:
                    continue
                span, _perms, _offset, dev, inode, name = parts
                same_inode = False
                try:
                    major, minor = (int(x, 16) for x in dev.split(":"))
                    same_inode = (int(inode) == st.st_ino and major == os.major(st.st_dev)
                                  and minor == os.minor(st.st_dev))
                except ValueError:
                    pass
                if name == real or same_inode:
                    lo, hi = (int(x, 16) for x in span.split("-"))
                    ranges.append((lo, hi))
        return ranges
    except OSError:
        return []
