"""Where the pack's models live: ComfyUI model folders, registered through ``folder_paths``.

- ``models/llm4gen``: Cross-Adapter weights (the release's ``projector.pth`` or a safetensors copy).
- ``models/text_encoders`` and ``models/LLM``: LLMs, either single ``.safetensors`` files or
  Hugging Face style folders (``config.json`` + weights), e.g. the RankGen T5-XL folder.

Paths from ``extra_model_paths.yaml`` are kept: ours are added beside them, never over them.
"""
from __future__ import annotations

import os

import folder_paths

ADAPTER_FOLDER = "llm4gen"
LLM_FOLDERS = ("text_encoders", "LLM")
ADAPTER_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin"}
LLM_FILE_EXTENSIONS = {".safetensors", ".sft"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def register_model_folders() -> None:
    """Add the pack's default folders (idempotent) and make sure they accept our file types."""
    defaults = {ADAPTER_FOLDER: ADAPTER_EXTENSIONS, "LLM": LLM_FILE_EXTENSIONS}
    for name, extensions in defaults.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        paths, registered = folder_paths.folder_names_and_paths[name]
        if isinstance(registered, set) and registered:
            registered.update(extensions)
        elif not registered:
            folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def adapter_choices() -> list[str]:
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(name: str) -> str:
    path = folder_paths.get_full_path(ADAPTER_FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"Cross-Adapter file '{name}' is not in models/{ADAPTER_FOLDER} "
            f"(looked in: {', '.join(folder_paths.get_folder_paths(ADAPTER_FOLDER))}). "
            "Put the release's projector.pth (or a .safetensors copy) there and press R to refresh."
        )
    return path


def is_model_folder(path: str) -> bool:
    """An HF-style model folder: a config or the weights files transformers would look for."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("config.json",) + _WEIGHT_FILES
    )


def llm_choices() -> list[str]:
    """Model folders and single .safetensors files in the LLM folders, with folder-relative
    names. Files inside a model folder are its shards, not choices of their own. Symlinked folders
    are followed, each real folder once (two links back up the tree made the walk exponential)."""
    found: set[str] = set()
    for root in _llm_roots():
        visited: set[str] = set()
        for here, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(here)
            if real in visited:  # a symlink back up the tree: walking it again would never end
                dirs.clear()
                continue
            visited.add(real)
            rel = os.path.relpath(here, root)
            if rel != "." and is_model_folder(here):
                found.add(rel.replace(os.sep, "/"))
                dirs.clear()
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                if os.path.splitext(f)[1].lower() in LLM_FILE_EXTENSIONS:
                    found.add(os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/"))
    return sorted(found)


def llm_path(name: str) -> str:
    relative = os.path.normpath(name)
    if os.path.isabs(relative) or relative.startswith(".."):
        raise FileNotFoundError(f"'{name}' is not a name inside the LLM model folders")
    for root in _llm_roots():
        candidate = os.path.join(root, relative)
        if os.path.isfile(candidate) or is_model_folder(candidate):
            return candidate
    raise FileNotFoundError(
        f"LLM '{name}' is not in models/text_encoders or models/LLM "
        f"(looked in: {', '.join(_llm_roots())}). Put the model folder there and press R to refresh."
    )


def files_fingerprint(path: str) -> tuple:
    """What changes when a model file is replaced on disk, by a rename over it or by rewriting it in
    place: (name, size, mtime_ns, inode) of the file, or of every file directly in the folder. For a
    loader's ``fingerprint_inputs``, so ComfyUI loads a changed model again instead of serving the
    old one from its cache (an LLM whose weights are mapped from the file would read the new bytes
    through the old layout). Never raises: a missing or unreadable path gives a value of its own,
    and the loader then says what is wrong."""
    try:
        if os.path.isdir(path):
            entries = sorted((e.name, e.stat()) for e in os.scandir(path) if e.is_file())
        else:
            entries = [(os.path.basename(path), os.stat(path))]
        return tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in entries)
    except OSError as exc:
        return ("unreadable", path, exc.errno)


def comfy_t5_tokenizer() -> str:
    """ComfyUI's bundled T5 (v1.1) sentencepiece vocabulary: the one RankGen uses."""
    import comfy.model_management

    return os.path.join(os.path.dirname(comfy.model_management.__file__), "text_encoders", "t5_tokenizer")


def _llm_roots() -> list[str]:
    roots: list[str] = []
    for folder in LLM_FOLDERS:
        if folder in folder_paths.folder_names_and_paths:
            roots += [p for p in folder_paths.get_folder_paths(folder) if p not in roots]
    return roots
