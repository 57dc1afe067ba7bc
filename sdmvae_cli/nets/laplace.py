"""`laplace`: Gaussian posterior, Laplace(0, 1) prior (Pyle, "A Sparse VAE").

Training estimates the KL with the reparameterised sample itself (one-sample Monte Carlo, as
Pyle): KL ~ log q(z | x) - log p(z); the noise-free validation statistic uses its closed form
(:func:`gaussian_laplace_kl`).
"""

from __future__ import annotations

import math

import torch

from sdmvae_cli.nets.base import log_laplace
from sdmvae_cli.nets.latents import LaplaceLatent
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import GaussianPosteriorVAE


@register("laplace")
class LaplaceVAE(GaussianPosteriorVAE):
    DESCRIPTION = "Gaussian posterior, Laplace(0, 1) prior, one-sample Monte Carlo KL."
    LABEL, ROW_RANK, MCEM_LATENT = "Laplace-prior VAE", 4, LaplaceLatent
    log_prior = staticmethod(log_laplace)
    exact_prior_kl = staticmethod(lambda mu, logvar: gaussian_laplace_kl(mu, logvar))


def gaussian_laplace_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || Laplace(0, 1)) per dimension, in closed form: minus the Gaussian's
    entropy, plus log 2, plus E|z|, the folded normal's mean
    sigma sqrt(2/pi) exp(-mu^2 / 2 sigma^2) + mu erf(mu / (sigma sqrt 2)). What the noise-free
    validation statistic uses where training keeps the one-sample estimate (its gradient is
    the same in expectation)."""
    sigma = torch.exp(0.5 * logvar)
    abs_mean = sigma * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (mu / sigma).square()) + mu * torch.erf(
        mu / (sigma * math.sqrt(2))
    )
    return -0.5 * (math.log(2 * math.pi * math.e) + logvar) + math.log(2.0) + abs_mean
