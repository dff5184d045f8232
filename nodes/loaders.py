"""Loader nodes: the LLM and the Cross-Adapter, from ComfyUI's model folders, local files only."""
from __future__ import annotations

import logging

import torch

import comfy.model_management as mm
from comfy.cli_args import args as comfy_args
from comfy_api.latest import io

from ..llm4gen_core import load_cross_adapter, load_llm, needs_tokenizer_path
from . import model_folders
from .patching import choose_dtype, make_patcher
from .types import LLM4GENAdapter, LLM4GENLLM, LoadedAdapter, LoadedLLM

log = logging.getLogger("LLM4GEN")


class LoadLLM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENLoadLLM",
            display_name="Load LLM (LLM4GEN)",
            category="loaders/llm4gen",
            description="Loads the LLM whose token features LLM4GEN fuses with CLIP's. The release "
                        "uses the RankGen T5-XL encoder (kalpeshk2011/rankgen-t5-xl-all).",
            inputs=[
                io.Combo.Input(
                    "model", options=model_folders.llm_choices(),
                    tooltip="A model folder (Hugging Face layout, e.g. the RankGen T5-XL folder) or a single "
                            ".safetensors T5 encoder (e.g. a bf16, fp16 or fp8 file written by python -m "
                            "llm4gen_core.convert llm), from models/text_encoders or models/LLM. Never downloaded.",
                ),
                io.Combo.Input(
                    "dtype", options=["auto", "fp32", "bf16", "fp16"], default="auto",
                    tooltip="The dtype the LLM computes in. auto: bf16 on GPUs that support it, else fp16; on a "
                            "CPU bf16 only where it has native bf16 units (AVX512-BF16 or AMX), else fp32 (the "
                            "log says which and why). A scaled-fp8 file (python -m llm4gen_core.convert llm ... "
                            "--dtype fp8) keeps its weights in fp8 and computes in this dtype.",
                ),
                io.Combo.Input(
                    "device", options=["default", "cpu"], default="default",
                    tooltip="default: ComfyUI's text-encoder device (the GPU unless low-VRAM settings say "
                            "otherwise), loaded only in part when VRAM is short (the rest streamed layer by "
                            "layer) and offloaded after each encode. cpu: always on the CPU.",
                ),
            ],
            outputs=[LLM4GENLLM.Output(display_name="llm", tooltip="The loaded LLM, for LLM Encode.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model: str, dtype: str, device: str):
        """The model's files as they are on disk: replaced or rewritten, it loads again."""
        try:
            return model_folders.files_fingerprint(model_folders.llm_path(model))
        except FileNotFoundError:
            return ("missing", model)  # execute says where it looked

    @classmethod
    def execute(cls, model: str, dtype: str, device: str) -> io.NodeOutput:
        path = model_folders.llm_path(model)
        load_device = mm.text_encoder_device() if device == "default" else torch.device("cpu")
        offload_device = mm.text_encoder_offload_device() if device == "default" else load_device
        compute_dtype = choose_dtype(load_device, dtype)
        # The loader's own rule: a T5 without a T5 tokenizer file of its own takes ComfyUI's.
        tokenizer = model_folders.comfy_t5_tokenizer() if needs_tokenizer_path(path) else None
        if tokenizer:
            log.info("LLM4GEN: %s has no T5 tokenizer of its own; using ComfyUI's (%s)", model, tokenizer)
        # Weights stored in the compute dtype stay in the file's mapping unless ComfyUI was started with
        # --disable-mmap (its own switch for files that must not be mapped, e.g. on network drives).
        llm = load_llm(path, tokenizer_path=tokenizer, dtype=compute_dtype, device=offload_device,
                       mmap=not comfy_args.disable_mmap)
        patcher = make_patcher(llm.model, load_device, offload_device, partial=True)
        log.info("LLM4GEN: loaded %s (%s, %d-d features, %s weights, computes in %s on %s)", model, llm.kind,
                 llm.hidden_size, llm.weights, compute_dtype, load_device)
        return io.NodeOutput(LoadedLLM(llm=llm, patcher=patcher, name=model))


class LoadCrossAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LLM4GENLoadCrossAdapter",
            display_name="Load LLM4GEN Cross-Adapter",
            category="loaders/llm4gen",
            description="Loads the Cross-Adapter Module (CAM) that fuses LLM and CLIP token features.",
            inputs=[
                io.Combo.Input(
                    "adapter_name", options=model_folders.adapter_choices(),
                    tooltip="Cross-Adapter weights from models/llm4gen: the release's projector.pth or a "
                            ".safetensors copy (python -m llm4gen_core.convert). .pth files are read without "
                            "running any code in them.",
                ),
            ],
            outputs=[LLM4GENAdapter.Output(display_name="adapter", tooltip="The Cross-Adapter, for the fusing nodes.")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name: str):
        """The adapter file as it is on disk: retrained or replaced, it loads again."""
        try:
            return model_folders.files_fingerprint(model_folders.adapter_path(adapter_name))
        except FileNotFoundError:
            return ("missing", adapter_name)

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = model_folders.adapter_path(adapter_name)
        adapter = load_cross_adapter(path)
        cfg = adapter.config
        patcher = make_patcher(adapter, mm.get_torch_device(), mm.unet_offload_device())
        log.info("LLM4GEN: loaded Cross-Adapter %s (CLIP %d / LLM %d, %d heads, depth %d)",
                 adapter_name, cfg.clip_dim, cfg.llm_dim, cfg.heads, cfg.depth)
        return io.NodeOutput(LoadedAdapter(adapter=adapter, patcher=patcher, name=adapter_name))
