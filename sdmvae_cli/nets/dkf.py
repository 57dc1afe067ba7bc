"""`dkf`: the deep Kalman filter of the dynamical-VAE benchmark (its "DKS" variant).

Definition (Bie et al. 2021, section 2; Krishnan, Shalit & Sontag 2017, gated transition),
with z_0 = 0 and every dense layer tanh unless said:

- transition p(z_t | z_{t-1}) = N(f_t, diag v_t): gate G = sigmoid(L(ReLU(L(z_{t-1})))),
  proposal P = L(ReLU(L(z_{t-1}))), f_t = (1 - G) * L(z_{t-1}) + G * P, v_t = softplus(L(ReLU(P)));
- observation p(x_t | z_t) = N_c(0, diag exp(y_t)), y_t from a dense decoder (widths 32, 64, 128,
  256 without those narrower than m: :func:`widths_from`) and a linear output;
- inference q(z_t | z_{t-1}, x_{t:T}): g^x_t from a dense layer (256) and a **backward** LSTM over
  x (so it sees x_{t:T}), g^z_t from z_{t-1} (dense 32, then the LSTM's width), their average
  through a dense layer (32) to the prior strategy's heads (:mod:`sdmvae_cli.nets.seqpriors`).

The benchmark's 32-wide layers are for its z of 16: at a wider latent they are widened to m (a
layer narrower than z would be a bottleneck the benchmark never had), as the decoder's widths
(:func:`widths_from`).

With the benchmark's Gaussian prior, KL_t = KL(q(z_t | z_{t-1}^(s), x_{t:T}) || p(z_t | z_{t-1}^(s)))
in closed form at the recursion's own sample z_{t-1}^(s); ``--prior sdm`` puts the SDM prior on
the innovation z_t - f_t, ``--prior vsc`` a spike-and-slab one (the module docstring of
seqpriors gives the equations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdmvae_cli.nets.base import ModelConfig, mlp
from sdmvae_cli.nets.lstm import LSTMLayer
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.seqpriors import make_prior
from sdmvae_cli.nets.sequence import SequenceVAE, widths_from

#: the benchmark's dense widths (DVAE config/speech/cfg_dkf.ini)
X_WIDTH, Z_WIDTH, G_WIDTH, DECODER_WIDTHS = 256, 32, 32, (32, 64, 128, 256)


class GatedTransition(nn.Module):
    """p(z_t | z_{t-1}) of the DKF: a gated mix of a linear and a non-linear proposal."""

    def __init__(self, m: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(m, m), nn.ReLU(), nn.Linear(m, m), nn.Sigmoid())
        self.proposal = nn.Sequential(nn.Linear(m, m), nn.ReLU(), nn.Linear(m, m))
        self.linear = nn.Linear(m, m)
        self.var = nn.Linear(m, m)

    def forward(self, z_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of z_t given z_{t-1}."""
        g, p = self.gate(z_prev), self.proposal(z_prev)
        mean = (1 - g) * self.linear(z_prev) + g * p
        return mean, torch.log(F.softplus(self.var(F.relu(p))) + 1e-8)


@register("dkf")
class DKF(SequenceVAE):
    DESCRIPTION = "Deep Kalman filter (sequence model: backward-LSTM inference, gated transition); --prior gaussian/sdm/vsc."
    LABEL, ROW_RANK = "DKF", 20
    ENCODER_PREFIXES = ("x_to_g.", "rnn_x.", "z_to_g.", "g_to_z.", "prior.heads.")

    def build_networks(self, cfg: ModelConfig) -> None:
        m, h = cfg.latent, cfg.rnn_hidden
        self.x_to_g = mlp([cfg.n_bins, X_WIDTH], "tanh")
        self.rnn_x = LSTMLayer(X_WIDTH, h, reverse=True)
        self.z_to_g = mlp([m, max(Z_WIDTH, m), h], "tanh")
        self.g_to_z = mlp([h, max(G_WIDTH, m)], "tanh")
        self.prior = make_prior(cfg, max(G_WIDTH, m))
        self.transition = GatedTransition(m)
        widths = widths_from(DECODER_WIDTHS, m)
        self.decoder = mlp([m, *widths], "tanh")
        self.out = nn.Linear(widths[-1], cfg.n_bins)
        self.code_dim = self.prior.code_dim

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(z))

    def transition_mean(self, z_prev: torch.Tensor) -> torch.Tensor:
        return self.transition(z_prev)[0]

    def chain(self, x: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        gx = self.rnn_x(self.x_to_g(self.transform(x)))  # (B, T, h): g_t sees x_{t:T}
        z = x.new_zeros((*x.shape[:-2], self.cfg.latent))
        zs, codes, kls = [], [], []
        for t in range(x.shape[-2]):  # the recursion itself: z_t needs z_{t-1}
            f, logv = self.transition(z)
            h = self.g_to_z(0.5 * (gx[..., t, :] + self.z_to_g(z)))
            z, code, kl = self.prior_step(h, f, logv, noise, t)
            zs.append(z)
            codes.append(code)
            kls.append(kl)
        z = torch.stack(zs, -2)
        return {"dec": z, "z": z, "kl": torch.stack(kls, -1), "code": torch.stack(codes, -2)}
