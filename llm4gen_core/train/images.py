"""Image bytes from untrusted training data to a [3, R, R] tensor in [-1, 1], or a reason to skip.

Size limits are checked on what the file declares, before anything is decoded: a file of a few
bytes may declare a gigapixel image (a decompression bomb). Pillow's global ``MAX_IMAGE_PIXELS``
is left alone (ComfyUI shares the process); :data:`MAX_IMAGE_PIXELS` is ours, and Pillow's own
``DecompressionBombError`` (raised while opening beyond twice its limit) is caught as well.

Every image becomes 8-bit RGB before it is resized: EXIF orientation applied, transparency
composited on white (dropping the alpha channel would leave whatever colour the transparent
pixels happen to hold), 16-bit greyscale scaled down rather than clipped (Pillow's own
conversion clips every value above 255 to white).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

# Larger than any photo a text-to-image set needs (8192 x 8192); decoded as RGB it is 200 MB.
MAX_IMAGE_PIXELS = 8192 * 8192
# Bytes one image file may hold: far above any real photo, well below a worker's memory.
MAX_IMAGE_BYTES = 64 << 20
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# Reasons a sample is skipped, as they are counted and shown to the user.
MISSING_FILE = "missing file"
EMPTY_FILE = "empty file"
UNREADABLE_IMAGE = "unreadable image"
TOO_SMALL = "too small"
TOO_LARGE = "too large"


@dataclass(frozen=True)
class ImageProblem:
    """Why an image cannot be used: ``reason`` is one of the constants above, ``detail`` says more."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageRules:
    """How every image of a dataset is turned into a tensor."""

    resolution: int
    min_image_size: int
    center_crop: bool = True
    random_flip: bool = False


@dataclass(frozen=True)
class DecodedImage:
    pixels: torch.Tensor               # [3, R, R] float32 in [-1, 1]
    original_size: tuple[int, int]     # (height, width) as stored (upright)
    crop_top_left: tuple[int, int]     # (top, left) of the crop in the resized image


def decode_image(data: bytes, rules: ImageRules, rng: random.Random) -> DecodedImage | ImageProblem:
    """``data`` (the whole file) to a [3, R, R] float32 tensor in [-1, 1], with the original size
    and the crop's corner (what SDXL conditions on).

    ``rng`` is the sample's own generator: random crop and flip must not depend on global state,
    so that a run, its resumption and its data-loader workers all produce the same pixels.
    """
    if not data:
        return ImageProblem(EMPTY_FILE, "the file holds 0 bytes")
    if len(data) > MAX_IMAGE_BYTES:
        return ImageProblem(TOO_LARGE, f"{len(data)} bytes, more than {MAX_IMAGE_BYTES}")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        return ImageProblem(TOO_LARGE, str(error))
    except Exception as error:  # untrusted bytes: any failure to parse is a bad file, not a crash
        return ImageProblem(UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            return ImageProblem(TOO_LARGE, f"declares {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}")
        if min(width, height) < rules.min_image_size:
            return ImageProblem(TOO_SMALL, f"{width}x{height}, shorter side below {rules.min_image_size}")
        try:
            rgb, original = _to_rgb(image, rules.resolution)
        except Exception as error:  # truncated or corrupt pixel data shows up only while decoding
            return ImageProblem(UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
    cropped, corner = _resize_and_crop(rgb, rules, rng)
    return DecodedImage(_to_tensor(cropped), original, corner)


def _to_rgb(image: Image.Image, resolution: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decoded, upright, 8-bit RGB, and its (height, width) before any JPEG draft scaling."""
    width, height = image.size
    if image.format == "JPEG":
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly; draft keeps both sides >= resolution.
        image.draft("RGB", (resolution, resolution))
    image.load()
    try:
        upright = ImageOps.exif_transpose(image)
        if upright.size[::-1] == image.size:  # rotated by 90 degrees: the original is turned too
            width, height = height, width
        image = upright
    except Exception:  # a damaged EXIF block: keep the image as stored
        pass
    if image.mode in _SIXTEEN_BIT_MODES:
        image = image.convert("I").point(lambda value: value * (1 / 257), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB"), (height, width)


def _resize_and_crop(image: Image.Image, rules: ImageRules, rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
    """Shorter side to R (bicubic), then an R x R crop (centre or seeded random), then maybe a flip;
    returns the image and the crop's (top, left) (mirrored when flipped, as seen in the result)."""
    size = rules.resolution
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    width, height = new_size
    if rules.center_crop:
        left, top = (width - size) // 2, (height - size) // 2
    else:
        left, top = rng.randint(0, width - size), rng.randint(0, height - size)
    image = image.crop((left, top, left + size, top + size))
    if rules.random_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = width - left - size
    return image, (top, left)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    size = image.size[0]
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0).contiguous()
