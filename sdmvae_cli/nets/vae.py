"""`vae`: the plain VAE (Gaussian posterior, N(0, I) prior, closed-form KL)."""

from __future__ import annotations

import torch
from torch import nn

from sdmvae_cli.nets.base import COMMON_OPTIONS, ModelConfig, SpectrogramVAE, gaussian_kl_std, reparameterise
from sdmvae_cli.nets.registry import register


class Heads(nn.Module):
    """Several linear heads of the same size computed by ONE matrix product.

    One GEMM instead of one per head matters on a GPU, where a training step of these small
    networks is bound by the number of kernels launched, not by arithmetic.
    """

    def __init__(self, d_in: int, d_out: int, names: tuple[str, ...]):
        super().__init__()
        self.names = names
        self.linear = nn.Linear(d_in, d_out * len(names))

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.linear(h).chunk(len(self.names), dim=-1)))


class GaussianHeads(Heads):
    """Mean and log-variance of a diagonal Gaussian."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, ("mu", "logvar"))


@register("vae")
class VAE(SpectrogramVAE):
    DESCRIPTION = "Gaussian posterior, N(0, I) prior (Leglaive et al. 2018)."
    OPTIONS = COMMON_OPTIONS

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.heads = GaussianHeads(self.enc_dim, cfg.latent)

    def encode(self, x):
        return self.heads(self.features(x))

    def sample(self, post, noise=None):
        return reparameterise(post["mu"], post["logvar"], self._noise(post, noise)["eps"])

    def mean_code(self, post):
        return post["mu"]

    def kl(self, post, z):
        return gaussian_kl_std(post["mu"], post["logvar"]).sum(-1)
