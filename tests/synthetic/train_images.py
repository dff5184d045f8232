"""Training data made locally: images drawn with PIL, image folders with metadata.jsonl, WebDataset
shards, and broken files of every kind the data layer must skip (each with the reason it must give).

Everything is written under a folder the caller gives (pytest's tmp_path); nothing is downloaded.
"""
from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zlib
from pathlib import Path

from PIL import Image

RESOLUTION = 32


def noise_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Random pixels: every crop of it differs, so a wrong crop or flip shows in the tensor."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, followed by almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def good_image_bytes(number: int) -> bytes:
    """Image ``number`` of the set: sizes, formats and modes vary, all usable at RESOLUTION."""
    size = (40 + 3 * (number % 5), 36 + 5 * (number % 3))
    kind = number % 4
    if kind == 0:
        return encode(noise_image(number, size), "PNG")
    if kind == 1:
        return encode(noise_image(number, size), "JPEG", quality=90)
    if kind == 2:
        return encode(noise_image(number, size, "RGBA"), "PNG")
    return encode(noise_image(number, size, "P"), "PNG")


def write_folder(root: Path, count: int = 16, extra_lines: list[str] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for number in range(count):
        name = f"img{number:02d}.png" if number % 4 != 1 else f"img{number:02d}.jpg"
        (root / name).write_bytes(good_image_bytes(number))
        entry = {"file_name": name, "text": f"caption {number}"}
        if number % 2:
            entry["pairs"] = [["red", f"thing{number}"]]
        lines.append(json.dumps(entry))
    (root / "metadata.jsonl").write_text("\n".join(lines + list(extra_lines)) + "\n")
    return root


# Bad files and the reason each must be skipped with.
def bad_files() -> dict[str, tuple[bytes, str]]:
    valid = encode(noise_image(99, (64, 64)), "PNG")
    return {
        "corrupt.png": (random.Random(1).randbytes(3000), "unreadable image"),
        "truncated.png": (valid[: len(valid) * 6 // 10], "unreadable image"),
        "empty.png": (b"", "empty file"),
        "text.png": (b"this is a caption file, renamed .png\n" * 10, "unreadable image"),
        "tiny.png": (encode(noise_image(5, (10, 12))), "too small"),
        "bomb.png": (png_declaring(9000, 9000), "too large"),
        "gigabomb.png": (png_declaring(100_000, 100_000), "too large"),
    }


def add_lines(root: Path, names: list[str]) -> None:
    with open(root / "metadata.jsonl", "a") as metadata:
        for name in names:
            metadata.write(json.dumps({"file_name": name, "text": f"bad {name}"}) + "\n")


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]], mode: str = "w") -> Path:
    """A WebDataset tar: each sample's members in a row, named ``key.ext``."""
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def shard_sample(number: int, caption: str = "txt") -> tuple[str, dict[str, bytes]]:
    image = good_image_bytes(number)
    extension = "jpg" if number % 4 == 1 else "png"
    if caption == "txt":
        return f"s{number:03d}", {extension: image, "txt": f"caption {number}".encode()}
    meta = {"caption": f"caption {number}", "pairs": [["blue", f"thing{number}"]]}
    return f"s{number:03d}", {extension: image, "json": json.dumps(meta).encode()}
