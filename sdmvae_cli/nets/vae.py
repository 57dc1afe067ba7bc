"""`vae`: the plain VAE (Gaussian posterior, N(0, I) prior, closed-form KL), and the base of the
families that keep its Gaussian posterior with another prior (`laplace`, `cauchy-gauss`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sdmvae_cli.nets.base import COMMON_OPTIONS, ModelConfig, SpectrogramVAE, gaussian_kl_std, log_normal, reparameterise
from sdmvae_cli.nets.latents import GaussianLatent
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
    LABEL, ROW_RANK, MCEM_LATENT = "VAE", 0, GaussianLatent

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


class GaussianPosteriorVAE(VAE):
    """The plain VAE's encoder and sampling with another prior: training estimates the KL with
    the reparameterised sample (one-sample Monte Carlo), the noise-free validation statistic
    takes it exactly. A family sets its prior's log density and that exact KL per dimension."""

    log_prior: Callable[[torch.Tensor], torch.Tensor]
    exact_prior_kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def kl(self, post, z):
        return (log_normal(z, post["mu"], post["logvar"]) - type(self).log_prior(z)).sum(-1)

    def kl_exact(self, post):
        return type(self).exact_prior_kl(post["mu"], post["logvar"]).sum(-1)
