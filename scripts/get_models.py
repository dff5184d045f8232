"""Put the model files the bundled workflows use where ComfyUI looks for them.

    python -m scripts.get_models                       # list what is there and what is missing
    python -m scripts.get_models --release DIR         # link a local copy of the LLM4GEN release
    python -m scripts.get_models --download            # fetch the public files (huggingface_hub)
    python -m scripts.get_models --download --llm4gen-repo OWNER/NAME   # ... and the release from a hub repo

(from the repository root, with its .venv's Python).

Nothing is downloaded unless ``--download`` is given; the nodes and the tests never download.
The model folders are those of the base directory the headless runner uses: ``--base-directory``,
else ``LLM4GEN_BASE_DIR``, else your ComfyUI (``COMFYUI_PATH``), else
``~/.cache/comfyui-llm4gen/comfyui-base``.

The LLM4GEN release is a folder with ``unet/diffusion_pytorch_model.safetensors`` (the fine-tuned
UNet, diffusers format) and ``projector.pth`` (the Cross-Adapter); ``--release`` links them (or
copies them, ``--copy``) under the names the workflows use. Its files keep their own license.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import comfyui_host
from . import workflow_specs as specs


class GetModelsError(RuntimeError):
    """A model file cannot be put in place as asked (a release folder without its files, no
    huggingface_hub for --download). ``main()`` prints the message and exits with status 2."""


@dataclass(frozen=True)
class ModelFile:
    folder: str          # under models/
    name: str            # the name the workflows use
    what: str
    repo: str | None     # public hub repository, for --download
    files: tuple[str, ...] = ()  # files of that repository (one file, or a folder's files)
    release: str | None = None   # path inside the LLM4GEN release folder
    needed_by: str = "all"

    @property
    def is_folder(self) -> bool:
        return len(self.files) > 1


MODELS = [
    ModelFile("diffusion_models", specs.UNET, "LLM4GEN fine-tuned SD1.5 UNet", None,
              ("unet/diffusion_pytorch_model.safetensors",), release="unet/diffusion_pytorch_model.safetensors"),
    ModelFile("llm4gen", specs.PROJECTOR, "LLM4GEN Cross-Adapter", None, ("projector.pth",), release="projector.pth"),
    ModelFile("LLM", specs.RANKGEN, "RankGen T5-XL encoder (4.9 GB)", "kalpeshk2011/rankgen-t5-xl-all",
              ("config.json", "pytorch_model.bin")),
    ModelFile("checkpoints", specs.SD15, "Stable Diffusion 1.5 (CLIP and VAE; 2 GB)", "Comfy-Org/stable-diffusion-v1-5-archive",
              (specs.SD15,)),
    ModelFile("controlnet", specs.CONTROLNET, "SD1.5 canny ControlNet (ControlNet workflow only; 0.7 GB)",
              "comfyanonymous/ControlNet-v1-1_fp16_safetensors", (specs.CONTROLNET,), needed_by="controlnet"),
]


def target(base: Path, model: ModelFile) -> Path:
    return base / "models" / model.folder / model.name


def present(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() and any(
            (path / f).is_file() for f in ("pytorch_model.bin", "model.safetensors", "model.safetensors.index.json"))
    return path.is_file()


def show(base: Path) -> int:
    print(f"model folders: {base / 'models'}")
    missing = 0
    for model in MODELS:
        path = target(base, model)
        state = "ok     " if present(path) else "MISSING"
        missing += not present(path)
        source = model.repo or "the LLM4GEN release (--release DIR, or --download --llm4gen-repo)"
        print(f"  {state} {path}\n          {model.what}; from {source}")
    print("  (any SD1.5 LoRA in models/loras/ for the ControlNet + LoRA workflow)")
    return 1 if missing else 0


def link_release(base: Path, release: Path, copy: bool) -> None:
    for model in MODELS:
        if not model.release:
            continue
        source = release / model.release
        if not source.is_file():
            raise GetModelsError(f"{source} not found: --release needs the release folder "
                             "(with unet/diffusion_pytorch_model.safetensors and projector.pth)")
        path = target(base, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            print(f"  already there, left alone: {path}")
            continue
        if copy:
            shutil.copyfile(source, path)
        else:
            path.symlink_to(source.resolve())
        print(f"  {'copied' if copy else 'linked'} {source} -> {path}")


def download(base: Path, llm4gen_repo: str | None, with_controlnet: bool) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise GetModelsError("--download needs huggingface_hub: pip install huggingface_hub") from None
    for model in MODELS:
        repo = model.repo or llm4gen_repo
        path = target(base, model)
        if repo is None:
            print(f"  skipped {model.name}: no public repository known; give --llm4gen-repo or use --release DIR")
            continue
        if model.needed_by == "controlnet" and not with_controlnet:
            continue
        if present(path):
            print(f"  already there: {path}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"  downloading {model.what} from {repo} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=path.parent) as tmp:
            got = [Path(hf_hub_download(repo_id=repo, filename=f, local_dir=tmp)) for f in model.files]
            if model.is_folder:
                folder = Path(tmp) / "folder"
                folder.mkdir()
                for f in got:
                    os.replace(f, folder / f.name)
                os.replace(folder, path)
            else:
                os.replace(got[0], path)
        print(f"  saved {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--base-directory", help="ComfyUI base directory whose models/ to fill")
    parser.add_argument("--release", help="a local copy of the LLM4GEN release to link in")
    parser.add_argument("--copy", action="store_true", help="with --release: copy instead of linking")
    parser.add_argument("--download", action="store_true", help="download the public files (needs internet)")
    parser.add_argument("--llm4gen-repo", help="with --download: a hub repository holding the LLM4GEN release")
    parser.add_argument("--controlnet", action="store_true", help="with --download: the canny ControlNet too")
    args = parser.parse_args(argv)
    base, _ = comfyui_host.models_base(args.base_directory)
    try:
        if args.release:
            link_release(base, Path(args.release).expanduser(), args.copy)
        if args.download:
            download(base, args.llm4gen_repo, args.controlnet)
    except GetModelsError as e:
        print(e, file=sys.stderr)
        return 2
    return show(base)


if __name__ == "__main__":
    raise SystemExit(main())
