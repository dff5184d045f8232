"""Hostile and damaged model files, generated from valid ones by seeded mutations.

Valid tiny models (a Cross-Adapter in safetensors / zip .pth / legacy .pth; T5 encoders as single
files, RankGen folders, HF folders with sentencepiece or tokenizer.json vocabularies, a sharded
folder; a Llama folder) are built once by :func:`build_bases`. :func:`fuzz_cases` then derives
malformed copies with a seeded ``random.Random``: byte-level damage (truncation, flipped or zeroed
bytes), safetensors header edits (dtypes, shapes, offsets, key names, header length), state-dict
edits re-saved in each format (NaN/inf, integer/bool/float8/complex dtypes, wrong shapes, missing,
renamed and extra keys, non-tensor values), hand-made torch checkpoints (storages that claim giant
sizes, self-overlapping "memory bomb" strides, aliasing amplification, pickled code), and damaged
configs, tokenizers and shard indexes of model folders.

Each :class:`FuzzCase` says whether the damage always makes the file unusable (``must_fail``)
or may leave a different but valid model (flipped bytes inside tensor data, say), and which path an
error must name.

The torch checkpoint writers below write the two torch formats by hand (``archive/data.pkl`` +
``archive/data/<key>`` records in a zip; the legacy magic-number pickle stream), so a test can make
them claim anything: the only thing they share with torch is the layout of those formats.
"""
from __future__ import annotations

import collections
import copy
import io
import json
import pickle
import random
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from llm4gen_core.cam import CrossAdapterConfig
from llm4gen_core.checkpoint import save_cross_adapter

from .cam import cam_state
from .llm import (
    t5_state, tiny_llama_folder, tiny_spm_tokenizer, tiny_t5_encoder, tiny_t5_hf_folder, tiny_t5_rankgen_folder,
    tiny_t5_safetensors, tiny_t5_tokenizer_json,
)

CAM_CONFIG = CrossAdapterConfig(clip_dim=32, llm_dim=48, heads=8, ffn_dim=64, depth=2)


# --- hand-made torch checkpoints ------------------------------------------------------------

class Storage:
    """A storage as a torch checkpoint refers to it: key, element type, element count (``numel``,
    which a hostile file may set to anything), and the bytes really written for it."""

    def __init__(self, key: str, numel: int, data: bytes = b"", storage_type=torch.FloatStorage):
        self.key, self.numel, self.data, self.storage_type = key, numel, data, storage_type


class Tensor:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride)`` in a pickle, as torch writes it."""

    def __init__(self, storage: Storage, size, stride=None, offset: int = 0):
        size = tuple(size)
        if stride is None:
            stride = tuple(int(torch.tensor(size[i + 1:]).prod()) for i in range(len(size)))
        self.args = (storage, offset, size, tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)

    @classmethod
    def of(cls, key: str, tensor: torch.Tensor) -> "Tensor":
        """A real tensor, as its own storage."""
        tensor = tensor.detach().contiguous().float()
        return cls(Storage(key, tensor.numel(), tensor.numpy().tobytes()), tensor.shape)


class Code:
    """A pickled call: unpickling it would run ``function(*args)``. It must never run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def _storages(obj, found: dict) -> dict:
    if isinstance(obj, Tensor):
        found.setdefault(obj.args[0].key, obj.args[0])
    elif isinstance(obj, dict):
        for value in obj.values():
            _storages(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _storages(value, found)
    return found


class _ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel, None)
        return None


def write_torch_zip(path: Path, obj, deflate: bool = False) -> Path:
    """torch.save's zip layout: archive/data.pkl, archive/data/<key>, byteorder, version. With
    ``deflate`` the storage records are compressed, and a storage whose ``data`` is None is
    ``numel`` float32 zeros, streamed (a compression bomb is cheap to write)."""
    buffer = io.BytesIO()
    _ZipPickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, storage in _storages(obj, {}).items():
            info = zipfile.ZipInfo(f"archive/data/{key}")
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            with z.open(info, "w", force_zip64=True) as record:
                if storage.data is not None:
                    record.write(storage.data)
                else:
                    chunk = bytes(1 << 20)
                    for start in range(0, storage.numel * 4, len(chunk)):
                        record.write(chunk[: min(len(chunk), storage.numel * 4 - start)])
        z.writestr("archive/version", "3\n")
    return path


def write_torch_legacy(path: Path, obj) -> Path:
    """torch.save's legacy layout: magic number, protocol, system info, the object, the storage
    keys, then each storage as its element count (int64) and its bytes."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    f = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                   dict(protocol_version=PROTOCOL_VERSION, little_endian=True, type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(header, f, protocol=2)
    _LegacyPickler(f, protocol=2).dump(obj)
    storages = _storages(obj, {})
    pickle.dump(list(storages), f, protocol=2)
    for storage in storages.values():
        f.write(struct.pack("<q", storage.numel))
        f.write(storage.data)
    path.write_bytes(f.getvalue())
    return path


# --- the valid starting points --------------------------------------------------------------

@dataclass(frozen=True)
class Bases:
    """Valid tiny models, each loadable by the pack; fuzz cases are damaged copies of them."""

    cam: dict              # format ("st", "zip", "legacy") -> file
    cam_state: dict        # the CAM's state dict
    tokenizer: Path        # folder with spiece.model
    t5_state: dict         # the T5 encoder's tensors (HF names, embed_tokens beside shared)
    t5_files: dict         # format ("st", "zip") -> single weights file
    rankgen: dict          # format ("bin", "safetensors") -> RankGen-layout folder (no tokenizer)
    hf: Path               # HF T5 folder: config.json, model.safetensors, spiece.model
    hf_json_tokenizer: Path  # HF T5 folder whose tokenizer is only a tokenizer.json
    sharded: Path          # HF T5 folder in 20 KB shards with model.safetensors.index.json
    llama: Path            # decoder-only folder: config.json, model.safetensors, tokenizer.json
    converted: dict        # "bf16", "fp8" -> single file written by llm4gen_core.convert llm


def build_bases(root: Path) -> Bases:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = cam_state(CAM_CONFIG, seed=5)
    cam = {"st": root / "cam.safetensors", "zip": root / "cam-zip.pth", "legacy": root / "cam-legacy.pth"}
    save_cross_adapter(state, cam["st"], CAM_CONFIG)
    torch.save(state, cam["zip"])
    torch.save(state, cam["legacy"], _use_new_zipfile_serialization=False)
    tokenizer = tiny_spm_tokenizer(root / "tokenizer")
    model = tiny_t5_encoder(seed=2)
    t5_files = {"st": tiny_t5_safetensors(root / "t5.safetensors", model), "zip": root / "t5.bin"}
    torch.save(t5_state(model), t5_files["zip"])
    hf = tiny_t5_hf_folder(root / "hf-t5", model, tokenizer_from=tokenizer)
    hf_json = tiny_t5_tokenizer_json(root / "hf-t5-json", tokenizer)  # tokenizer.json (+ its config) only
    tiny_t5_hf_folder(hf_json, model)
    return Bases(
        cam=cam, cam_state=state, tokenizer=tokenizer, t5_state=t5_state(model), t5_files=t5_files,
        rankgen={fmt: tiny_t5_rankgen_folder(root / f"rankgen-{fmt}", model, fmt=fmt) for fmt in ("bin", "safetensors")},
        hf=hf, hf_json_tokenizer=hf_json,
        sharded=tiny_t5_hf_folder(root / "hf-t5-sharded", model, tokenizer_from=tokenizer, max_shard_size="20KB"),
        llama=tiny_llama_folder(root / "llama"),
        converted=_converted(root, t5_files["st"]),
    )


def _converted(root: Path, source: Path) -> dict:
    from llm4gen_core.llm_convert import convert_llm

    out = {}
    for dtype in ("bf16", "fp8"):
        out[dtype] = root / f"t5-{dtype}.safetensors"
        convert_llm(source, out[dtype], dtype)
    return out


# --- cases ----------------------------------------------------------------------------------

@dataclass
class FuzzCase:
    name: str
    op: str                # an IsolatedLoader op: "load_cross_adapter" or "load_llm"
    args: dict             # its arguments (paths as strings)
    must_fail: bool        # False: the damage may leave a valid (different) model
    names: str             # the path (file or folder) an error must name
    sentinel: Path | None = None  # a file that code hidden in the input would create


def _save_safetensors(state: dict, path: Path, metadata=None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def _save(state: dict, path: Path, fmt: str, metadata=None) -> Path:
    if fmt in ("st", "safetensors"):
        _save_safetensors(state, path, metadata)
    elif fmt == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(state, path)
    return path


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _with_header(header, payload: bytes, length_delta: int = 0) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) + length_delta) + raw + payload


def _non_square(state: dict, rng: random.Random, prefix: str = "") -> str:
    keys = sorted(k for k, v in state.items() if v.dim() == 2 and v.shape[0] != v.shape[1] and k.startswith(prefix))
    return rng.choice(keys)


# State-dict damage: (name, must_fail, edit(state, key_chooser, rng) -> None). Every edit breaks a
# rule a usable file follows; float dtype changes and dropped optional keys are legitimate.
def _poison(value):
    def edit(state, choose, rng):
        key = choose(rng, floating=True)
        t = state[key].clone()
        t.view(-1)[rng.randrange(t.numel())] = value
        state[key] = t
    return edit


def _retype(dtype):
    def edit(state, choose, rng):
        key = choose(rng, floating=True)
        state[key] = (state[key] * 10).to(dtype) if dtype != torch.bool else state[key] > 0
    return edit


def _reshape(kind):
    def edit(state, choose, rng):
        key = choose(rng, matrix=True)
        t = state[key]
        state[key] = {"transpose": lambda: t.t().contiguous(), "drop-row": lambda: t[:-1].clone(),
                      "unsqueeze": lambda: t.unsqueeze(-1).clone(), "flatten": lambda: t.flatten().clone(),
                      "scalar": lambda: t.flatten()[0].clone()}[kind]()
    return edit


def _drop(state, choose, rng):
    del state[choose(rng)]


def _rename(state, choose, rng):
    key = choose(rng)
    i = rng.randrange(len(key))
    replacement = rng.choice([c for c in "xyzQ_0" if c != key[i]])
    state[key[:i] + replacement + key[i + 1:]] = state.pop(key)


def _extra(suffix_of):
    def edit(state, choose, rng):
        key = choose(rng)
        state[suffix_of(key)] = state[key].clone()
    return edit


STATE_EDITS = [
    ("nan", True, _poison(float("nan"))),
    ("inf", True, _poison(float("inf"))),
    ("-inf", True, _poison(float("-inf"))),
    ("int32", True, _retype(torch.int32)),
    ("int64", True, _retype(torch.int64)),
    ("uint8", True, _retype(torch.uint8)),
    ("bool", True, _retype(torch.bool)),
    ("float8", True, _retype(torch.float8_e4m3fn)),
    ("complex64", True, _retype(torch.complex64)),
    ("float16", False, _retype(torch.float16)),
    ("bfloat16", False, _retype(torch.bfloat16)),
    ("transpose", True, _reshape("transpose")),
    ("drop-row", True, _reshape("drop-row")),
    ("unsqueeze", True, _reshape("unsqueeze")),
    ("flatten", True, _reshape("flatten")),
    ("scalar", True, _reshape("scalar")),
    ("drop-key", True, _drop),
    ("rename-key", True, _rename),
]
TORCH_ONLY_EDITS = [
    ("float-value", True, lambda s, choose, rng: s.__setitem__(choose(rng), 0.5)),
    ("string-value", True, lambda s, choose, rng: s.__setitem__(choose(rng), "weights")),
    ("list-value", True, lambda s, choose, rng: s.__setitem__(choose(rng), [s[choose(rng)]])),
    ("int-key", True, lambda s, choose, rng: s.__setitem__(7, s[choose(rng)])),
]


def _chooser(state: dict, allowed):
    def choose(rng, floating=False, matrix=False):
        keys = sorted(k for k in state if isinstance(k, str) and allowed(k) and isinstance(state[k], torch.Tensor)
                      and (not floating or state[k].is_floating_point())
                      and (not matrix or (state[k].dim() == 2 and state[k].shape[0] != state[k].shape[1])))
        return rng.choice(keys)
    return choose


def _bytes_damage(data: bytes, rng: random.Random, kind: str, region: tuple[int, int] | None = None) -> bytes:
    start, end = region or (0, len(data))
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[: rng.randrange(0, len(data))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        a = rng.randrange(start, end)
        b = min(end, a + rng.randint(1, 64))
        data[a:b] = bytes(b - a)
    elif kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(8, 4096)))
    return bytes(data)


class _CaseMaker:
    def __init__(self, root: Path, bases: Bases, seed: int):
        self.root, self.bases, self.seed = Path(root), bases, seed
        self.cases: list[FuzzCase] = []

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}/{name}")

    def folder(self, name: str) -> Path:
        path = self.root / name.replace("/", "_")
        path.mkdir(parents=True)
        return path

    # CAM ------------------------------------------------------------------------------------
    def cam(self, name: str, write, must_fail: bool = True, suffix: str = ".pth", sentinel: bool = False):
        name = "cam/" + name
        folder = self.folder(name)
        path = folder / f"cam{suffix}"
        sentinel_path = folder / "PAYLOAD-RAN" if sentinel else None
        write(path, self.rng(name), *([sentinel_path] if sentinel else []))
        self.cases.append(FuzzCase(name, "load_cross_adapter", {"path": str(path)}, must_fail, str(path), sentinel_path))

    def cam_cases(self) -> None:
        bases = self.bases
        is_cam = lambda k: True  # noqa: E731
        for fmt, suffix in (("st", ".safetensors"), ("zip", ".pth"), ("legacy", ".pth")):
            for edit_name, must_fail, edit in STATE_EDITS + (TORCH_ONLY_EDITS if fmt != "st" else []):
                if fmt == "st" and edit_name in ("complex64",):
                    continue

                def write(path, rng, edit=edit, fmt=fmt):
                    state = copy.copy(bases.cam_state)
                    edit(state, _chooser(state, is_cam), rng)
                    _save(state, path, fmt)
                self.cam(f"{fmt}/state-{edit_name}", write, must_fail, suffix)
            for extra, must_fail, key_of in (
                    ("extra-key", True, lambda k: k + "_extra"),
                    ("block-gap", True, lambda k: k.replace("CrossFusionModule.1.", "CrossFusionModule.3.")),
                    ("unet-key", True, lambda k: "model.diffusion_model." + k)):
                def write(path, rng, key_of=key_of, fmt=fmt):
                    state = copy.copy(bases.cam_state)
                    key = _chooser(state, lambda k: k.startswith("CrossFusionModule.1."))(rng)
                    state[key_of(key)] = state.pop(key) if extra == "block-gap" else state[key].clone()
                    _save(state, path, fmt)
                self.cam(f"{fmt}/{extra}", write, must_fail, suffix)
            data = bases.cam[fmt].read_bytes()
            for i in range(3):
                self.cam(f"{fmt}/truncate-{i}",
                         lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "truncate")), True, suffix)
            self.cam(f"{fmt}/garbage", lambda p, rng: p.write_bytes(_bytes_damage(b"", rng, "garbage")), True, suffix)
            for i in range(2):
                self.cam(f"{fmt}/flip-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "flip")),
                         False, suffix)
                self.cam(f"{fmt}/zero-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "zero")),
                         False, suffix)
        self.cam_safetensors_header_cases()
        self.torch_crafted_cases("cam", lambda f: self.cam)

    def cam_safetensors_header_cases(self) -> None:
        data = self.bases.cam["st"].read_bytes()
        header, payload = _header(data)

        def header_case(name, edit, must_fail=True, length_delta=0, extra_payload=b""):
            def write(path, rng):
                h = copy.deepcopy(header)
                keys = sorted(k for k in h if k != "__metadata__")
                h = edit(h, rng, keys)
                path.write_bytes(_with_header(h, payload + extra_payload, length_delta))
            self.cam(f"st-header/{name}", write, must_fail, ".safetensors")

        def set_field(field, value_of):
            def edit(h, rng, keys):
                key = rng.choice(keys)
                h[key][field] = value_of(h[key], rng)
                return h
            return edit

        for dtype in ("I32", "I64", "BOOL", "U8", "F8_E4M3", "F16", "BF16", "F64", "Q7", ""):
            header_case(f"dtype-{dtype or 'empty'}", set_field("dtype", lambda e, r, d=dtype: d))
        header_case("shape-transposed", set_field("shape", lambda e, r: e["shape"][::-1] if len(e["shape"]) == 2
                                                  and e["shape"][0] != e["shape"][1] else e["shape"] + [2]))
        header_case("shape-plus-one", set_field("shape", lambda e, r: [e["shape"][0] + 1] + e["shape"][1:]))
        header_case("shape-extra-dim", set_field("shape", lambda e, r: e["shape"] + [1, 3]))
        header_case("shape-negative", set_field("shape", lambda e, r: [-e["shape"][0]] + e["shape"][1:]))
        header_case("shape-giant", set_field("shape", lambda e, r: [10**6, 10**6]))
        header_case("shape-not-a-list", set_field("shape", lambda e, r: "32x32"))
        header_case("offsets-shifted", set_field("data_offsets", lambda e, r: [e["data_offsets"][0] + 4, e["data_offsets"][1] + 4]))
        header_case("offsets-reversed", set_field("data_offsets", lambda e, r: e["data_offsets"][::-1]))
        header_case("offsets-past-end", set_field("data_offsets", lambda e, r: [e["data_offsets"][0], 10**9]))
        header_case("offsets-overlap", set_field("data_offsets", lambda e, r: [0, e["data_offsets"][1] - e["data_offsets"][0]]))
        header_case("offsets-giant", lambda h, r, k: {**h, k[0]: {"dtype": "F32", "shape": [100000, 100000],
                                                                   "data_offsets": [0, 40_000_000_000]}})
        header_case("offsets-negative", set_field("data_offsets", lambda e, r: [-8, e["data_offsets"][1]]))
        def without(h, key):
            return {k: v for k, v in h.items() if k != key}

        header_case("key-renamed", lambda h, r, k, x=None: {**without(h, x := r.choice(k)),
                                                             x.replace("CrossFusionModule", "CrossFusionModul3"): h[x]})
        header_case("entry-removed", lambda h, r, k: without(h, r.choice(k)))
        header_case("entry-duplicated-data", lambda h, r, k: {**h, "CrossFusionModule.0.extra.weight": h[k[0]]})
        header_case("metadata-not-strings", lambda h, r, k: {**h, "__metadata__": {"llm4gen.heads": 8}})
        header_case("metadata-heads-zero", lambda h, r, k: {**h, "__metadata__": {"llm4gen.heads": "0"}})
        header_case("metadata-heads-huge", lambda h, r, k: {**h, "__metadata__": {"llm4gen.heads": str(10**12)}})
        header_case("metadata-heads-negative", lambda h, r, k: {**h, "__metadata__": {"llm4gen.heads": "-8"}})
        header_case("header-is-a-list", lambda h, r, k: [h])
        header_case("header-is-a-string", lambda h, r, k: "CrossFusionModule")
        header_case("entry-is-a-number", lambda h, r, k: {**h, k[0]: 3})
        for delta in (-5, -1, 1, 7):
            header_case(f"length-field{delta:+d}", lambda h, r, k: h, length_delta=delta)
        self.cam("st-header/length-field-giant",
                 lambda p, rng: p.write_bytes(struct.pack("<Q", 10**15) + data[8:]), True, ".safetensors")
        self.cam("st-header/not-json",
                 lambda p, rng: p.write_bytes(data[:8] + b"{" + bytes(rng.randrange(32, 127) for _ in range(
                     struct.unpack("<Q", data[:8])[0] - 1)) + payload), True, ".safetensors")
        self.cam("st-header/flip-in-header",
                 lambda p, rng: p.write_bytes(_bytes_damage(data, rng, "flip", (8, 8 + struct.unpack("<Q", data[:8])[0]))),
                 False, ".safetensors")

    # torch checkpoints made by hand: claims about sizes, strides and code ------------------
    def torch_crafted_cases(self, target: str, maker_of) -> None:
        """Hand-made .pth/.bin files for ``target`` ("cam" or "llm")."""
        add = maker_of(None)
        if target == "cam":
            key = "CrossFusionModule.0.llm_proj.weight"
            state = self.bases.cam_state
        else:
            key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            state = self.bases.t5_state
        real = {k: Tensor.of(f"s{i}", v) for i, (k, v) in enumerate(sorted(state.items()))}
        giant = 10**11  # elements: 400 GB of float32

        for layout, writer in (("zip", write_torch_zip), ("legacy", write_torch_legacy)):
            def claim(path, rng, writer=writer, numel=giant):
                obj = dict(real)
                obj[key] = Tensor(Storage("big", numel, b"\0" * 64), (numel,))
                writer(path, obj)
            add(f"{layout}/storage-claims-400GB", claim)
            add(f"{layout}/storage-claims-8GB", lambda p, r, w=writer: claim(p, r, w, 2 * 10**9))

            def bomb(path, rng, writer=writer):
                """Every tensor a stride-0 view of one float: 4 bytes on disk, gigabytes once copied."""
                obj = {k: Tensor(Storage("one", 1, b"\0\0\x80\x3f"), (40000, 40000) if v.args[2] and len(v.args[2]) == 2
                                 else (40000,), (0, 0) if len(v.args[2]) == 2 else (0,)) for k, v in real.items()}
                writer(path, obj)
            add(f"{layout}/stride-0-bomb", bomb)

            def overlap(path, rng, writer=writer):
                """A tensor whose rows overlap (stride 1 along both axes): more elements than bytes."""
                obj = dict(real)
                storage = Storage("ov", 4096, b"\0" * 4096 * 4)
                obj[key] = Tensor(storage, (4000, 97), (1, 1))
                writer(path, obj)
            add(f"{layout}/self-overlap", overlap)

            def aliases(path, rng, writer=writer):
                """Thousands of keys viewing one 1 MB storage: each copy on load would be 1 MB more."""
                obj = dict(real)
                storage = Storage("shared", 256 * 1024, b"\0" * (1 << 20))
                for i in range(5000):
                    obj[f"{key.rsplit('.', 1)[0]}.alias{i}"] = Tensor(storage, (512, 512))
                writer(path, obj)
            add(f"{layout}/alias-amplification", aliases)

            def out_of_bounds(path, rng, writer=writer):
                obj = dict(real)
                obj[key] = Tensor(Storage("small", 4, b"\0" * 16), (64, 64))
                writer(path, obj)
            add(f"{layout}/view-past-storage", out_of_bounds)

            if layout == "zip":
                def deflate_bomb(path, rng):
                    """320 MB of zeros deflated into 0.3 MB: torch inflates records at their declared size."""
                    obj = dict(real)
                    numel = 80 * 2**20
                    obj[key] = Tensor(Storage("zeros", numel, None), (numel,))
                    write_torch_zip(path, obj, deflate=True)
                add("zip/deflate-bomb-320MB", deflate_bomb)

                def deflated(path, rng):
                    """An ordinary checkpoint whose records are compressed: refused too (torch.save never does it)."""
                    write_torch_zip(path, dict(real), deflate=True)
                add("zip/deflated-records", deflated)

            def negative(path, rng, writer=writer):
                obj = dict(real)
                obj[key] = Tensor(Storage("neg", -5, b""), (2,))
                writer(path, obj)
            add(f"{layout}/negative-numel", negative)

            def bad_rebuild(path, rng, writer=writer):
                obj = dict(real)
                obj[key] = Code(torch._utils._rebuild_tensor_v2, "storage?", "0", (2,), (1,), False, None)
                writer(path, obj)
            add(f"{layout}/rebuild-with-junk-arguments", bad_rebuild)

            for payload_name, payload in self.payloads():
                def evil(path, rng, sentinel, writer=writer, payload=payload):
                    obj = dict(real)
                    obj[key] = payload(sentinel)
                    writer(path, obj)
                add(f"{layout}/payload-{payload_name}", evil, sentinel=True)

        def raw_pickle(path, rng, sentinel):
            path.write_bytes(pickle.dumps({key: Code(exec, f"open({str(sentinel)!r}, 'w').write('ran')")}, protocol=4))
        add("raw-pickle-payload", raw_pickle, sentinel=True)

        def payload_as_key(path, rng, sentinel):
            torch.save({Code(exec, f"open({str(sentinel)!r}, 'w').write('ran')"): torch.zeros(2)}, path)
        add("payload-as-dict-key", payload_as_key, sentinel=True)

        def payload_in_wrapper(path, rng, sentinel):
            torch.save({"state_dict": dict(state), "optimizer": [Code(exec, f"open({str(sentinel)!r}, 'w')")]}, path)
        add("payload-beside-the-state-dict", payload_in_wrapper, sentinel=True)

    @staticmethod
    def payloads():
        import builtins
        import os
        import subprocess

        return [
            ("exec", lambda s: Code(exec, f"open({str(s)!r}, 'w').write('ran')")),
            ("eval", lambda s: Code(eval, f"open({str(s)!r}, 'w').write('ran')")),
            ("os-system", lambda s: Code(os.system, f"touch {s}")),
            ("subprocess", lambda s: Code(subprocess.Popen, ["touch", str(s)])),
            ("getattr-import", lambda s: Code(builtins.getattr, Code(builtins.__import__, "os"), "system")),
            ("torch-save", lambda s: Code(torch.save, {}, str(s))),
        ]

    # LLM ------------------------------------------------------------------------------------
    def llm(self, name: str, write, must_fail: bool = True, base: Path | None = None, file: str | None = None,
            tokenizer: bool = False, sentinel: bool = False, **extra):
        """A case on a copy of ``base`` (a folder, damaged by ``write(folder, rng)``) or on a single
        weights file ``file`` written by ``write(path, rng)``."""
        name = "llm/" + name
        folder = self.folder(name)
        sentinel_path = folder / "PAYLOAD-RAN" if sentinel else None
        args = dict(extra)
        if base is not None:
            target = folder / base.name
            shutil.copytree(base, target)
            write(target, self.rng(name), *([sentinel_path] if sentinel else []))
            names = target
        else:
            target = folder / file
            write(target, self.rng(name), *([sentinel_path] if sentinel else []))
            names = target
        if tokenizer:
            args["tokenizer_path"] = str(self.bases.tokenizer)
        self.cases.append(FuzzCase(name, "load_llm", {"path": str(target), **args}, must_fail, str(names), sentinel_path))

    def llm_cases(self) -> None:
        b = self.bases
        encoder = lambda k: k.startswith("encoder.block.")  # noqa: E731
        # single weights files: state damage in both formats
        for fmt, file in (("st", "t5.safetensors"), ("zip", "t5.bin")):
            edits = STATE_EDITS + (TORCH_ONLY_EDITS if fmt == "zip" else [])
            for edit_name, must_fail, edit in edits:
                def write(path, rng, edit=edit, fmt=fmt):
                    state = copy.copy(b.t5_state)
                    if fmt == "st":
                        del state["encoder.embed_tokens.weight"]
                    edit(state, _chooser(state, encoder), rng)
                    _save(state, path, fmt)
                self.llm(f"{fmt}/state-{edit_name}", write, must_fail, file=file, tokenizer=True)
            data = b.t5_files[fmt].read_bytes()
            for i in range(2):
                self.llm(f"{fmt}/truncate-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "truncate")),
                         True, file=file, tokenizer=True)
                self.llm(f"{fmt}/flip-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "flip")),
                         False, file=file, tokenizer=True)
            self.llm(f"{fmt}/extra-encoder-key", lambda p, rng, fmt=fmt: _save(
                {**{k: v for k, v in b.t5_state.items() if k != "encoder.embed_tokens.weight"},
                 "encoder.block.0.layer.0.SelfAttention.extra.weight": torch.zeros(4)}, p, fmt), True, file=file, tokenizer=True)
            self.llm(f"{fmt}/no-embedding", lambda p, rng, fmt=fmt: _save(
                {k: v for k, v in b.t5_state.items() if "embed_tokens" not in k and k != "shared.weight"}, p, fmt),
                True, file=file, tokenizer=True)
            self.llm(f"{fmt}/block-gap", lambda p, rng, fmt=fmt: _save(
                {k.replace("encoder.block.1.", "encoder.block.2."): v for k, v in b.t5_state.items()
                 if k != "encoder.embed_tokens.weight"}, p, fmt), True, file=file, tokenizer=True)
        # safetensors header damage on a single file
        data = b.t5_files["st"].read_bytes()
        header, payload = _header(data)
        keys = sorted(k for k in header if k.startswith("encoder.block."))

        def header_case(name, edit, length_delta=0):
            def write(path, rng):
                h = copy.deepcopy(header)
                path.write_bytes(_with_header(edit(h, rng), payload, length_delta))
            self.llm(f"st-header/{name}", write, True, file="t5.safetensors", tokenizer=True)

        def set_field(field, value_of):
            def edit(h, rng):
                key = rng.choice(keys)
                h[key][field] = value_of(h[key])
                return h
            return edit

        for dtype in ("I32", "BOOL", "F8_E5M2", "F16", "Q7"):
            header_case(f"dtype-{dtype}", set_field("dtype", lambda e, d=dtype: d))
        header_case("shape-plus-one", set_field("shape", lambda e: [e["shape"][0] + 1] + e["shape"][1:]))
        header_case("shape-giant", set_field("shape", lambda e: [10**7, 10**7]))
        header_case("offsets-past-end", set_field("data_offsets", lambda e: [e["data_offsets"][0], 10**10]))
        header_case("offsets-giant", lambda h, r: {**h, "shared.weight": {"dtype": "F32", "shape": [10**9, 64],
                                                                          "data_offsets": [0, 256 * 10**9]}})
        header_case("length-field-minus-3", lambda h, r: h, -3)
        attention_key = next(k for k in keys if "SelfAttention" in k)
        header_case("key-renamed", lambda h, r: {(k.replace("SelfAttention", "SelfAtention") if k == attention_key else k): v
                                                 for k, v in h.items()})
        self.torch_crafted_cases("llm", lambda f: lambda name, write, sentinel=False: self.llm(
            f"crafted/{name}", write, True, file="t5.bin", tokenizer=True, sentinel=sentinel, dtype="bf16"))
        self.folder_cases()
        self.converted_cases()

    def converted_cases(self) -> None:
        """Files written by ``llm4gen_core.convert llm`` (bf16, scaled fp8), damaged: their metadata
        config, the fp8 marker, scales and fp8 data, header dtypes, bytes."""
        from safetensors import safe_open

        for fmt, base in self.bases.converted.items():
            data = base.read_bytes()
            header, payload = _header(data)
            with safe_open(str(base), "pt") as f:
                tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
            config = json.loads(metadata["llm4gen.t5.config"])

            def case(name, write, must_fail=True):
                self.llm(f"converted-{fmt}/{name}", write, must_fail, file=f"t5-{fmt}.safetensors", tokenizer=True)

            def with_meta(value):
                def write(path, rng):
                    h = copy.deepcopy(header)
                    h["__metadata__"]["llm4gen.t5.config"] = value
                    path.write_bytes(_with_header(h, payload))
                return write

            for field_name, value, must_fail in (("num_layers", 10**9, True), ("num_layers", 1, True),
                                                 ("num_layers", "two", True), ("d_model", "abc", True),
                                                 ("d_model", 10**9, True), ("num_heads", 0, True),
                                                 ("d_kv", 10**6, True), ("vocab_size", 10**12, True),
                                                 ("d_ff", 10**10, True), ("feed_forward_proj", "bogus-act", True),
                                                 ("relative_attention_num_buckets", 10**9, True),
                                                 ("layer_norm_epsilon", "tiny", False),
                                                 ("model_type", "llama", False), ("auto_map", {"AutoModel": "x.Y"}, False)):
                case(f"meta-config/{field_name}={str(value)[:12]}",
                     with_meta(json.dumps({**config, field_name: value})), must_fail)
            case("meta-config/not-json", with_meta("{'d_model': 32,"))
            case("meta-config/a-list", with_meta("[1, 2]"))
            case("meta-config/deep-nesting", with_meta("[" * 100000 + "]" * 100000))
            case("meta-config/empty-object", with_meta("{}"))
            for i in range(2):
                case(f"truncate-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "truncate")))
                case(f"flip-{i}", lambda p, rng, d=data: p.write_bytes(_bytes_damage(d, rng, "flip")), False)

            def edited(edit, meta=None):
                def write(path, rng):
                    state = dict(tensors)
                    edit(state, rng)
                    _save_safetensors(state, path, metadata if meta is None else meta)
                return write

            scales = sorted(k for k in tensors if k.endswith("scale_weight"))
            fp8_keys = sorted(k for k, v in tensors.items() if v.dtype == torch.float8_e4m3fn and v.numel())
            norms = sorted(k for k in tensors if "layer_norm" in k)
            if fmt == "bf16":
                linears = sorted(k for k in tensors if k.endswith(".weight") and "layer_norm" not in k
                                 and "relative_attention_bias" not in k)
                case("fp8-weight-without-marker", edited(lambda st, rng: st.__setitem__(
                    k := rng.choice(linears), st[k].to(torch.float8_e4m3fn))))
                case("marker-but-no-scales", edited(lambda st, rng: st.__setitem__(
                    "scaled_fp8", torch.empty(0, dtype=torch.float8_e4m3fn))), False)
                continue
            case("marker-removed", edited(lambda st, rng: st.pop("scaled_fp8")))
            case("marker-e5m2", edited(lambda st, rng: st.__setitem__("scaled_fp8", torch.empty(0, dtype=torch.float8_e5m2))))
            case("marker-bf16", edited(lambda st, rng: st.__setitem__("scaled_fp8", torch.empty(0, dtype=torch.bfloat16))))
            case("marker-float32", edited(lambda st, rng: st.__setitem__("scaled_fp8", torch.empty(0))), False)
            case("scale-removed", edited(lambda st, rng: st.pop(rng.choice(scales))))
            case("embedding-scale-removed", edited(lambda st, rng: st.pop("shared.scale_weight")))
            for value in (float("nan"), float("inf"), 0.0, -0.01):
                case(f"scale={value}", edited(lambda st, rng, v=value: st.__setitem__(rng.choice(scales), torch.tensor(v))))
            case("scale-shape-2", edited(lambda st, rng: st.__setitem__(rng.choice(scales), torch.ones(2))))
            case("scale-int", edited(lambda st, rng: st.__setitem__(rng.choice(scales), torch.tensor(3))))
            case("scale-is-fp8", edited(lambda st, rng: st.__setitem__(
                rng.choice(scales), torch.tensor(0.01).to(torch.float8_e4m3fn))))
            case("scale-for-a-norm", edited(lambda st, rng: st.__setitem__(
                rng.choice(norms)[: -len("weight")] + "scale_weight", torch.tensor(1.0))))
            case("scale-huge", edited(lambda st, rng: st.__setitem__(rng.choice(scales), torch.tensor(1e30))), False)

            def nan_byte(st, rng, byte):
                key = rng.choice(fp8_keys)
                t = st[key].clone()
                t.view(torch.uint8).view(-1)[rng.randrange(t.numel())] = byte
                st[key] = t
            case("fp8-nan", edited(lambda st, rng: nan_byte(st, rng, 0x7F)))
            case("fp8-negative-nan", edited(lambda st, rng: nan_byte(st, rng, 0xFF)))
            case("fp8-weight-as-bf16", edited(lambda st, rng: st.__setitem__(
                k := rng.choice(fp8_keys), st[k].to(torch.bfloat16))))
            case("norm-as-fp8", edited(lambda st, rng: st.__setitem__(
                k := rng.choice(norms), st[k].to(torch.float8_e4m3fn))))
            case("relative-bias-as-fp8", edited(lambda st, rng: st.__setitem__(
                k := next(x for x in sorted(st) if "relative_attention_bias" in x), st[k].to(torch.float8_e4m3fn))))
            case("fp8-e5m2-weight", edited(lambda st, rng: st.__setitem__(
                k := rng.choice(fp8_keys), st[k].to(torch.float32).to(torch.float8_e5m2))))
            case("fp8-weight-transposed", edited(lambda st, rng: st.__setitem__(
                k := next(x for x in fp8_keys if "wi_0" in x), st[k].t().contiguous())))
            case("fp8-weights-without-metadata", edited(lambda st, rng: None, meta={}), False)

    def folder_cases(self) -> None:
        b = self.bases

        def json_edit(file, edit):
            def write(folder, rng, *sentinel):
                data = json.loads((folder / file).read_text())
                result = edit(data, rng, folder, *sentinel)
                (folder / file).write_text(result if isinstance(result, str) else json.dumps(result))
            return write

        def set_key(key, value):
            return lambda d, rng, folder: {**d, key: value}

        # HF T5 config.json
        for field_name, value in (("num_layers", 10**6), ("num_layers", 10**9), ("num_layers", -1), ("num_layers", "two"),
                                  ("d_model", "abc"), ("d_model", 10**9), ("d_model", 0), ("d_kv", 10**6),
                                  ("num_heads", 0), ("num_heads", 10**7), ("vocab_size", 10**12), ("vocab_size", -5),
                                  ("d_ff", 10**10), ("relative_attention_num_buckets", 10**9),
                                  ("feed_forward_proj", "bogus-act"), ("layer_norm_epsilon", "tiny"),
                                  ("model_type", "bert"), ("model_type", 123), ("model_type", ["t5"]),
                                  ("is_encoder_decoder", "maybe"), ("dropout_rate", 7)):
            must_fail = field_name not in ("is_encoder_decoder", "dropout_rate", "layer_norm_epsilon")
            self.llm(f"hf-config/{field_name}={str(value)[:12]}", json_edit("config.json", set_key(field_name, value)),
                     must_fail, base=b.hf)
        self.llm("hf-config/not-json", lambda f, rng: (f / "config.json").write_text("{'model_type': 't5',"), True, base=b.hf)
        self.llm("hf-config/a-list", lambda f, rng: (f / "config.json").write_text("[1, 2]"), True, base=b.hf)
        self.llm("hf-config/binary", lambda f, rng: (f / "config.json").write_bytes(b"\xff\xfe\x00garbage"), True, base=b.hf)
        self.llm("hf-config/deep-nesting", lambda f, rng: (f / "config.json").write_text("[" * 100000 + "]" * 100000),
                 True, base=b.hf)

        def custom_code(data, rng, folder, sentinel):
            (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
            (folder / "configuration_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
            return {**data, "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                         "AutoModel": "modeling_evil.EvilModel"}}
        self.llm("hf-config/auto-map-custom-code", json_edit("config.json", custom_code), False, base=b.hf, sentinel=True)
        self.llm("rankgen-bin/auto-map-custom-code", json_edit("config.json", custom_code), False, base=b.rankgen["bin"],
                 tokenizer=True, sentinel=True)
        # RankGen folders: its config is not a T5 config; the weights decide
        for fmt in ("bin", "safetensors"):
            file = "pytorch_model.bin" if fmt == "bin" else "model.safetensors"
            for edit_name in ("nan", "int64", "drop-key", "transpose"):
                edit = next(e for n, _, e in STATE_EDITS if n == edit_name)

                def write(folder, rng, edit=edit, fmt=fmt, file=file):
                    state = {f"t5_encoder.{k}": v for k, v in b.t5_state.items()}
                    if fmt == "safetensors":
                        del state["t5_encoder.encoder.embed_tokens.weight"]
                    edit(state, _chooser(state, lambda k: k.startswith("t5_encoder.encoder.block.")), rng)
                    _save(state, folder / file, fmt)
                self.llm(f"rankgen-{fmt}/state-{edit_name}", write, True, base=b.rankgen[fmt], tokenizer=True)
            self.llm(f"rankgen-{fmt}/config-not-json", lambda f, rng: (f / "config.json").write_text("{"), True,
                     base=b.rankgen[fmt], tokenizer=True)
            self.llm(f"rankgen-{fmt}/weights-truncated", lambda f, rng, file=file: (f / file).write_bytes(
                _bytes_damage((f / file).read_bytes(), rng, "truncate")), True, base=b.rankgen[fmt], tokenizer=True)
            self.llm(f"rankgen-{fmt}/weights-missing", lambda f, rng, file=file: (f / file).unlink(), True,
                     base=b.rankgen[fmt], tokenizer=True)
        for name, payload in self.payloads():
            def evil(folder, rng, sentinel, payload=payload):
                state = {f"t5_encoder.{k}": v for k, v in b.t5_state.items()}
                state["projection.weight"] = payload(sentinel)
                torch.save(state, folder / "pytorch_model.bin")
            self.llm(f"rankgen-bin/payload-{name}", evil, True, base=b.rankgen["bin"], tokenizer=True, sentinel=True)
        # sentencepiece tokenizer and its config
        spm_file = "spiece.model"
        for i in range(8):  # sentencepiece parses the model in C++: the most likely place for a crash
            self.llm(f"spiece/truncate-{i}", lambda f, rng: (f / spm_file).write_bytes(
                _bytes_damage((f / spm_file).read_bytes(), rng, "truncate")), False, base=b.hf)
            self.llm(f"spiece/flip-{i}", lambda f, rng: (f / spm_file).write_bytes(
                _bytes_damage((f / spm_file).read_bytes(), rng, "flip")), False, base=b.hf)
            self.llm(f"spiece/zero-{i}", lambda f, rng: (f / spm_file).write_bytes(
                _bytes_damage((f / spm_file).read_bytes(), rng, "zero")), False, base=b.hf)
        self.llm("spiece/garbage", lambda f, rng: (f / spm_file).write_bytes(_bytes_damage(b"", rng, "garbage")),
                 False, base=b.hf)
        self.llm("spiece/empty", lambda f, rng: (f / spm_file).write_bytes(b""), True, base=b.hf)
        self.llm("spiece/is-a-pickle", lambda f, rng, s: (f / spm_file).write_bytes(
            pickle.dumps(Code(exec, f"open({str(s)!r}, 'w')"))), True, base=b.hf, sentinel=True)
        for value in (10**8, 10**12, -3, "many", 1.5, None, [100]):
            self.llm(f"tokenizer-config/extra_ids={value}", lambda f, rng, v=value: (f / "tokenizer_config.json").write_text(
                json.dumps({"extra_ids": v})), True, base=b.hf)
        # tokenizer.json (ComfyUI ships T5's vocabulary that way)
        tj = "tokenizer.json"

        def tok_edit(edit):
            return json_edit(tj, lambda d, rng, folder: (edit(d, rng), d)[1])

        for name, edit in (
                ("model-is-BPE", lambda d, r: d["model"].__setitem__("type", "BPE")),
                ("model-missing", lambda d, r: d.pop("model")),
                ("vocab-missing", lambda d, r: d["model"].pop("vocab")),
                ("vocab-entry-string", lambda d, r: d["model"]["vocab"].__setitem__(r.randrange(50), "piece")),
                ("vocab-entry-triple", lambda d, r: d["model"]["vocab"].__setitem__(r.randrange(50), ["a", 1.0, 2])),
                ("vocab-score-string", lambda d, r: d["model"]["vocab"].__setitem__(r.randrange(50), ["a", "high"])),
                ("vocab-piece-number", lambda d, r: d["model"]["vocab"].__setitem__(r.randrange(50), [7, -1.0])),
                ("vocab-empty", lambda d, r: d["model"].__setitem__("vocab", [])),
                ("vocab-a-dict", lambda d, r: d["model"].__setitem__("vocab", {"a": 1})),
                ("unk-id-string", lambda d, r: d["model"].__setitem__("unk_id", "2")),
                ("unk-id-out-of-range", lambda d, r: d["model"].__setitem__("unk_id", 10**6)),
                ("unk-id-missing", lambda d, r: d["model"].pop("unk_id")),
                ("charsmap-not-base64", lambda d, r: _set_charsmap(d, "!!! not base64 !!!")),
                ("charsmap-random", lambda d, r: _set_charsmap(d, _b64(bytes(r.randrange(256) for _ in range(300))))),
                *[(f"charsmap-flipped-{i}", lambda d, r: _set_charsmap(d, _b64(_bytes_damage(_charsmap(d), r, "flip"))))
                  for i in range(6)],
                ("charsmap-truncated", lambda d, r: _set_charsmap(d, _b64(_charsmap(d)[: len(_charsmap(d)) // 3]))),
                ("charsmap-huge-offset", lambda d, r: _set_charsmap(d, _b64(struct.pack("<I", 2**31) + _charsmap(d)[4:]))),
                ("added-tokens-a-dict", lambda d, r: d.__setitem__("added_tokens", {"a": 1})),
                ("added-token-without-id", lambda d, r: d["added_tokens"][0].pop("id")),
                ("added-token-id-string", lambda d, r: d["added_tokens"][0].__setitem__("id", "x")),
                ("normalizer-a-list", lambda d, r: d.__setitem__("normalizer", [1, 2])),
                ("pre-tokenizer-junk", lambda d, r: d.__setitem__("pre_tokenizer", {"type": "Metaspace", "prepend_scheme": 5})),
        ):
            may_load = ("charsmap-random", "charsmap-truncated", "charsmap-huge-offset", "normalizer-a-list",
                        "pre-tokenizer-junk", "added-token-without-id", "added-token-id-string", "vocab-score-string",
                        "unk-id-missing")
            must_fail = not name.startswith("charsmap-flipped") and name not in may_load
            self.llm(f"tokenizer-json/{name}", tok_edit(edit), must_fail, base=b.hf_json_tokenizer)
        self.llm("tokenizer-json/not-json", lambda f, rng: (f / tj).write_text('{"model": {'), True, base=b.hf_json_tokenizer)
        self.llm("tokenizer-json/truncated", lambda f, rng: (f / tj).write_bytes(
            _bytes_damage((f / tj).read_bytes(), rng, "truncate")), True, base=b.hf_json_tokenizer)
        # shard index
        index = "model.safetensors.index.json"

        def index_edit(edit, must_fail=True, name=""):
            def write(folder, rng):
                data = json.loads((folder / index).read_text())
                key = sorted(data["weight_map"])[rng.randrange(len(data["weight_map"]))]
                edit(data, key, folder)
                (folder / index).write_text(json.dumps(data))
            self.llm(f"index/{name}", write, must_fail, base=b.sharded)

        def outside(data, key, folder):
            shutil.copy(b.t5_files["st"], folder.parent / "elsewhere.safetensors")
            data["weight_map"][key] = "../elsewhere.safetensors"

        index_edit(lambda d, k, f: d["weight_map"].__setitem__(k, ["model-00001-of-00006.safetensors"]), name="value-a-list")
        index_edit(lambda d, k, f: d["weight_map"].__setitem__(k, 3), name="value-a-number")
        index_edit(outside, name="path-outside-the-folder")
        index_edit(lambda d, k, f: d["weight_map"].__setitem__(k, str(b.t5_files["st"])), name="absolute-path")
        index_edit(lambda d, k, f: d["weight_map"].__setitem__(k, "model-99999-of-00006.safetensors"), name="missing-shard")
        index_edit(lambda d, k, f: d.__setitem__("weight_map", {}), name="empty-map")
        index_edit(lambda d, k, f: d.__setitem__("weight_map", [1, 2]), name="map-a-list")
        index_edit(lambda d, k, f: d.__setitem__("weight_map", "model.safetensors"), name="map-a-string")
        index_edit(lambda d, k, f: (f / d["weight_map"][k]).write_bytes(b"\0" * 100), name="shard-zeroed")
        self.llm("index/not-json", lambda f, rng: (f / index).write_text("{"), True, base=b.sharded)
        self.llm("folder/no-weights", lambda f, rng: (f / "model.safetensors").unlink(), True, base=b.hf)
        self.llm("folder/weights-are-a-folder", lambda f, rng: ((f / "model.safetensors").unlink(),
                                                                (f / "model.safetensors").mkdir()), True, base=b.hf)
        self.decoder_cases()

    def decoder_cases(self) -> None:
        b = self.bases

        def set_config(key, value):
            def write(folder, rng):
                data = json.loads((folder / "config.json").read_text())
                data[key] = value
                (folder / "config.json").write_text(json.dumps(data))
            return write

        for key, value, must_fail in (("num_hidden_layers", 10**6, True), ("num_hidden_layers", 10**9, True),
                                      ("num_hidden_layers", 0, True), ("num_hidden_layers", "3", True),
                                      ("hidden_size", 100000, True), ("hidden_size", 10**9, True),
                                      ("vocab_size", 10**9, True), ("intermediate_size", 10**8, True),
                                      ("num_attention_heads", 0, True), ("num_key_value_heads", 3, True),
                                      ("max_position_embeddings", 10**12, False), ("rope_scaling", {"type": "bogus"}, False),
                                      ("torch_dtype", "bogus", False), ("model_type", "mistral", False),
                                      ("hidden_act", "bogus", True)):
            self.llm(f"llama-config/{key}={str(value)[:14]}", set_config(key, value), must_fail, base=b.llama)

        def custom_code(folder, rng, sentinel):
            (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
            for file, cls in (("config.json", "modeling_evil.EvilModel"), ("tokenizer_config.json", "modeling_evil.Tok")):
                data = json.loads((folder / file).read_text())
                data["auto_map"] = {"AutoModel": cls, "AutoConfig": cls, "AutoTokenizer": [cls, cls]}
                if file == "tokenizer_config.json":
                    data["tokenizer_class"] = "EvilTokenizer"
                (folder / file).write_text(json.dumps(data))
        self.llm("llama/auto-map-custom-code", custom_code, False, base=b.llama, sentinel=True)
        self.llm("llama/unknown-model-type-with-code", lambda f, rng, s: (
            (f / "modeling_evil.py").write_text(f"open({str(s)!r}, 'w')\n"),
            (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                       "model_type": "evil", "auto_map": {"AutoModel": "modeling_evil.M"}}))),
                 True, base=b.llama, sentinel=True)
        for edit_name in ("nan", "int64", "transpose", "drop-key"):
            edit = next(e for n, _, e in STATE_EDITS if n == edit_name)

            def write(folder, rng, edit=edit):
                from safetensors.torch import load_file

                state = load_file(str(folder / "model.safetensors"))
                edit(state, _chooser(state, lambda k: ".layers." in k), rng)
                _save_safetensors(state, folder / "model.safetensors")
            self.llm(f"llama/state-{edit_name}", write, True, base=b.llama)
        for name, payload in self.payloads()[:3]:
            def evil(folder, rng, sentinel, payload=payload):
                from safetensors.torch import load_file

                state = load_file(str(folder / "model.safetensors"))
                state["lm_head.weight"] = payload(sentinel)
                (folder / "model.safetensors").unlink()
                torch.save(state, folder / "pytorch_model.bin")
            self.llm(f"llama/bin-payload-{name}", evil, True, base=b.llama, sentinel=True)
        self.llm("llama/tokenizer-json-not-json", lambda f, rng: (f / "tokenizer.json").write_text("{"), True, base=b.llama)
        self.llm("llama/tokenizer-json-truncated", lambda f, rng: (f / "tokenizer.json").write_bytes(
            _bytes_damage((f / "tokenizer.json").read_bytes(), rng, "truncate")), True, base=b.llama)
        for name, template in (("raises", "{{ raise_exception('no') }}"), ("broken", "{% for m in messages %}"),
                               ("calls-python", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
                               ("reads-a-file", "{% include '/etc/passwd' %}")):
            self.llm(f"llama/chat-template-{name}", lambda f, rng, t=template: (f / "chat_template.jinja").write_text(t),
                     True, base=b.llama, template="chat")


def _charsmap(data: dict) -> bytes:
    import base64

    from llm4gen_core.tokenization import _find

    return base64.b64decode(_find(data["normalizer"], "Precompiled")["precompiled_charsmap"])


def _set_charsmap(data: dict, value: str) -> None:
    from llm4gen_core.tokenization import _find

    _find(data["normalizer"], "Precompiled")["precompiled_charsmap"] = value


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def fuzz_cases(root: Path, bases: Bases, seed: int = 0) -> list[FuzzCase]:
    """Every generated case, its files written under ``root`` (deterministic for a seed)."""
    maker = _CaseMaker(root, bases, seed)
    maker.cam_cases()
    maker.llm_cases()
    return maker.cases
