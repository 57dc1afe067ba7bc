"""The Monte Carlo EM of enhancement, which samples each family's latent prior.

The MCEM of Leglaive, Girin & Horaud (MLSP 2018) draws the latent of every frame from its
posterior p(latent | x) ∝ p(x | z(latent)) p(latent) with random-walk Metropolis-Hastings,
which needs what the variational interface of the models does not give: the prior's log
density and a proposal. Each family supplies them through its ``MCEM_LATENT`` class
(:mod:`sdmvae_cli.nets.latents`, where each prior is written out).

Chains and frames are one batch: the state is (chains, frames, d) and each MH step is one
decoder call on chains x frames rows, accepted or rejected per (chain, frame).
"""

from __future__ import annotations

from typing import Callable

import torch

from sdmvae_cli.core.errors import UsageError
from sdmvae_cli.inference.nmf import init_nmf, is_objective, nmf_step
from sdmvae_cli.nets import REGISTRY, SpectrogramVAE


def speech_variance(model: SpectrogramVAE, z: torch.Tensor) -> torch.Tensor:
    """sigma2(z) = exp(decoder(z)), clamped so exp never overflows on wild samples."""
    return torch.exp(model.decode(z).clamp(-60.0, 60.0))


def check_mcem_prior(model: SpectrogramVAE) -> None:
    """MCEM samples the prior density of the model's latent: refused, before any file, for a
    family that has none here (one line; ``--method vem`` works with every model)."""
    if type(model).MCEM_LATENT is None:
        have = sorted(name for name, cls in REGISTRY.items() if cls.MCEM_LATENT is not None)
        raise UsageError(
            f"--method mcem has no prior density for a {model.name!r} model (it has one for {', '.join(have)}); use --method vem"
        )


def latent_for(model: SpectrogramVAE, post: dict[str, torch.Tensor]):
    check_mcem_prior(model)
    return type(model).MCEM_LATENT(model, post)


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
