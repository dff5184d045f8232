"""What one micro-batch computes: the denoising objective with the CAM's context.

    z     = VAE(image) * scale                        # sampled from the latent distribution (or the cache's)
    c, l  = CLIP(caption), LLM(caption)               # "" instead, with probability caption_dropout
    eps   ~ N(0, I);  t ~ U{0..T-1};  z_t = add_noise(z, eps, t)
    pred  = UNet(z_t, t, context=CAM(c, l) [, SDXL: pooled, time ids])
    loss  = mean_b w(t_b) * mean |pred_b - target_b|^2
            target = eps (epsilon) or v = alpha_t eps - sigma_t z (v_prediction), as the scheduler says
            w(t) = 1, or with --snr-gamma: min(SNR(t), gamma) / SNR(t)  (v: / (SNR(t) + 1))

All randomness of a micro-step (caption dropout, latent sample, noise, timesteps) comes from one
generator seeded by (seed, rank, micro-step), never from global state: a resumed run computes
exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cam import CrossAdapter
from ..errors import LLM4GENError
from .text import FrozenTextEncoders, TextFeatures, drop_captions


class Denoiser(torch.nn.Module):
    """The CAM feeding the UNet: the one module the optimizer (and DDP) sees. ``added`` is SDXL's
    added conditioning (pooled text embeds and size/crop time ids), None for SD1.x."""

    def __init__(self, cam: CrossAdapter, unet: torch.nn.Module):
        super().__init__()
        self.cam, self.unet = cam, unet

    def forward(self, noisy, timesteps, clip, llm, added=None):
        context = self.cam(clip, llm)
        return self.unet(noisy, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample


def step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    digest = hashlib.sha256(f"llm4gen/{seed}/{rank}/{micro_step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@dataclass
class NoisedBatch:
    latents: torch.Tensor     # z
    noise: torch.Tensor       # eps
    timesteps: torch.Tensor   # t
    noisy: torch.Tensor       # z_t
    text: TextFeatures        # after caption dropout
    drop: torch.Tensor        # which captions were dropped (bool, CPU)
    added: dict | None        # SDXL: text_embeds (pooled) and time_ids


def noised_batch(batch, g: torch.Generator, base, text: FrozenTextEncoders, cache, caption_dropout: float,
                 resolution: int, device, weight_dtype) -> NoisedBatch:
    size = len(batch.keys)
    drop = torch.rand(size, generator=g) < caption_dropout
    if cache is not None:
        moments, features = cache.features(batch, base, text, device, weight_dtype)
    else:
        with torch.no_grad():
            vae_dtype = next(base.vae.parameters()).dtype
            moments = base.vae.encode(batch.pixel_values.to(device, vae_dtype)).latent_dist.parameters
        features = text.features(batch.texts)
    mean, logvar = moments.float().chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # as diffusers' DiagonalGaussianDistribution
    latents = (mean + std * torch.randn(mean.shape, generator=g).to(device)) * base.vae_scale
    features = drop_captions(features, drop, text.empty())
    noise = torch.randn(latents.shape, generator=g).to(device)
    timesteps = torch.randint(0, base.scheduler.config.num_train_timesteps, (size,), generator=g).to(device)
    added = None
    if base.is_sdxl:
        added = {"text_embeds": features.pooled, "time_ids": sdxl_time_ids(batch, resolution).to(device)}
    return NoisedBatch(latents, noise, timesteps, base.scheduler.add_noise(latents, noise, timesteps), features,
                       drop, added)


def sdxl_time_ids(batch, resolution: int) -> torch.Tensor:
    """SDXL's size conditioning per sample: original (h, w), crop (top, left), target (h, w), in the
    order ComfyUI builds it from CLIP Text Encode (SDXL)'s height, width, crop_h, crop_w, target sizes."""
    originals = batch.original_sizes or [(resolution, resolution)] * len(batch.keys)
    corners = batch.crop_top_lefts or [(0, 0)] * len(batch.keys)
    return torch.tensor([[*o, *c, resolution, resolution] for o, c in zip(originals, corners)], dtype=torch.float32)


def denoising_loss(pred: torch.Tensor, x: NoisedBatch, scheduler, snr_gamma: float | None) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = x.noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x.latents, x.noise, x.timesteps)
    else:
        raise LLM4GENError(f"the base's scheduler predicts {kind!r}; training supports epsilon and v_prediction")
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, x.timesteps)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
    return (per_sample * weight).mean()
