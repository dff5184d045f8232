"""Load LLM under ComfyUI's low-VRAM loading, on the CPU, through ComfyUI's own code paths.

There is no GPU here, and ``load_models_gpu`` loads everything whole when the load device is the
CPU. ``short_vram`` tells ComfyUI's model management what a GPU with little free memory would tell
it (the device is not a CPU, it is in the normal-VRAM state, and this much is free), so the LLM
Encode node's own ``load_models_gpu`` call takes the path it takes on such a GPU: ``ModelPatcher``
partially loads the LLM within the budget ComfyUI computes, and leaves the rest to be cast per
layer. The tensors stay on the CPU either way; what a real GPU would add (transfers, streams,
pinned memory) is not exercised here.
"""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from llm4gen_core.llm_convert import convert_llm

PROMPT = "Ground view of the Great Pyramids and Sphinx on the moon's surface, an astronaut in the foreground"


@pytest.fixture(scope="module")
def llm_files(comfy_base, llm4gen_models, tmp_path_factory) -> dict[str, str]:
    """Model names for Load LLM: the tiny RankGen-layout T5 folder, its scaled-fp8 file, and tiny
    Llama and Gemma 3 folders (RMS norms, rotary tables, Gemma's scaled embedding)."""
    from synthetic.llm import tiny_decoder, tiny_decoder_folder

    folder = tmp_path_factory.mktemp("lowvram-llms")
    fp8_file = folder / "lowvram-tiny-rankgen-fp8.safetensors"  # names unlike other host tests' files
    convert_llm(llm4gen_models.llm_path, fp8_file, "fp8")
    names = {"t5": llm4gen_models.llm, "t5-fp8": comfy_base.place("LLM", fp8_file)}
    for family in ("llama", "gemma3_text"):
        decoder = tiny_decoder_folder(folder / f"lowvram-tiny-{family}", tiny_decoder(family))
        names[family] = comfy_base.place("LLM", decoder)
    return names


@pytest.fixture
def mm(comfy_inprocess):
    import comfy.model_management as mm

    mm.unload_all_models()
    yield mm
    mm.unload_all_models()


@pytest.fixture
def short_vram(mm, monkeypatch):
    """``short_vram(weights)``: from now on ComfyUI's model management sees a normal-VRAM GPU whose
    free memory leaves ``weights`` bytes for model weights once it has set aside what it keeps for
    inference (``load_models_gpu`` then loads at most that much of a model)."""
    def set_budget(weights: int) -> None:
        free = int(mm.minimum_inference_memory() + weights)
        monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
        monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
        monkeypatch.setattr(mm, "get_free_memory",
                            lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)
    return set_budget


def pack_module(comfy_inprocess, name: str):
    """A module of the pack as ComfyUI imported it (not the tests' own import of llm4gen_core)."""
    return sys.modules[f"{comfy_inprocess.pack_module().__name__}.{name}"]


def modules_by_state(patcher):
    """(left out, loaded): the holder's modules ModelPatcher manages, split by what its last load did
    with them (``prev_comfy_cast_weights`` marks a module it left to cast per layer)."""
    left, loaded = [], []
    for name, module in patcher.model.named_modules():
        if hasattr(module, "comfy_cast_weights"):
            (left if hasattr(module, "prev_comfy_cast_weights") else loaded).append((name, module))
    return left, loaded


CASES = [("t5", "fp32"), ("t5", "fp16"), ("t5-fp8", "fp32"), ("t5-fp8", "bf16"), ("llama", "fp32"),
         ("gemma3_text", "fp32")]


@pytest.mark.parametrize("model,dtype", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_short_vram_loads_the_llm_partially_with_the_same_features(comfy_inprocess, mm, short_vram, monkeypatch,
                                                                   llm_files, model, dtype):
    """(a) ModelPatcher really leaves part of the LLM out, and each layer left out computes with
    what ComfyUI's ``cast_to`` hands it on the compute device, never with its own tensors: once the
    partial load is done, the tensors of the layers left out are overwritten with NaN on the
    offload device, and ``cast_to`` hands out their true values (what a copy to a GPU would give);
    (b) the features equal the fully loaded LLM's; (c) with room again, it loads whole.
    fp16: T5's feed-forward output projections stay fp32 (weights not in the compute dtype);
    fp8: float8 weights and float32 scales, upcast per layer to fp32 or bf16."""
    from comfy.patcher_extension import CallbacksMP

    fp8 = pack_module(comfy_inprocess, "llm4gen_core.fp8")
    node = comfy_inprocess.node_class
    llm = node("LLM4GENLoadLLM").execute(llm_files[model], dtype, "default")[0]
    encode = node("LLM4GENLLMEncode")
    patcher, holder = llm.patcher, llm.patcher.model

    whole = encode.execute(llm, PROMPT, 256)[0].hidden_states  # the CPU: loaded whole
    assert not holder.model_lowvram and patcher.loaded_size() == patcher.model_size()
    mm.unload_all_models()

    true_values, sent = {}, []

    def poison_what_was_left_out(patcher, device, memory, force_patch_weights, full_load):
        for name, module in modules_by_state(patcher)[0]:
            for tname, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
                if isinstance(module, fp8.ScaledFP8Embedding) and tname == "weight":
                    continue  # looked up where it is kept; only the rows it gives travel
                true_values[id(tensor)] = (tensor, tensor.detach().clone())
                tensor.data.fill_(float("nan"))

    real_cast_to = mm.cast_to

    def cast_to(tensor, dtype=None, device=None, *args, **kwargs):
        sent.append((id(tensor), device))
        source = true_values.get(id(tensor), (None, tensor))[1]
        return real_cast_to(source, dtype, device, *args, **kwargs)

    # Room for about half of the weights besides the largest layer, which ComfyUI keeps free as the
    # buffer a layer left out is cast into (the embedding: it does not fit and is left out).
    largest = max(sum(t.nbytes for t in m.parameters(recurse=False)) for m in holder.modules())
    budget = largest + (patcher.model_size() - largest) // 2
    short_vram(budget)
    patcher.add_callback(CallbacksMP.ON_LOAD, poison_what_was_left_out)
    monkeypatch.setattr(mm, "cast_to", cast_to)
    try:
        partial = encode.execute(llm, PROMPT, 256)[0].hidden_states
    finally:
        patcher.callbacks[CallbacksMP.ON_LOAD][None].remove(poison_what_was_left_out)
        for tensor, value in true_values.values():
            tensor.data.copy_(value)

    assert holder.model_lowvram and holder.lowvram_patch_counter == 0  # no weight patches on the LLM
    assert 0 < patcher.loaded_size() <= budget < patcher.model_size()
    left, loaded = modules_by_state(patcher)
    assert left and loaded, "expected some layers loaded and some left to cast per layer"
    assert all(m.comfy_cast_weights for _, m in left) and not any(m.comfy_cast_weights for _, m in loaded)
    assert sum(mm.module_size(m) for _, m in loaded) == patcher.loaded_size()
    assert true_values, "no tensor of a layer left out was found"
    to_device = {key for key, device in sent if device == patcher.load_device}
    missing = [name for name, m in left for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
               if id(t) in true_values and id(t) not in to_device]
    assert not missing, f"layers left out that computed without casting to the compute device: {missing}"
    loaded_tensors = {id(t) for _, m in loaded for t in m.parameters(recurse=False)}
    assert not loaded_tensors & {key for key, _ in sent}, "a loaded layer took the cast path"
    assert torch.equal(partial, whole)

    short_vram(2 * patcher.model_size())
    again = encode.execute(llm, PROMPT, 256)[0].hidden_states
    left, loaded = modules_by_state(patcher)
    assert not holder.model_lowvram and patcher.loaded_size() == patcher.model_size()
    assert not left and not any(m.comfy_cast_weights for _, m in loaded)
    assert torch.equal(again, whole)


def test_model_size_counts_the_tied_t5_embedding_once(comfy_inprocess, mm, llm_files):
    """ComfyUI decides how much of the LLM fits from ModelPatcher.model_size(): the bytes of its
    weights, T5's input embedding (tied to ``shared``, in the state dict twice) counted once."""
    llm = comfy_inprocess.node_class("LLM4GENLoadLLM").execute(llm_files["t5"], "fp32", "default")[0]
    holder = llm.patcher.model
    unique = {id(p): p for p in holder.parameters()}
    assert llm.patcher.model_size() == sum(p.nbytes for p in unique.values())
    shared = holder.inner.shared.weight
    assert mm.module_size(holder) == llm.patcher.model_size() + shared.nbytes  # ComfyUI's own count


def test_the_llm_is_offloaded_after_encoding(comfy_inprocess, mm, llm_files, monkeypatch):
    """When the LLM computes on another device than it is kept on (a GPU, normally), LLM Encode
    takes it off that device again once it has its features, so KSampler finds the memory it
    would find without LLM4GEN; not with --highvram (ComfyUI's "keep models in VRAM"), nor when
    there is nothing to free. The CPU here has one device: the tests' second one is ``cpu:0``,
    a different device to ComfyUI's model management and the same memory to torch."""
    patching = pack_module(comfy_inprocess, "nodes.patching")
    node = comfy_inprocess.node_class
    llm = node("LLM4GENLoadLLM").execute(llm_files["t5"], "fp32", "default")[0]
    encode = node("LLM4GENLLMEncode")

    def loaded(patcher) -> bool:
        return any(m.model is patcher for m in mm.current_loaded_models)

    whole = encode.execute(llm, PROMPT, 256)[0].hidden_states
    assert loaded(llm.patcher)  # load device = offload device: nothing to free, kept

    elsewhere = dataclasses.replace(llm, patcher=patching.make_patcher(
        llm.llm.model, torch.device("cpu", 0), torch.device("cpu"), partial=True))
    assert torch.equal(encode.execute(elsewhere, PROMPT, 256)[0].hidden_states, whole)
    assert not loaded(elsewhere.patcher) and elsewhere.patcher.loaded_size() == 0
    assert elsewhere.patcher.model.device == torch.device("cpu")

    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.HIGH_VRAM)
    assert torch.equal(encode.execute(elsewhere, PROMPT, 256)[0].hidden_states, whole)
    assert loaded(elsewhere.patcher) and elsewhere.patcher.model.device == torch.device("cpu", 0)
