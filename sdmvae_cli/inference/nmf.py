"""Itakura-Saito NMF of a noise variance, with the multiplicative updates of Leglaive et al. 2018.

The noisy STFT is modelled frame by frame as x_ft ~ N_c(0, v_ft) with

    v_ft = g_t * sigma2_ft + (W H)_ft            (Leglaive, Girin & Horaud, MLSP 2018)

where sigma2 is the speech variance given by a prior (the VAE decoder, or a speech NMF), g_t a
per-frame gain and W H (bins x K)(K x frames) a non-negative factorisation of the noise
variance, fitted on the noisy file itself. The negative log-likelihood is, up to a constant,
the Itakura-Saito cost ``sum_ft |x_ft|^2 / v_ft + log v_ft`` (:func:`is_objective`).

The updates below are the majorisation-minimisation (MM) updates of that cost, with the
exponent 1/2 of Févotte & Idier (2011) that makes each of them non-increasing even with the
fixed additive speech term; with S Monte Carlo samples of sigma2 (Leglaive et al.'s M-step) the
numerators and denominators are averaged over samples, which is why every function takes a
``speech`` tensor with a leading sample axis (S, frames, bins).

Shapes here are (frames, bins), the STFT convention of :mod:`sdmvae_cli.audio.stft`, so W is stored
as (K, bins) and H as (frames, K): the noise variance is ``H @ W``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: floor of every variance, so the updates never divide by zero
EPS = 1e-10


@dataclass
class NoiseNMF:
    """Noise variance H @ W: W (K, bins) spectral patterns, H (frames, K) activations."""

    W: torch.Tensor
    H: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        return self.H @ self.W


def init_nmf(power: torch.Tensor, rank: int, generator: torch.Generator | None = None) -> NoiseNMF:
    """Random positive factors whose product has the noisy file's mean power (so the first
    updates start from the right level instead of spending iterations on the scale)."""
    frames, bins = power.shape
    W = torch.rand(rank, bins, generator=generator, dtype=power.dtype).to(power.device) + 0.5
    H = torch.rand(frames, rank, generator=generator, dtype=power.dtype).to(power.device) + 0.5
    scale = (power.mean() / (H @ W).mean()).clamp_min(EPS).sqrt()
    return NoiseNMF(W * scale, H * scale)


def model_variance(speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> torch.Tensor:
    """v = g * sigma2 + W H, broadcast over the leading sample axis of ``speech``."""
    return (gain[:, None] * speech + nmf.variance).clamp_min(EPS)


def is_objective(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> torch.Tensor:
    """Monte Carlo average of the IS cost sum_ft |x|^2 / v + log v (the negative
    log-likelihood up to a constant), the quantity the updates do not increase."""
    v = model_variance(speech, gain, nmf)
    return (power / v + torch.log(v)).sum((-1, -2)).mean()


def _weights(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample averages of |x|^2 v^-2 and v^-1 (frames, bins), shared by every update."""
    inv = 1.0 / model_variance(speech, gain, nmf)
    return (power * inv.square()).mean(0), inv.mean(0)


def update_H(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> None:
    """M-step for H (H <- H * [(|x|^2 v^-2) W^T / (v^-1 W^T)]^(1/2)), in place."""
    num, den = _weights(power, speech, gain, nmf)
    nmf.H.mul_(((num @ nmf.W.t()) / (den @ nmf.W.t()).clamp_min(EPS)).sqrt())


def update_W(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> None:
    """M-step for W (W <- W * [H^T (|x|^2 v^-2) / H^T v^-1]^(1/2)), in place."""
    num, den = _weights(power, speech, gain, nmf)
    nmf.W.mul_(((nmf.H.t() @ num) / (nmf.H.t() @ den).clamp_min(EPS)).sqrt())


def update_gain(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> None:
    """M-step for the gain (g_t <- g_t * [sum_f E|x|^2 sigma2 v^-2 / sum_f E sigma2 v^-1]^(1/2)), in place."""
    inv = 1.0 / model_variance(speech, gain, nmf)
    num = (power * speech * inv.square()).mean(0).sum(-1)
    den = (speech * inv).mean(0).sum(-1)
    gain.mul_((num / den.clamp_min(EPS)).sqrt()).clamp_(min=EPS)


def nmf_step(power: torch.Tensor, speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF, fit_gain: bool = True) -> None:
    """One M-step: H, then W, then the gain (each non-increasing in :func:`is_objective`)."""
    update_H(power, speech, gain, nmf)
    update_W(power, speech, gain, nmf)
    if fit_gain:
        update_gain(power, speech, gain, nmf)


def fit_is_nmf(power: torch.Tensor, rank: int, iterations: int, generator: torch.Generator | None = None) -> NoiseNMF:
    """Plain IS-NMF of ``power`` (frames, bins) alone: used to learn a speech dictionary for the
    NMF baseline (no speech term: ``speech`` is zero)."""
    nmf = init_nmf(power, rank, generator)
    zero = power.new_zeros(1, *power.shape)
    gain = power.new_ones(power.shape[0])
    for _ in range(iterations):
        update_H(power, zero, gain, nmf)
        update_W(power, zero, gain, nmf)
        # the factorisation is scale-ambiguous: keep W's rows at unit mean so H carries the level
        s = nmf.W.mean(1, keepdim=True).clamp_min(EPS)
        nmf.W.div_(s)
        nmf.H.mul_(s.t())
    return nmf
