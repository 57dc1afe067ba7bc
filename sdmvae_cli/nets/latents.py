"""Explicit prior densities of each family's latent, for the Monte Carlo EM of enhancement.

The MCEM of Leglaive, Girin & Horaud (MLSP 2018) draws the latent of every frame from its
posterior p(latent | x) ∝ p(x | z(latent)) p(latent) with random-walk Metropolis-Hastings,
which needs what the variational interface of the models does not give: the prior's log
density and a proposal. One small class per family supplies them:

- ``vae``: z ~ N(0, I); ``laplace``: z ~ Laplace(0, 1); ``cauchy``: z ~ Cauchy(0, 1).
- ``sdm``: the code a with z = D a (SDM-VAE eq. 4) and a ~ N(0, diag(gamma)) (eq. 5); gamma
  starts at the encoder's mu^2 + sigma^2 and is re-estimated in every M-step as the sample mean
  of a^2 (eq. 9's closed form with the posterior moments replaced by the chains' samples). The
  random walk is scaled by sqrt(gamma), so each atom moves on the scale of its own prior.
- ``vsc``: the spike-and-slab code as (slab value s, selection b): z = b * s, s ~ N(0, 1),
  b ~ Bernoulli(alpha). The proposal moves s by a random walk and flips each b with
  probability 1/m (symmetric, so the MH ratio is the target ratio).
- ``threshold`` has no proper generative prior on its decoder input (the threshold is part of
  the posterior), so it is enhanced with the variational EM only.

Each family names its class in ``MCEM_LATENT`` (nets/base.py); the sampler that uses them is
:mod:`sdmvae_cli.inference.mcem`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sdmvae_cli.nets.base import SpectrogramVAE


class GaussianLatent:
    """Base family: the latent is z itself with a standard Gaussian prior."""

    def __init__(self, model: "SpectrogramVAE", post: dict[str, torch.Tensor]):
        self.model = model
        self.post = post

    def init(self) -> torch.Tensor:
        return self.post["mu"]

    def decoder_input(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def log_prior(self, u: torch.Tensor) -> torch.Tensor:
        return -0.5 * u.square().sum(-1)

    def propose(self, u: torch.Tensor, std: float) -> torch.Tensor:
        return u + std * torch.randn_like(u)

    def m_step(self, samples: torch.Tensor) -> None:
        """Update prior hyper-parameters from samples (n, frames, d); none for a fixed prior."""


class LaplaceLatent(GaussianLatent):
    def log_prior(self, u):
        return -u.abs().sum(-1)


class CauchyLatent(GaussianLatent):
    def init(self):
        return self.post["loc"]

    def log_prior(self, u):
        return -torch.log1p(u.square()).sum(-1)


class SdmLatent(GaussianLatent):
    def __init__(self, model, post):
        super().__init__(model, post)
        self.gamma = (post["mu"].square() + post["logvar"].exp()).clamp_min(1e-6)

    def decoder_input(self, u):
        return u @ self.model.D.t()

    def log_prior(self, u):
        return -0.5 * (u.square() / self.gamma).sum(-1)

    def propose(self, u, std):
        return u + std * self.gamma.sqrt() * torch.randn_like(u)

    def m_step(self, samples):
        self.gamma = samples.square().mean(0).clamp_min(1e-6)


class VscLatent(GaussianLatent):
    """State (..., 2m): slab values s, then selections b in {0, 1}."""

    def init(self):
        return torch.cat([self.post["mu"], (self.post["gamma"] > 0.5).to(self.post["mu"])], -1)

    def _split(self, u):
        m = u.shape[-1] // 2
        return u[..., :m], u[..., m:]

    def decoder_input(self, u):
        s, b = self._split(u)
        return s * b

    def log_prior(self, u):
        s, b = self._split(u)
        a = self.model.cfg.alpha
        return (-0.5 * s.square() + b * math.log(a) + (1 - b) * math.log(1 - a)).sum(-1)

    def propose(self, u, std):
        s, b = self._split(u)
        flip = (torch.rand_like(b) < 1.0 / b.shape[-1]).to(b)
        return torch.cat([s + std * torch.randn_like(s), (b - flip).abs()], -1)
