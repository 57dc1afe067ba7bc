"""Explicit prior densities of each family's latent, and the Monte Carlo EM that samples them.

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

Chains and frames are one batch: the state is (chains, frames, d) and each MH step is one
decoder call on chains x frames rows, accepted or rejected per (chain, frame).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sdmvae_cli.errors import UsageError
from sdmvae_cli.nets import SpectrogramVAE
from sdmvae_cli.nmf import init_nmf, is_objective, nmf_step


def speech_variance(model: SpectrogramVAE, z: torch.Tensor) -> torch.Tensor:
    """sigma2(z) = exp(decoder(z)), clamped so exp never overflows on wild samples."""
    return torch.exp(model.decode(z).clamp(-60.0, 60.0))


class Latent:
    """Base family: the latent is z itself with a standard Gaussian prior."""

    def __init__(self, model: SpectrogramVAE, post: dict[str, torch.Tensor]):
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


class LaplaceLatent(Latent):
    def log_prior(self, u):
        return -u.abs().sum(-1)


class CauchyLatent(Latent):
    def init(self):
        return self.post["loc"]

    def log_prior(self, u):
        return -torch.log1p(u.square()).sum(-1)


class SdmLatent(Latent):
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


class VscLatent(Latent):
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


FAMILIES: dict[str, type[Latent]] = {
    "vae": Latent,
    "laplace": LaplaceLatent,
    "cauchy": CauchyLatent,
    "sdm": SdmLatent,
    "vsc": VscLatent,
}


def check_mcem_prior(model: SpectrogramVAE) -> None:
    """MCEM samples the prior density of the model's latent: refused, before any file, for a
    family that has none here (one line; ``--method vem`` works with every model)."""
    if model.name not in FAMILIES:
        raise UsageError(f"--method mcem has no prior density for a {model.name!r} model (it has one for "
                         f"{', '.join(sorted(FAMILIES))}); use --method vem")


def latent_for(model: SpectrogramVAE, post: dict[str, torch.Tensor]) -> Latent:
    check_mcem_prior(model)
    return FAMILIES[model.name](model, post)


def mcem(model: SpectrogramVAE, power: torch.Tensor, opts, on_iter: Callable[[int], None] | None = None):
    """Monte Carlo EM; returns (speech variance samples, gain, nmf, objective per iteration)."""
    gen = torch.Generator().manual_seed(opts.seed)
    nmf = init_nmf(power, opts.nmf_rank, gen)
    gain = power.new_ones(power.shape[0])
    with torch.no_grad():
        lat = latent_for(model, model.encode(power))
        u = lat.init().expand(opts.chains, *lat.init().shape).clone()

        def loglik(sig: torch.Tensor) -> torch.Tensor:
            v = (gain[:, None] * sig + nmf.variance).clamp_min(1e-10)
            return -(power / v + torch.log(v)).sum(-1)

        sig = speech_variance(model, lat.decoder_input(u))
        history = []
        for it in range(opts.iterations):
            target = loglik(sig) + lat.log_prior(u)
            kept_u, kept_sig = [], []
            for step in range(opts.mh_steps):
                u2 = lat.propose(u, opts.proposal_std)
                sig2 = speech_variance(model, lat.decoder_input(u2))
                target2 = loglik(sig2) + lat.log_prior(u2)
                accept = torch.log(torch.rand_like(target)) < target2 - target
                u = torch.where(accept[..., None], u2, u)
                sig = torch.where(accept[..., None], sig2, sig)
                target = torch.where(accept, target2, target)
                if step >= opts.mh_steps - opts.keep:
                    kept_u.append(u)
                    kept_sig.append(sig)
            speech = torch.cat(kept_sig)  # (keep * chains, frames, bins)
            lat.m_step(torch.cat(kept_u))
            nmf_step(power, speech, gain, nmf)
            history.append(float(is_objective(power, speech, gain, nmf)))
            if on_iter:
                on_iter(it)
    return speech, gain, nmf, history
