"""`laplace` and `cauchy`: VAEs with heavy-tailed, sparsity-promoting priors (Pyle, "A Sparse VAE").

- ``laplace``: Gaussian posterior, Laplace(0, 1) prior. Their KL has no closed form, so it is
  estimated with the reparameterised sample itself (one-sample Monte Carlo):
  KL ~ log q(z | x) - log p(z).
- ``cauchy``: Cauchy(loc, scale) posterior, Cauchy(0, 1) prior, with the closed-form KL between
  Cauchy distributions (Chyzak & Nielsen 2019):
  KL = log(((s_q + s_p)^2 + (l_q - l_p)^2) / (4 s_q s_p)). A Cauchy has no mean, so the
  "posterior-mean" code is its location (its median and mode).
"""

from __future__ import annotations

import math

import torch

from sdmvae_cli.nets.base import COMMON_OPTIONS, SpectrogramVAE, log_laplace, log_normal, open_uniform
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import VAE, Heads


def cauchy_kl(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: float = 0.0, scale_p: float = 1.0) -> torch.Tensor:
    return torch.log(((scale_q + scale_p).square() + (loc_q - loc_p).square()) / (4 * scale_q * scale_p))


@register("laplace")
class LaplaceVAE(VAE):
    """The plain VAE's encoder and sampling; only the prior (and so the KL) differs."""

    DESCRIPTION = "Gaussian posterior, Laplace(0, 1) prior, one-sample Monte Carlo KL."

    def kl(self, post, z):
        return (log_normal(z, post["mu"], post["logvar"]) - log_laplace(z)).sum(-1)


@register("cauchy")
class CauchyVAE(SpectrogramVAE):
    DESCRIPTION = "Cauchy posterior, Cauchy(0, 1) prior, closed-form KL."
    OPTIONS = COMMON_OPTIONS

    def __init__(self, cfg):
        super().__init__(cfg)
        self.heads = Heads(self.enc_dim, cfg.latent, ("loc", "log_scale"))

    def encode(self, x):
        p = self.heads(self.features(x))
        return {"loc": p["loc"], "scale": p["log_scale"].exp()}

    def noise_spec(self, batch: int):
        return {"u": ("uniform", (batch, self.cfg.latent))}

    def sample(self, post, noise=None):
        u = open_uniform(self._noise(post, noise)["u"])
        return post["loc"] + post["scale"] * torch.tan(math.pi * (u - 0.5))

    def mean_code(self, post):
        return post["loc"]

    def kl(self, post, z):
        return cauchy_kl(post["loc"], post["scale"]).sum(-1)
