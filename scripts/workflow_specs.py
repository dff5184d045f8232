"""The bundled workflows, described as nodes, widget values and links.

``scripts/build_workflows.py`` builds each of them in ComfyUI's real frontend from this
description and saves what the frontend serialises, so ``example_workflows/*.json`` are exactly
what ComfyUI's own "Save" writes. Edit here, then rebuild (maintainers only):

    .venv/bin/python -m scripts.build_workflows

File names are the ones README-workflows.md documents; keep them in step with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# --- the files the workflows load (ComfyUI model folders) ----------------------------------
UNET = "llm4gen_sd15_unet.safetensors"               # models/diffusion_models/
SD15 = "v1-5-pruned-emaonly-fp16.safetensors"        # models/checkpoints/ (CLIP + VAE)
RANKGEN = "rankgen-t5-xl-all"                        # models/LLM/ (folder)
PROJECTOR = "projector.pth"                          # models/llm4gen/
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"  # models/controlnet/
LORA = "your_sd15_lora.safetensors"                  # models/loras/ (any SD1.5 LoRA)
CONTROL_IMAGE = "example.png"                        # input/ (ComfyUI ships it)
SDXL = "sd_xl_base_1.0.safetensors"                  # models/checkpoints/ (SDXL base: UNet, CLIP-L + bigG, VAE)
SDXL_ADAPTER = "llm4gen_sdxl_adapter.safetensors"    # models/llm4gen/ (an SDXL adapter you trained)

RELEASE_PROMPT = ("Ground view of the Great Pyramids and Sphinx on the moon's surface. The back of an "
                  "astronaut is in the foreground. The planet Earth looms in the sky.")
CONTROL_PROMPT = ("A watercolor illustration of a cheerful girl with big blonde hair and round blue eyes, "
                  "wearing a pink summer dress, arms spread wide, standing on a bright green hill under a "
                  "blue sky with small white clouds, soft paper texture.")
DENSE_PROMPT = (
    "A cozy bookshop at dusk seen from a rainy street: a tabby cat sleeps on a stack of red books in the "
    "shop window, a brass telescope stands beside a globe on the left, warm yellow light spills from three "
    "hanging lanterns, a girl in a green raincoat holding a blue umbrella reads the chalkboard sign by the "
    "door, puddles on the cobblestones reflect a pink neon sign above the entrance, a bicycle with a wicker "
    "basket full of sunflowers leans against the lamp post on the right, and in the upper floor window an old "
    "man in a striped sweater waters a row of potted cacti.")

# Colours the frontend offers (LGraphCanvas.node_colors): loaders green-ish, prompts, notes yellow.
YELLOW = ("#432", "#653")
GREEN = ("#232", "#353")
BLUE = ("#223", "#335")
PURPLE = ("#323", "#535")


@dataclass
class Node:
    key: str
    type: str
    pos: tuple[float, float]
    size: tuple[float, float] | None = None
    title: str | None = None
    widgets: dict = field(default_factory=dict)
    color: tuple[str, str] | None = None


@dataclass
class Workflow:
    name: str          # file name without .json; also the template browser's entry
    title: str
    nodes: list[Node]
    links: list[tuple[str, int, str, str]]  # (from node, output index, to node, input name)
    groups: list[tuple[str, tuple[float, float, float, float], str]] = field(default_factory=list)
    family: str = "sd15"  # the workflows/ subfolder holding the repository's copy


def _files_note(extra: list[str]) -> str:
    return "\n".join([
        "### Files (ComfyUI `models/` folders)",
        f"- `diffusion_models/{UNET}`: the release's `unet/diffusion_pytorch_model.safetensors`, renamed",
        f"- `llm4gen/{PROJECTOR}`: the release's Cross-Adapter",
        f"- `LLM/{RANKGEN}/`: the RankGen T5-XL folder (`config.json` + `pytorch_model.bin`)",
        f"- `checkpoints/{SD15}`: stock SD1.5 (for its CLIP and VAE)",
        *extra,
        "",
        "Press **R** after adding files. The nodes never download anything.",
    ])


def _release_text_path(x: float, y: float, prompt_key: str, negative_key: str, clip_from: tuple[str, int],
                       via_apply: bool) -> tuple[list[Node], list[tuple]]:
    """LLM Encode + the fusing node for the positive and the negative prompt."""
    nodes = [
        Node("llm_pos", "LLM4GENLLMEncode", (x, y), (300, 100), "LLM Encode (positive)"),
        Node("llm_neg", "LLM4GENLLMEncode", (x, y + 330), (300, 100), "LLM Encode (negative)"),
    ]
    links = [("load_llm", 0, "llm_pos", "llm"), ("load_llm", 0, "llm_neg", "llm"),
             (prompt_key, 0, "llm_pos", "text"), (negative_key, 0, "llm_neg", "text")]
    fuse_x = x + 340
    if via_apply:
        nodes += [
            Node("clip_pos", "CLIPTextEncode", (x, y + 150), (300, 100), "CLIP Text Encode (positive)"),
            Node("clip_neg", "CLIPTextEncode", (x, y + 480), (300, 100), "CLIP Text Encode (negative)"),
            Node("fuse_pos", "LLM4GENApplyConditioning", (fuse_x, y), (300, 160), "Apply LLM4GEN Conditioning (positive)"),
            Node("fuse_neg", "LLM4GENApplyConditioning", (fuse_x, y + 330), (300, 160), "Apply LLM4GEN Conditioning (negative)"),
        ]
        links += [
            (*clip_from, "clip_pos", "clip"), (*clip_from, "clip_neg", "clip"),
            (prompt_key, 0, "clip_pos", "text"), (negative_key, 0, "clip_neg", "text"),
            ("clip_pos", 0, "fuse_pos", "conditioning"), ("clip_neg", 0, "fuse_neg", "conditioning"),
        ]
    else:
        nodes += [
            Node("fuse_pos", "LLM4GENCLIPLLMCrossAdapter", (fuse_x, y), (300, 160), "CLIP+LLM Cross-Adapter (positive)"),
            Node("fuse_neg", "LLM4GENCLIPLLMCrossAdapter", (fuse_x, y + 330), (300, 160), "CLIP+LLM Cross-Adapter (negative)"),
        ]
        links += [(*clip_from, "fuse_pos", "clip"), (*clip_from, "fuse_neg", "clip"),
                  (prompt_key, 0, "fuse_pos", "text"), (negative_key, 0, "fuse_neg", "text")]
    links += [("load_cam", 0, "fuse_pos", "adapter"), ("load_cam", 0, "fuse_neg", "adapter"),
              ("llm_pos", 0, "fuse_pos", "llm_embeds"), ("llm_neg", 0, "fuse_neg", "llm_embeds")]
    return nodes, links


def _loaders(y0: float = 440) -> list[Node]:
    return [
        Node("load_unet", "UNETLoader", (0, y0), (330, 82), "Load Diffusion Model (LLM4GEN UNet)",
             {"unet_name": UNET, "weight_dtype": "default"}, GREEN),
        Node("load_ckpt", "CheckpointLoaderSimple", (0, y0 + 130), (330, 98), "Load Checkpoint (SD1.5 CLIP + VAE)",
             {"ckpt_name": SD15}, GREEN),
        Node("load_llm", "LLM4GENLoadLLM", (0, y0 + 280), (330, 106), "Load LLM (RankGen T5-XL)",
             {"model": RANKGEN, "dtype": "auto", "device": "default"}, GREEN),
        Node("load_cam", "LLM4GENLoadCrossAdapter", (0, y0 + 430), (330, 58), "Load LLM4GEN Cross-Adapter",
             {"adapter_name": PROJECTOR}, GREEN),
    ]


def _prompts(x: float, y: float, text: str, width: float = 360) -> list[Node]:
    return [
        Node("prompt", "PrimitiveStringMultiline", (x, y), (width, 200), "Prompt (CLIP and LLM)", {"value": text}, BLUE),
        Node("negative", "PrimitiveStringMultiline", (x, y + 250), (width, 110), "Negative prompt (release: empty)",
             {"value": ""}, PURPLE),
    ]


def _sampling(x: float, y: float, model_from: tuple[str, int], positive: tuple[str, int],
              negative: tuple[str, int], vae_from: tuple[str, int], prefix: str,
              key: str = "", title: str = "KSampler (release settings)") -> tuple[list[Node], list[tuple]]:
    k = key
    nodes = [
        Node(f"sampler{k}", "KSampler", (x, y), (300, 262), title,
             {"seed": 1, "control_after_generate": "fixed", "steps": 50, "cfg": 7.5, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0}),
        Node(f"decode{k}", "VAEDecode", (x, y + 300), (300, 46), None),
    ]
    links = [(*model_from, f"sampler{k}", "model"), (*positive, f"sampler{k}", "positive"),
             (*negative, f"sampler{k}", "negative"), ("latent", 0, f"sampler{k}", "latent_image"),
             (f"sampler{k}", 0, f"decode{k}", "samples"), (*vae_from, f"decode{k}", "vae")]
    if prefix:
        nodes.append(Node(f"save{k}", "SaveImage", (x + 340, y), (420, 470), None, {"filename_prefix": prefix}))
        links.append((f"decode{k}", 0, f"save{k}", "images"))
    return nodes, links


def _latent(x: float, y: float) -> Node:
    return Node("latent", "EmptyLatentImage", (x, y), (300, 106), "Empty Latent Image",
                {"width": 512, "height": 512, "batch_size": 1})


def txt2img() -> Workflow:
    note = Node("note", "MarkdownNote", (0, -40), (330, 440), "Read me: LLM4GEN SD1.5", {"text": "\n".join([
        "## LLM4GEN SD1.5 text-to-image",
        "As released: the prompt goes through CLIP (77 tokens) and RankGen T5-XL (256 tokens); the "
        "Cross-Adapter fuses them into 333 tokens for the LLM4GEN UNet. The empty negative prompt takes the "
        "same path. 512x512, 50 steps, CFG 7.5.",
        "",
        _files_note([]),
    ])}, YELLOW)
    nodes = [note, *_loaders(), *_prompts(370, 0, RELEASE_PROMPT)]
    text_nodes, links = _release_text_path(770, 0, "prompt", "negative", ("load_ckpt", 1), via_apply=False)
    nodes += text_nodes
    nodes.append(_latent(1450, 390))
    sampling, sampling_links = _sampling(1450, 0, ("load_unet", 0), ("fuse_pos", 0), ("fuse_neg", 0),
                                         ("load_ckpt", 2), "llm4gen/sd15_txt2img")
    return Workflow("llm4gen_sd15_txt2img", "LLM4GEN SD1.5 text-to-image", nodes + sampling, links + sampling_links)


def apply_conditioning() -> Workflow:
    note = Node("note", "MarkdownNote", (0, -40), (330, 440), "Read me: Apply LLM4GEN Conditioning", {"text": "\n".join([
        "## LLM4GEN with CLIP Text Encode + Apply LLM4GEN Conditioning",
        "The text-to-image workflow built on stock CLIP Text Encode: Apply LLM4GEN Conditioning fuses "
        "the LLM features into any CLIP conditioning, so prompt weights, embeddings, LoRA-patched CLIP "
        "and area/combine nodes keep working. Same 333 tokens as the release.",
        "",
        _files_note([]),
    ])}, YELLOW)
    nodes = [note, *_loaders(), *_prompts(370, 0, RELEASE_PROMPT)]
    text_nodes, links = _release_text_path(770, 0, "prompt", "negative", ("load_ckpt", 1), via_apply=True)
    nodes += text_nodes
    nodes.append(_latent(1450, 390))
    sampling, sampling_links = _sampling(1450, 0, ("load_unet", 0), ("fuse_pos", 0), ("fuse_neg", 0),
                                         ("load_ckpt", 2), "llm4gen/sd15_apply_conditioning")
    return Workflow("llm4gen_sd15_apply_conditioning", "LLM4GEN with Apply LLM4GEN Conditioning",
                    nodes + sampling, links + sampling_links)


def controlnet_lora() -> Workflow:
    note = Node("note", "MarkdownNote", (0, -40), (330, 440), "Read me: ControlNet + LoRA", {"text": "\n".join([
        "## LLM4GEN with a canny ControlNet and a LoRA",
        "The LoRA patches the LLM4GEN UNet and CLIP; Apply LLM4GEN Conditioning fuses the LLM features "
        "into the patched CLIP's conditioning. With `controlnet_context` = clip the ControlNet sees the 77 "
        "CLIP tokens it was trained on; the UNet gets all 333. Use your own picture in Load Image.",
        "",
        _files_note([
            f"- `controlnet/{CONTROLNET}`: SD1.5 canny ControlNet",
            f"- `loras/`: any SD1.5 LoRA (pick it in Load LoRA)",
            f"- `input/{CONTROL_IMAGE}`: the control picture",
        ]),
    ])}, YELLOW)
    nodes = [
        note, *_loaders(),
        Node("lora", "LoraLoader", (370, 400), (330, 126), "Load LoRA (any SD1.5 LoRA)",
             {"lora_name": LORA, "strength_model": 0.8, "strength_clip": 0.8}, GREEN),
        Node("image", "LoadImage", (370, 580), (330, 340), "Load Image (control picture)",
             {"image": CONTROL_IMAGE, "upload": "image"}),
        Node("scale", "ImageScale", (770, 640), (300, 130), "Scale the control picture",
             {"upscale_method": "area", "width": 512, "height": 512, "crop": "center"}),
        Node("canny", "Canny", (770, 820), (300, 82), None, {"low_threshold": 0.4, "high_threshold": 0.8}),
        Node("preview_canny", "PreviewImage", (1450, 560), (300, 300), "Preview: canny edges"),
        Node("load_cn", "ControlNetLoader", (1110, 560), (300, 58), "Load ControlNet (SD1.5 canny)",
             {"control_net_name": CONTROLNET}, GREEN),
        Node("apply_cn", "ControlNetApplyAdvanced", (1110, 670), (300, 186), "Apply ControlNet",
             {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}),
        *_prompts(370, 0, CONTROL_PROMPT),
    ]
    text_nodes, links = _release_text_path(770, 0, "prompt", "negative", ("lora", 1), via_apply=True)
    nodes += text_nodes
    links += [("load_unet", 0, "lora", "model"), ("load_ckpt", 1, "lora", "clip"),
              ("image", 0, "scale", "image"), ("scale", 0, "canny", "image"), ("canny", 0, "preview_canny", "images"),
              ("fuse_pos", 0, "apply_cn", "positive"), ("fuse_neg", 0, "apply_cn", "negative"),
              ("load_cn", 0, "apply_cn", "control_net"), ("canny", 0, "apply_cn", "image")]
    nodes.append(_latent(1450, 390))
    sampling, sampling_links = _sampling(1450, 0, ("lora", 0), ("apply_cn", 0), ("apply_cn", 1),
                                         ("load_ckpt", 2), "llm4gen/sd15_controlnet_lora")
    return Workflow("llm4gen_sd15_controlnet_lora", "LLM4GEN with ControlNet (canny) and LoRA",
                    nodes + sampling, links + sampling_links)


def dense_prompt_comparison() -> Workflow:
    note = Node("note", "MarkdownNote", (0, -40), (330, 440), "Read me: SD1.5 vs LLM4GEN", {"text": "\n".join([
        "## Dense prompt: stock SD1.5 vs LLM4GEN",
        "One dense prompt, same seed: left stock SD1.5 (CLIP only), right LLM4GEN (CLIP + RankGen T5-XL "
        "through the Cross-Adapter), saved side by side. The prompt is longer than CLIP's 77 tokens: stock "
        "SD1.5 gets two CLIP chunks; LLM4GEN fuses the first 77 as released (the log warns) while the LLM "
        "reads up to 256 tokens.",
        "",
        _files_note([]),
    ])}, YELLOW)
    nodes = [note, *_loaders(), *_prompts(370, 0, DENSE_PROMPT)]
    text_nodes, links = _release_text_path(770, 0, "prompt", "negative", ("load_ckpt", 1), via_apply=False)
    nodes += text_nodes
    nodes += [
        Node("sd_pos", "CLIPTextEncode", (770, 560), (300, 100), "CLIP Text Encode (stock SD1.5, positive)"),
        Node("sd_neg", "CLIPTextEncode", (770, 710), (300, 100), "CLIP Text Encode (stock SD1.5, negative)"),
        _latent(1110, 560),
        Node("stitch", "ImageStitch", (1790, 0), (300, 150), "Side by side: SD1.5 | LLM4GEN",
             {"direction": "right", "match_image_size": True, "spacing_width": 16, "spacing_color": "white"}),
        Node("save", "SaveImage", (1790, 200), (560, 330), None, {"filename_prefix": "llm4gen/dense_prompt_sd15_vs_llm4gen"}),
    ]
    links += [("load_ckpt", 1, "sd_pos", "clip"), ("load_ckpt", 1, "sd_neg", "clip"),
              ("prompt", 0, "sd_pos", "text"), ("negative", 0, "sd_neg", "text")]
    llm4gen, llm4gen_links = _sampling(1450, 0, ("load_unet", 0), ("fuse_pos", 0), ("fuse_neg", 0), ("load_ckpt", 2),
                                       "", key="_llm4gen", title="KSampler: LLM4GEN")
    stock, stock_links = _sampling(1450, 560, ("load_ckpt", 0), ("sd_pos", 0), ("sd_neg", 0), ("load_ckpt", 2),
                                   "", key="_sd15", title="KSampler: stock SD1.5 (same seed)")
    links += [("decode_sd15", 0, "stitch", "image1"), ("decode_llm4gen", 0, "stitch", "image2"),
              ("stitch", 0, "save", "images")]
    return Workflow("llm4gen_vs_sd15_dense_prompt", "Dense prompt: stock SD1.5 vs LLM4GEN",
                    nodes + llm4gen + stock, links + llm4gen_links + stock_links)


SDXL_PROMPT = ("A red fox in a yellow knitted scarf sits on a mossy stump to the left of a small wooden mailbox "
               "painted blue; behind them a foggy pine forest at sunrise, and on the right three white mushrooms "
               "with brown spots grow beside a puddle that reflects the orange sky.")


def sdxl_txt2img() -> Workflow:
    note = Node("note", "MarkdownNote", (0, -40), (330, 440), "Read me: LLM4GEN SDXL", {"text": "\n".join([
        "## LLM4GEN SDXL text-to-image",
        "SDXL base with a Cross-Adapter you trained (no LLM4GEN SDXL weights are published). CLIP Text "
        "Encode (SDXL) gives CLIP-L + bigG (77 tokens, 2048 wide) with the size keys; Apply LLM4GEN "
        "Conditioning fuses RankGen T5-XL's 256 tokens into them (333 tokens); bigG's pooled output and the "
        "sizes pass through untouched. 1024x1024, 30 steps, CFG 7.",
        "",
        "### Train the adapter (README-training.md)",
        "```",
        "python -m llm4gen_core.train --base <sdxl diffusers folder> --llm models/LLM/rankgen-t5-xl-all/ "
        "--tokenizer ComfyUI/comfy/text_encoders/t5_tokenizer --data my_images/ --train cam "
        "--resolution 1024 --output runs/sdxl-adapter",
        "```",
        f"Then copy `runs/sdxl-adapter/adapter.safetensors` to `llm4gen/{SDXL_ADAPTER}`. "
        "`--train cam` keeps the UNet frozen, so the stock checkpoint below is the model it was trained for.",
        "",
        "### Files (ComfyUI `models/` folders)",
        f"- `checkpoints/{SDXL}`: Stable Diffusion XL base 1.0 (UNet, CLIP-L + bigG, VAE)",
        f"- `llm4gen/{SDXL_ADAPTER}`: your SDXL Cross-Adapter (CLIP width 2048)",
        f"- `LLM/{RANKGEN}/`: the RankGen T5-XL folder the adapter was trained with",
        "",
        "Press **R** after adding files. The nodes never download anything.",
    ])}, YELLOW)
    nodes = [
        note,
        Node("load_ckpt", "CheckpointLoaderSimple", (0, 440), (330, 98), "Load Checkpoint (SDXL base)",
             {"ckpt_name": SDXL}, GREEN),
        Node("load_llm", "LLM4GENLoadLLM", (0, 590), (330, 106), "Load LLM (RankGen T5-XL)",
             {"model": RANKGEN, "dtype": "auto", "device": "default"}, GREEN),
        Node("load_cam", "LLM4GENLoadCrossAdapter", (0, 740), (330, 58), "Load LLM4GEN Cross-Adapter (SDXL, yours)",
             {"adapter_name": SDXL_ADAPTER}, GREEN),
        *_prompts(370, 0, SDXL_PROMPT),
    ]
    size = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    links = []
    for side, key, y in (("pos", "prompt", 0), ("neg", "negative", 620)):
        label = "positive" if side == "pos" else "negative"
        nodes += [
            Node(f"llm_{side}", "LLM4GENLLMEncode", (770, y), (300, 100), f"LLM Encode ({label})"),
            Node(f"clip_{side}", "CLIPTextEncodeSDXL", (770, y + 150), (300, 300),
                 f"CLIP Text Encode (SDXL, {label})", dict(size)),
            Node(f"fuse_{side}", "LLM4GENApplyConditioning", (1110, y), (300, 160),
                 f"Apply LLM4GEN Conditioning ({label})"),
        ]
        links += [("load_llm", 0, f"llm_{side}", "llm"), (key, 0, f"llm_{side}", "text"),
                  ("load_ckpt", 1, f"clip_{side}", "clip"), (key, 0, f"clip_{side}", "text_g"),
                  (key, 0, f"clip_{side}", "text_l"),
                  (f"clip_{side}", 0, f"fuse_{side}", "conditioning"), ("load_cam", 0, f"fuse_{side}", "adapter"),
                  (f"llm_{side}", 0, f"fuse_{side}", "llm_embeds")]
    nodes.append(Node("latent", "EmptyLatentImage", (1450, 390), (300, 106), "Empty Latent Image",
                      {"width": 1024, "height": 1024, "batch_size": 1}))
    nodes += [
        Node("sampler", "KSampler", (1450, 0), (300, 262), "KSampler (SDXL settings)",
             {"seed": 1, "control_after_generate": "fixed", "steps": 30, "cfg": 7.0, "sampler_name": "dpmpp_2m",
              "scheduler": "karras", "denoise": 1.0}),
        Node("decode", "VAEDecode", (1450, 300), (300, 46), None),
        Node("save", "SaveImage", (1790, 0), (420, 470), None, {"filename_prefix": "llm4gen/sdxl_txt2img"}),
    ]
    links += [("load_ckpt", 0, "sampler", "model"), ("fuse_pos", 0, "sampler", "positive"),
              ("fuse_neg", 0, "sampler", "negative"), ("latent", 0, "sampler", "latent_image"),
              ("sampler", 0, "decode", "samples"), ("load_ckpt", 2, "decode", "vae"), ("decode", 0, "save", "images")]
    return Workflow("llm4gen_sdxl_txt2img", "LLM4GEN SDXL text-to-image (your adapter)", nodes, links, family="sdxl")


WORKFLOWS = [txt2img, apply_conditioning, controlnet_lora, dense_prompt_comparison, sdxl_txt2img]
