"""`vae`: the plain VAE (Gaussian posterior, N(0, I) prior, closed-form KL)."""

from __future__ import annotations

import torch
from torch import nn

from sdmvae_cli.nets.base import ModelConfig, SpectrogramVAE, gaussian_kl_std, reparameterise
from sdmvae_cli.nets.registry import register


class GaussianHeads(nn.Module):
    """Linear heads for the mean and log-variance of a diagonal Gaussian."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.mean = nn.Linear(d_in, d_out)
        self.logvar = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mu": self.mean(h), "logvar": self.logvar(h)}


@register("vae")
class VAE(SpectrogramVAE):
    DESCRIPTION = "Gaussian posterior, N(0, I) prior (Leglaive et al. 2018)."
    OPTIONS = ("latent", "hidden", "activation", "input_transform", "beta")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.heads = GaussianHeads(self.enc_dim, cfg.latent)

    def encode(self, x):
        return self.heads(self.features(x))

    def sample(self, post):
        return reparameterise(post["mu"], post["logvar"])

    def mean_code(self, post):
        return post["mu"]

    def kl(self, post, z):
        return gaussian_kl_std(post["mu"], post["logvar"]).sum(-1)
