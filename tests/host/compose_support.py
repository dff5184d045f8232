"""Helpers for the composition tests (test_compose_*.py): references computed outside ComfyUI,
prompt surgery on the stock graphs, snapshots to prove nothing upstream was mutated, and the
small synthetic files (LoRA, textual-inversion embeddings) those tests feed to stock loaders."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from scripts import stock_graphs as g
from llm4gen_core import load_cross_adapter, load_llm

CLIP_TOL = dict(atol=3e-2, rtol=3e-2)  # ComfyUI runs SD1.5's CLIP in fp16 on CPU; references are fp32
FUSION_TOL = 1e-4                      # our fusion of ComfyUI's own CLIP tokens: fp32 against fp32
SIDE = {0: "positive", 1: "negative"}
# One positive prompt for all composition tests: ComfyUI keeps a node's output cached while the
# next prompt has the same node with the same inputs, so consecutive tests skip re-encoding it
# (CLIP runs in fp16 on CPU: seconds per prompt on 2 cores).
POSITIVE = "a photo of red cube on a table"


# --- references ------------------------------------------------------------------------------

class Fusion:
    """The tiny LLM and CAM of ``llm4gen_models``, loaded by the tests' own llm4gen_core."""

    def __init__(self, models):
        self.llm = load_llm(models.llm_path, tokenizer_path=models.t5_tokenizer)
        self.adapter = load_cross_adapter(models.adapter_path)
        self._encoded: dict[str, torch.Tensor] = {}

    def llm_features(self, text: str) -> torch.Tensor:
        if text not in self._encoded:
            self._encoded[text] = self.llm.encode([text]).hidden_states
        return self._encoded[text]

    def __call__(self, clip_tokens: torch.Tensor, llm_text: str, strength: float = 1.0) -> torch.Tensor:
        with torch.no_grad():
            return self.adapter(clip_tokens.float(), self.llm_features(llm_text), strength=strength)


def assert_fused(context: torch.Tensor, clip_tokens: torch.Tensor, llm_text: str, fusion: Fusion, what: str) -> None:
    """``context`` is exactly the fusion of ``clip_tokens`` with ``llm_text``'s LLM features."""
    expected = fusion(clip_tokens, llm_text)
    assert context.shape == expected.shape, f"{what}: {list(context.shape)} != {list(expected.shape)}"
    error = (context.float() - expected).abs().max().item()
    assert error < FUSION_TOL, f"{what}: differs from llm4gen_core's fusion by {error}"


def rows_by_side(record: dict, key: str = "context") -> dict[str, torch.Tensor]:
    """The rows of a batched call's context, by side; each side's first row (a latent batch
    repeats every side's rows)."""
    per_side = record[key].shape[0] // len(record["cond_or_uncond"])
    return {SIDE[c]: record[key][i * per_side: i * per_side + 1] for i, c in enumerate(record["cond_or_uncond"])}


def clip_reference_with_vectors(clip_reference, ids: torch.Tensor, vectors: dict[int, torch.Tensor]) -> torch.Tensor:
    """transformers' CLIP output for ``ids`` [1, 77] where positions in ``vectors`` take the given
    input embeddings instead of a vocabulary row: what a textual-inversion embedding must give."""
    model = clip_reference.model
    table = model.get_input_embeddings()
    rows = table.weight.detach().clone()
    extra = torch.stack([v.float() for v in vectors.values()])
    wider = torch.nn.Embedding(rows.shape[0] + len(vectors), rows.shape[1])
    with torch.no_grad():
        wider.weight.copy_(torch.cat([rows, extra]))
    ids = ids.clone()
    for n, position in enumerate(vectors):
        ids[0, position] = rows.shape[0] + n
    model.set_input_embeddings(wider)
    try:
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state
    finally:
        model.set_input_embeddings(table)


# --- prompt surgery --------------------------------------------------------------------------

def latent_only(prompt: dict) -> dict:
    """Drop VAEDecode + SaveImage (the full-size VAE is the slowest part of a 64x64 graph);
    SaveLatent stays as the output node."""
    prompt = {k: v for k, v in prompt.items() if k not in (g.DECODE, g.SAVE)}
    assert g.SAVE_LATENT in prompt
    return prompt


def saved_latent(result) -> torch.Tensor:
    from safetensors.torch import load_file

    (path,) = result.files("latents")
    return load_file(str(path))["latent_tensor"]


# --- snapshots: nothing upstream is mutated --------------------------------------------------

def snapshot(value):
    """A deep record of ``value``: containers and tensors copied, other objects kept by
    reference (ControlNets, patchers: compared by identity)."""
    if torch.is_tensor(value):
        return ("tensor", id(value), value.detach().clone())
    if isinstance(value, dict):
        return ("dict", id(value), {k: snapshot(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, id(value), [snapshot(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. LLM Encode's EncodedText
        return ("dataclass", id(value), {f.name: snapshot(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return ("object", id(value), value)


def assert_unchanged(before, value, where: str = "output") -> None:
    """``value`` is the same object tree, with the same contents, as when ``before`` was taken."""
    kind, ident, content = before
    assert id(value) == ident, f"{where}: a different object than the one snapshotted"
    if kind == "tensor":
        assert value.shape == content.shape and value.dtype == content.dtype, f"{where}: tensor reshaped/cast"
        assert torch.equal(value, content), f"{where}: tensor modified in place"
    elif kind == "dict":
        assert set(value) == set(content), f"{where}: keys changed {sorted(set(value) ^ set(content))}"
        for k in content:
            assert_unchanged(content[k], value[k], f"{where}[{k!r}]")
    elif kind == "dataclass":
        for name, item in content.items():
            assert_unchanged(item, getattr(value, name), f"{where}.{name}")
    elif kind in ("list", "tuple"):
        assert len(value) == len(content), f"{where}: length changed"
        for i, item in enumerate(content):
            assert_unchanged(item, value[i], f"{where}[{i}]")


# --- synthetic files for stock loaders -------------------------------------------------------

def write_lora(path: Path, targets: dict[str, tuple[int, int]], rank: int = 4, alpha: float = 2.0,
               scale: float = 0.15, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA (``<name>.lora_up.weight`` [out, rank], ``.lora_down.weight``
    [rank, in], ``.alpha``) for linear layers named ``targets`` {lora name: (out, in)}.
    Returns {lora name: the weight delta ComfyUI should add, alpha/rank * up @ down}."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state, deltas = {}, {}
    for name, (out_dim, in_dim) in targets.items():
        up = (scale * torch.randn(out_dim, rank, generator=gen)).half()
        down = (scale * torch.randn(rank, in_dim, generator=gen)).half()
        state[f"{name}.lora_up.weight"] = up
        state[f"{name}.lora_down.weight"] = down
        state[f"{name}.alpha"] = torch.tensor(alpha).half()
        deltas[name] = (alpha / rank) * (up.float() @ down.float())
    save_file(state, str(path))
    return deltas
