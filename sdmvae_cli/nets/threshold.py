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

Posterior-mean code: z = T(s) is 0 with probability p0 = P(|s - mu| <= lambda) and otherwise
mu + d - lambda sign(d) with d = s - mu symmetric about 0, whose conditional mean is mu. So
E[z] = (1 - p0) mu exactly (lambda at its posterior mean when learned): the code used for
resynthesis and whose sparsity is reported.

Learned threshold sampling: lambda ~ Gamma(a, b) is drawn by a reparameterised transform of
pre-drawn standard noise, so a training step has no data-dependent RNG op and can be captured
in a CUDA graph (and matched by a stacked sweep): the Marsaglia-Tsang map of a normal eps,
(a + 2/3)(1 + eps / sqrt(9 a + 6))^3 ~ Gamma(a + 1) (its rejection step skipped: acceptance is
above 95 % for shape >= 1), times u^(1/a) (u uniform) for the shape boost to Gamma(a)
(Marsaglia & Tsang 2000; reparameterised as in Naesseth et al. 2017).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.nets.base import COMMON_OPTIONS, LossTerms, ModelConfig, SpectrogramVAE, gaussian_kl_std, itakura_saito, open_uniform
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


def gamma_reparam(shape: torch.Tensor, rate: torch.Tensor, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gamma(shape, rate) from standard normal ``eps`` and uniform ``u`` (module docstring)."""
    d = shape + 2.0 / 3.0  # (shape + 1) - 1/3
    v = (1.0 + eps * torch.rsqrt(9.0 * d)).clamp_min(1e-4) ** 3
    return d * v * open_uniform(u) ** (1.0 / shape) / rate


def gamma_kl(shape_q: torch.Tensor, rate_q: torch.Tensor, shape_p, rate_p) -> torch.Tensor:
    """KL(Gamma(a_q, b_q) || Gamma(a_p, b_p)), rate parametrisation, per dimension
    (prior parameters as floats or, in a stacked sweep, 0-d tensors)."""
    shape_p_t = torch.as_tensor(shape_p, dtype=shape_q.dtype, device=shape_q.device)
    rate_p_t = torch.as_tensor(rate_p, dtype=shape_q.dtype, device=shape_q.device)
    return (
        (shape_q - shape_p) * torch.digamma(shape_q)
        - torch.lgamma(shape_q)
        + torch.lgamma(shape_p_t)
        + shape_p * (torch.log(rate_q) - torch.log(rate_p_t))
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

    def encode(self, x):
        post = self.heads(self.features(x))
        if self.cfg.learn_threshold:
            post["lam_shape"] = F.softplus(post["lam_shape"]) + 1e-3
            post["lam_rate"] = F.softplus(post["lam_rate"]) + 1e-3
        return post

    def noise_spec(self, batch: int):
        """J samples per frame: base noise, and for a learned threshold the Gamma's noise."""
        shape = (self.cfg.samples, batch, self.cfg.latent) if self.cfg.samples > 1 else (batch, self.cfg.latent)
        spec = {"base": ("normal" if self.cfg.base == "gaussian" else "uniform", shape)}
        if self.cfg.learn_threshold:
            spec.update(lam_eps=("normal", shape), lam_u=("uniform", shape))
        return spec

    def _base_sample(self, post, noise) -> torch.Tensor:
        mu, ls = post["mu"], post["log_scale"]
        if self.cfg.base == "gaussian":
            return mu + torch.exp(0.5 * ls) * noise["base"]
        u = open_uniform(noise["base"]) - 0.5
        return mu - ls.exp() * torch.sign(u) * torch.log1p(-2 * u.abs())

    def _lambda(self, post, noise) -> torch.Tensor:
        if not self.cfg.learn_threshold:
            return self.hp("threshold") * torch.ones_like(post["mu"])
        return gamma_reparam(post["lam_shape"], post["lam_rate"], noise["lam_eps"], noise["lam_u"])

    def sample(self, post, noise=None):
        noise = self._noise(post, noise)
        return straight_through(self._base_sample(post, noise), self._lambda(post, noise), post["mu"])

    def spike_probability(self, post) -> torch.Tensor:
        lam = post["lam_shape"] / post["lam_rate"] if self.cfg.learn_threshold else self.hp("threshold") * torch.ones_like(post["mu"])
        if self.cfg.base == "gaussian":
            return torch.erf(lam / (torch.exp(0.5 * post["log_scale"]) * math.sqrt(2.0)))
        return 1 - torch.exp(-lam / post["log_scale"].exp())

    def mean_code(self, post):
        """E[T(s)] = (1 - p0) mu (module docstring)."""
        return (1.0 - self.spike_probability(post)) * post["mu"]

    def base_kl(self, post) -> torch.Tensor:
        if self.cfg.base == "gaussian":
            return gaussian_kl_std(post["mu"], post["log_scale"]).sum(-1)
        return laplace_kl_std(post["mu"], post["log_scale"]).sum(-1)

    def kl(self, post, z):
        """beta1 * base KL + beta2 * Gamma KL: unlike the other models, already weighted (two
        weights), so :meth:`loss` adds it as is."""
        kl = self.hp("beta") * self.base_kl(post)
        if self.cfg.learn_threshold:
            kl = kl + self.hp("beta2") * gamma_kl(post["lam_shape"], post["lam_rate"], self.hp("gamma_shape"), self.hp("gamma_rate")).sum(-1)
        return kl

    def loss(self, x, noise=None):
        """Max-ELBO over J samples per frame (eq. 9); J = 1 is the plain estimator."""
        post = self.encode(x)
        kl = self.kl(post, None)  # already weighted by beta / beta2
        if self.cfg.samples == 1:
            recon = itakura_saito(x, self.decode(self.sample(post, noise)))
        else:
            z = self.sample(post, noise)  # (J, B, m): mu and the posterior broadcast over J
            recon = itakura_saito(x.unsqueeze(0), self.decode(z)).min(0).values  # the KL is the same for every j
        return LossTerms(recon + kl, recon, kl)
