"""Training LLM4GEN adapters (and the UNet) for your own checkpoints and data.

    python -m llm4gen_core.train --base BASE --llm LLM --data DATA --train cam --output OUT
    accelerate launch -m llm4gen_core.train ...      # the same module, many processes

The release ships no training code; this is our design (README, "Train your own adapter").
The text path is the inference path: LLM features from :mod:`llm4gen_core.llm`, CLIP's last
hidden state, the CAM of :mod:`llm4gen_core.cam`; what is written loads in the nodes unchanged.

Modules, one job each:
- ``cli``: the command line, turned into a :class:`~.config.TrainConfig`.
- ``data``: image/caption datasets (imagefolder + metadata.jsonl, WebDataset shards), bad samples
  skipped and counted, deterministic per-rank order that a resumed run continues.
- ``base``: the frozen parts of the base model (diffusers folder or single file).
- ``single_file``: an SD1.x single-file checkpoint (.safetensors/.ckpt) as diffusers modules.
- ``unet_layout``: UNet key names between diffusers and ComfyUI's (ldm) layout.
- ``text``: captions to UNet context, exactly as the nodes compute it (CFG dropout included).
- ``loop``: the accelerate training loop (loss, min-SNR, EMA, mixed precision).
- ``state``: atomic checkpoints and resume.
- ``export``: adapter.safetensors (with the LLM recipe), unet/ and lora.safetensors.

Needs ``requirements-train.txt`` (diffusers, accelerate, peft) besides the pack's requirements.
"""
