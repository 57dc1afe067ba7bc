"""`enhance` with a sequence prior (DKF, RVAE, a scheduled-sampling SRNN): the variational EM of DVAE_SE (Bie et al. 2022).

Model: X_ft = sqrt(g_t) S_ft + B_ft, S | z ~ N_c(0, sigma2_theta(z)) from the trained dynamical
VAE, B ~ N_c(0, (W H)_ft) a rank-K NMF fitted on the noisy file alone (as the frame-wise EM).

Why another E-step than the frame-wise one: there q(z | x) factorises over frames, so its
per-frame parameters are optimised directly; a dynamical posterior is a recursion (z_t depends
on z_{t-1} and on the whole utterance through the LSTMs), with no per-frame parameters to free.
DVAE_SE's answer, followed here: q is the trained **encoder itself**, run on the noisy power as
one sequence, and its weights (the model's ``encoder_prefixes()``) are fine-tuned on the file by
Adam on the negative ELBO

    sum_ft [ |X_ft|^2 / V_ft + log V_ft ] + sum_t KL_t,   V = g sigma2_theta(z) + W H,

with R reparameterised samples of the chain batched as sequences; the decoder and the prior's
transition stay frozen (the clean-speech model). Each EM iteration: ``steps`` Adam steps, then
the M-step of the NMF and gain on fresh samples (:func:`~sdmvae_cli.inference.nmf.nmf_step`);
at the end the Wiener filter averages ``wiener_samples`` samples. A copy of the model is tuned
per file: the prior loaded once is never changed.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from sdmvae_cli.inference.mcem import speech_variance
from sdmvae_cli.inference.nmf import init_nmf, is_objective, nmf_step
from sdmvae_cli.nets.noise import draw_noise
from sdmvae_cli.nets.sequence import SequenceVAE


def _speech(model: SequenceVAE, noisy: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(speech variances (samples, T, F), KL per sample (samples,)) of ``samples`` chains on the
    noisy power, each one sequence, batched."""
    x = noisy.expand(samples, *noisy.shape)
    noise = draw_noise(model.step_noise_spec(samples, noisy.shape[0]), device=noisy.device)
    out = model.chain(x, noise)
    return speech_variance(model, out["dec"]), out["kl"].sum(-1)


def tuned_copy(model: SequenceVAE) -> tuple[SequenceVAE, list[torch.nn.Parameter]]:
    """A per-file copy whose encoder weights alone take gradients (the rest is the prior)."""
    work = copy.deepcopy(model)
    tuned = []
    for name, p in work.named_parameters():
        p.requires_grad_(name.startswith(model.encoder_prefixes()))
        if p.requires_grad:
            tuned.append(p)
    return work, tuned


def vem_sequence(model: SequenceVAE, power: torch.Tensor, opts, on_iter: Callable[[int], None] | None = None):
    """Variational EM with a dynamical prior; returns (speech variance samples for the filter,
    gain, nmf, IS objective per iteration), as the frame-wise :func:`vem`."""
    gen = torch.Generator().manual_seed(opts.seed)
    nmf = init_nmf(power, opts.nmf_rank, gen)
    gain = power.new_ones(power.shape[0])
    work, tuned = tuned_copy(model)
    optimiser = torch.optim.Adam(tuned, lr=opts.lr)
    history = []
    for it in range(opts.iterations):
        noise = nmf.variance.detach()
        for _ in range(opts.steps):
            sig, kl = _speech(work, power, opts.samples)
            v = gain[:, None] * sig + noise
            loss = ((power / v + torch.log(v)).sum((-1, -2)) + kl).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            speech = _speech(work, power, opts.samples)[0]
            nmf_step(power, speech, gain, nmf)
            history.append(float(is_objective(power, speech, gain, nmf)))
        if on_iter:
            on_iter(it)
    with torch.no_grad():
        speech = _speech(work, power, opts.wiener_samples)[0]
    return speech, gain, nmf, history
