"""`cauchy` and `cauchy-gauss`: VAEs with a Cauchy(0, 1) prior.

- ``cauchy``: Cauchy(loc, scale) posterior, Cauchy(0, 1) prior, with the closed-form KL between
  Cauchy distributions (Chyzak & Nielsen 2019):
  KL = log(((s_q + s_p)^2 + (l_q - l_p)^2) / (4 s_q s_p)). A Cauchy has no mean, so the
  "posterior-mean" code is its location (its median and mode). (Pyle, "A Sparse VAE".)
- ``cauchy-gauss``: Gaussian posterior, Cauchy(0, 1) prior (Barello, Charles & Pillow 2018's
  sparse-coding VAE): the ``laplace`` design with a Cauchy prior, one-sample Monte Carlo KL in
  training. Its KL has no closed form; the noise-free validation statistic computes it as
  -H(N) + log pi + E_q[log(1 + z^2)] with the expectation by a fixed Gauss-Hermite rule
  (:func:`gaussian_cauchy_kl`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sdmvae_cli.nets.base import COMMON_OPTIONS, SpectrogramVAE
from sdmvae_cli.nets.latents import CauchyLatent
from sdmvae_cli.nets.noise import open_uniform
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import GaussianPosteriorVAE, Heads


def cauchy_kl(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: float = 0.0, scale_p: float = 1.0) -> torch.Tensor:
    return torch.log(((scale_q + scale_p).square() + (loc_q - loc_p).square()) / (4 * scale_q * scale_p))


def _hermite_rule(n: int, min_weight: float) -> tuple[tuple[float, float], ...]:
    """(node, weight) of the n-point probabilists' Gauss-Hermite rule, weights divided by
    sqrt(2 pi) (so sum w f(x) ~ E f(x), x ~ N(0, 1)), without the nodes of weight < min_weight
    (their share of any term here is below 1e-13 nats)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    return tuple((float(a), float(b)) for a, b in zip(x, w) if b >= min_weight)


#: the quadrature of E_q[log(1 + z^2)]: 128 points, 58 kept. log(1 + z^2) has branch points at
#: z = +-i, at distance 1/sigma from the real axis in the rule's variable, so the error grows
#: with sigma: < 3e-6 nats per dimension at sigma <= 2 (the Gaussian closest to Cauchy(0, 1) has
#: sigma = 1.63: a collapsed unit), 1.2e-4 at sigma = 3, 8e-4 at sigma = 4 (|mu| <= 10,
#: against adaptive quadrature; tests/nets/test_baselines.py checks the first against torch.trapezoid).
HERMITE_RULE = _hermite_rule(128, 1e-16)


def expected_log1p_square(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[log(1 + z^2)], z ~ N(mu, sigma^2), by :data:`HERMITE_RULE`: deterministic, elementwise
    over any shape; one node at a time, so memory stays that of ``mu`` (not x 58)."""
    acc = torch.zeros_like(mu)
    for x, w in HERMITE_RULE:
        acc = acc + w * torch.log1p((mu + sigma * x).square())
    return acc


def gaussian_cauchy_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || Cauchy(0, 1)) per dimension: minus the Gaussian's entropy
    (0.5 log(2 pi e sigma^2)), plus log pi, plus E_q[log(1 + z^2)] (:func:`expected_log1p_square`)."""
    return (
        -0.5 * (math.log(2 * math.pi * math.e) + logvar) + math.log(math.pi) + expected_log1p_square(mu, torch.exp(0.5 * logvar))
    )


def log_cauchy(z: torch.Tensor) -> torch.Tensor:
    """log density of Cauchy(0, 1): -log pi - log(1 + z^2)."""
    return -math.log(math.pi) - torch.log1p(z.square())


@register("cauchy-gauss")
class CauchyPriorVAE(GaussianPosteriorVAE):
    DESCRIPTION = "Gaussian posterior, Cauchy(0, 1) prior, one-sample Monte Carlo KL (Barello, Charles & Pillow 2018)."
    LABEL, ROW_RANK = "Cauchy-prior VAE (Gaussian posterior)", 6
    MCEM_LATENT = None  # not the VAE's Gaussian prior it would inherit; MCEM has no Cauchy-on-z latent yet
    log_prior = staticmethod(lambda z: log_cauchy(z))
    exact_prior_kl = staticmethod(lambda mu, logvar: gaussian_cauchy_kl(mu, logvar))


@register("cauchy")
class CauchyVAE(SpectrogramVAE):
    DESCRIPTION = "Cauchy posterior, Cauchy(0, 1) prior, closed-form KL."
    OPTIONS = COMMON_OPTIONS
    LABEL, ROW_RANK, MCEM_LATENT = "Cauchy VAE (Cauchy posterior)", 5, CauchyLatent

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
