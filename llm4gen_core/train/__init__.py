"""Training LLM4GEN adapters (and the UNet) for your own checkpoints and data.

    python -m llm4gen_core.train --base BASE --llm LLM --data DATA --train cam --output OUT
    accelerate launch -m llm4gen_core.train ...      # the same module, many processes

The release ships no training code; this is our design (README, "Train your own adapter").
The text path is the inference path: LLM features from :mod:`llm4gen_core.llm`, CLIP's last
hidden state, the CAM of :mod:`llm4gen_core.cam`; what is written loads in the nodes unchanged.

Modules, one job each:
- ``cli``, ``config``: the command line, turned into a checked :class:`~.config.TrainConfig`.
- ``data``: image/caption batches, endless, per rank, resumable; built on ``folder``
  (imagefolder + metadata.jsonl), ``shards`` (WebDataset .tar), ``images`` (decoding and its
  limits), ``samples`` (the types) and ``skips`` (bad samples counted, most-bad stops the run).
- ``base``: the frozen parts of the base model (diffusers folder or single file).
- ``single_file``: an SD1.x single-file checkpoint (.safetensors/.ckpt) as diffusers modules.
- ``unet_layout``: UNet key names between diffusers and ComfyUI's (ldm) layout.
- ``text``: captions to UNet context, exactly as the nodes compute it (CFG dropout included).
- ``objective``: what one micro-batch computes (noise, timesteps, the loss), its equations.
- ``models``: what trains in each --train mode, and the optimizer; ``precision``: which mixed
  precision this device runs well; ``ema``; ``entity`` (the entity-guided regularisation, our
  reading); ``cache`` (--cache-dir features on disk).
- ``loop``: the Trainer (accelerate, steps, checkpoints, outputs); ``run_log``: progress bar,
  train_log.jsonl and the summary.
- ``state``: atomic checkpoints and resume.
- ``export``: adapter.safetensors (with the LLM recipe), unet/ and lora.safetensors.

Needs ``requirements-train.txt`` (diffusers, accelerate, peft) besides the pack's requirements.
"""
