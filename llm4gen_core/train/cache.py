"""--cache-dir: VAE latents and CLIP/LLM features on disk, so each image is encoded once.

One safetensors file per sample (fp16: the latent distribution's mean and log-variance, CLIP's
[77, Dc] and the LLM's [Tl, Dl] features), in a folder named by a fingerprint of everything the
features depend on: the VAE, CLIP and LLM files (path, size, modification time), the LLM recipe,
the resolution. Another model or setting gets another folder; a changed caption is re-encoded.
Values are rounded to fp16 also on first use, so a run computes the same whether or not the
cache was warm.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .text import TextFeatures

CACHE_DTYPE = torch.float16


def fingerprint(paths: list[Path], settings: dict) -> str:
    entries = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        entries += [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps({"files": entries, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class FeatureCache:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, cfg, base, llm, recipe) -> FeatureCache:
        source = Path(base.source)
        parts = ([source / name for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
                  if (source / name).is_dir()] if source.is_dir() else [source])
        settings = {"recipe": recipe.to_metadata(), "resolution": cfg.resolution, "center_crop": cfg.center_crop,
                    "clip_tokenizer": str(cfg.clip_tokenizer), "llm_tokenizer": str(cfg.tokenizer),
                    "llm_dtype": str(llm.dtype), "version": 2}
        return cls(cfg.cache_dir / fingerprint([*parts, Path(llm.source)], settings))

    def _file(self, key: str) -> Path:
        return self.folder / (hashlib.sha1(key.encode()).hexdigest() + ".safetensors")

    def features(self, batch, base, text, device, weight_dtype):
        """(latent moments [B, 8, h, w], TextFeatures) for the batch."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        found: dict[int, dict[str, torch.Tensor]] = {}
        for i, (key, caption) in enumerate(zip(batch.keys, batch.texts)):
            path = self._file(key)
            if path.is_file():
                try:
                    with safe_open(str(path), framework="pt") as f:
                        if f.metadata().get("caption_sha") == _sha(caption):
                            found[i] = {name: f.get_tensor(name) for name in f.keys()}
                except (OSError, ValueError, RuntimeError):  # a damaged entry is recomputed
                    pass
        missing = [i for i in range(len(batch.keys)) if i not in found]
        if missing:
            with torch.no_grad():
                pixels = batch.pixel_values[missing].to(device, next(base.vae.parameters()).dtype)
                moments = base.vae.encode(pixels).latent_dist.parameters
                computed = text.features([batch.texts[i] for i in missing])
            for row, i in enumerate(missing):
                entry = {"moments": moments[row], "clip": computed.clip[row], "llm": computed.llm[row]}
                if computed.pooled is not None:
                    entry["pooled"] = computed.pooled[row]
                entry = {k: v.detach().to("cpu", CACHE_DTYPE).contiguous() for k, v in entry.items()}
                path = self._file(batch.keys[i])
                tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
                save_file(entry, str(tmp), metadata={"key": batch.keys[i], "caption_sha": _sha(batch.texts[i])})
                os.replace(tmp, path)
                found[i] = entry
        def stacked(name):
            if name not in found[0]:
                return None
            return torch.stack([found[i][name] for i in range(len(batch.keys))]).to(device)

        features = TextFeatures(stacked("clip"), stacked("llm"), stacked("pooled")).to(device, weight_dtype)
        return stacked("moments").float(), features


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
