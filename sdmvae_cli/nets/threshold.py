"""`threshold`: variational sparse coding with learned thresholding (Fallah & Rozell, ICML 2022).

A base posterior s (Gaussian or Laplacian, location mu) is passed through the shifted
soft-threshold (their eq. 2)::

    T(s; lambda, mu) = 0            if |s - mu| <= lambda
                       s - lambda   if s > mu + lambda
                       s + lambda   if s < mu - lambda

which collapses the mass mu +- lambda onto 0 and closes the gap so the slab is the base
distribution centred on mu. Gradients skip T with the straight-through estimator (eq. 4):
z = s + T(sg[s]) - sg[s] (lambda and mu keep their own gradient through T).

The threshold is fixed, or learned per frame and latent with a Gamma posterior output by the
encoder and a Gamma(gamma_shape, gamma_rate) prior (eq. 5; KL weights beta1 = ``beta`` on the
base KL and beta2 on the Gamma KL). The base KL is taken against N(0, 1) (Gaussian base) or
Laplace(0, 1) (Laplacian base), in closed form. With J = ``samples`` > 1, each frame draws J
samples and keeps the one of highest ELBO (eq. 9).

Posterior-mean code: the slab's mean is mu and the spike probability is
p0 = P(|s - mu| <= lambda) (lambda at its posterior mean when learned); the code is mu where
p0 < 1/2 and exactly 0 elsewhere (the more probable of spike and slab, each at its mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.nets.base import COMMON_OPTIONS, LossTerms, ModelConfig, SpectrogramVAE, gaussian_kl_std, itakura_saito
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import Heads


def shifted_soft_threshold(s: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Fallah & Rozell eq. 2 (see module docstring)."""
    d = s - mu
    return torch.where(d.abs() > lam, s - lam * torch.sign(d), torch.zeros_like(s))


def straight_through(s: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 4: forward value T(s), gradient w.r.t. s of the identity."""
    s_sg = s.detach()
    return s + shifted_soft_threshold(s_sg, lam, mu) - s_sg


def laplace_kl_std(mu: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(Laplace(mu, b) || Laplace(0, 1)) per dimension: -log b + |mu| + b exp(-|mu| / b) - 1."""
    b = log_b.exp()
    return -log_b + mu.abs() + b * torch.exp(-mu.abs() / b) - 1.0


def gamma_kl(shape_q: torch.Tensor, rate_q: torch.Tensor, shape_p: float, rate_p: float) -> torch.Tensor:
    """KL(Gamma(a_q, b_q) || Gamma(a_p, b_p)), rate parametrisation, per dimension."""
    return (
        (shape_q - shape_p) * torch.digamma(shape_q)
        - torch.lgamma(shape_q)
        + math.lgamma(shape_p)
        + shape_p * (torch.log(rate_q) - math.log(rate_p))
        + shape_q * (rate_p - rate_q) / rate_q
    )


@register("threshold")
class ThresholdVSC(SpectrogramVAE):
    DESCRIPTION = "Shifted soft-threshold of a Gaussian/Laplacian posterior, straight-through (Fallah & Rozell 2022)."
    OPTIONS = COMMON_OPTIONS + ("base", "threshold", "learn_threshold", "gamma_shape", "gamma_rate", "beta2", "samples")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # log_scale: log sigma^2 (gaussian base) or log b (laplace base)
        names = ("mu", "log_scale") + (("lam_shape", "lam_rate") if cfg.learn_threshold else ())
        self.heads = Heads(self.enc_dim, cfg.latent, names)

    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if cfg.base not in ("gaussian", "laplace"):
            raise SdmvaeError(f"--base must be gaussian or laplace, got {cfg.base!r}")
        if cfg.samples < 1:
            raise SdmvaeError("--samples must be >= 1")
        if not cfg.learn_threshold and cfg.threshold < 0:
            raise SdmvaeError("--threshold must be >= 0")
        if cfg.gamma_shape <= 0 or cfg.gamma_rate <= 0:
            raise SdmvaeError("--gamma-shape and --gamma-rate must be > 0")

    @property
    def graph_safe(self) -> bool:
        return not self.cfg.learn_threshold  # Gamma rsample cannot be captured in a CUDA graph

    def encode(self, x):
        post = self.heads(self.features(x))
        if self.cfg.learn_threshold:
            post["lam_shape"] = F.softplus(post["lam_shape"]) + 1e-3
            post["lam_rate"] = F.softplus(post["lam_rate"]) + 1e-3
        return post

    def _base_sample(self, post, n: int | None = None) -> torch.Tensor:
        mu, ls = post["mu"], post["log_scale"]
        shape = (n, *mu.shape) if n else mu.shape
        if self.cfg.base == "gaussian":
            return mu + torch.exp(0.5 * ls) * torch.randn(shape, device=mu.device, dtype=mu.dtype)
        u = torch.rand(shape, device=mu.device, dtype=mu.dtype).clamp(1e-6, 1 - 1e-6) - 0.5
        return mu - ls.exp() * torch.sign(u) * torch.log1p(-2 * u.abs())

    def _lambda(self, post, n: int | None = None) -> torch.Tensor:
        if not self.cfg.learn_threshold:
            return torch.full_like(post["mu"], self.cfg.threshold)
        dist = torch.distributions.Gamma(post["lam_shape"], post["lam_rate"])
        return dist.rsample((n,)) if n else dist.rsample()

    def sample(self, post):
        return straight_through(self._base_sample(post), self._lambda(post), post["mu"])

    def spike_probability(self, post) -> torch.Tensor:
        lam = post["lam_shape"] / post["lam_rate"] if self.cfg.learn_threshold else torch.full_like(post["mu"], self.cfg.threshold)
        if self.cfg.base == "gaussian":
            return torch.erf(lam / (torch.exp(0.5 * post["log_scale"]) * math.sqrt(2.0)))
        return 1 - torch.exp(-lam / post["log_scale"].exp())

    def mean_code(self, post):
        return torch.where(self.spike_probability(post) < 0.5, post["mu"], torch.zeros_like(post["mu"]))

    def base_kl(self, post) -> torch.Tensor:
        if self.cfg.base == "gaussian":
            return gaussian_kl_std(post["mu"], post["log_scale"]).sum(-1)
        return laplace_kl_std(post["mu"], post["log_scale"]).sum(-1)

    def kl(self, post, z):
        """beta1 * base KL + beta2 * Gamma KL: unlike the other models, already weighted (two
        weights), so :meth:`loss` adds it as is."""
        kl = self.cfg.beta * self.base_kl(post)
        if self.cfg.learn_threshold:
            kl = kl + self.cfg.beta2 * gamma_kl(post["lam_shape"], post["lam_rate"], self.cfg.gamma_shape, self.cfg.gamma_rate).sum(-1)
        return kl

    def loss(self, x):
        """Max-ELBO over J samples per frame (eq. 9); J = 1 is the plain estimator."""
        post = self.encode(x)
        kl = self.kl(post, None)  # already weighted by beta / beta2
        j = self.cfg.samples
        if j == 1:
            recon = itakura_saito(x, self.decode(self.sample(post)))
        else:
            z = straight_through(self._base_sample(post, j), self._lambda(post, j), post["mu"])  # (J, B, m)
            recon = itakura_saito(x.unsqueeze(0), self.decode(z)).min(0).values  # the KL is the same for every j
        return LossTerms(recon + kl, recon, kl)
