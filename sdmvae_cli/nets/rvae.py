"""`rvae`: the recurrent VAE of the dynamical-VAE benchmark, causal or non-causal.

Definition (Bie et al. 2021, section 2; Leglaive, Alameda-Pineda, Girin & Horaud 2020), as DVAE's
``rvae.py`` with its speech configurations (no dense layers), with z_0 = 0:

- prior p(z_t) = N(0, I), independent over t: the dynamics live in the decoder, so the prior
  strategy gets f_t = 0 and log v_t = 0 at every step (``--prior sdm`` is then the frame-wise
  SDM prior, z_t = D a_t, under recurrent networks; ``--prior vsc`` is exactly VSC per step);
- observation p(x_t | z_{1:T}) = N_c(0, diag exp(y_t)): y_t from a forward LSTM over z_{1:t}
  (causal) or a bidirectional one over z_{1:T} (``--non-causal``), then a linear layer;
- inference q(z_t | z_{t-1}, x_{t:T}) (causal) or q(z_t | z_{t-1}, x_{1:T}) (non-causal): g^x_t from
  an LSTM over x run **backward** in time (bidirectional in the non-causal model), g^z_t from a
  forward LSTM *stepped* on z_{t-1} inside the recursion (z_{t-1} is only known once step t-1 has
  sampled it), and the prior strategy's heads on [g^x_t; g^z_t].

"Causal" describes the decoder: the causal model's posterior still sees x_{t:T}.
"""

from __future__ import annotations

import torch
from torch import nn

from sdmvae_cli.nets.base import ModelConfig
from sdmvae_cli.nets.lstm import LSTMLayer
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.seqpriors import make_prior
from sdmvae_cli.nets.sequence import SEQUENCE_OPTIONS, SequenceVAE


@register("rvae")
class RVAE(SequenceVAE):
    DESCRIPTION = "Recurrent VAE (sequence model: LSTM decoder over z, causal or --non-causal); --prior gaussian/sdm/vsc."
    LABEL, ROW_RANK = "RVAE", 22
    OPTIONS = SEQUENCE_OPTIONS + ("non_causal",)
    ENCODER_PREFIXES = ("rnn_x.", "rnn_z.", "prior.heads.")

    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        """'RVAE' or 'RVAE (non-causal)', then the prior's suffix (' + SDM (DCT, k=64)', ...)."""
        return cls.LABEL + (" (non-causal)" if cfg.non_causal else "") + cls.label_suffix(cfg)

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        return (cfg.non_causal, *super().row_order(cfg))

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        parts, shown = super().name_parts(cfg)
        return (["nc", *parts] if cfg.non_causal else parts), shown | {"non_causal"}

    def build_networks(self, cfg: ModelConfig) -> None:
        m, hid, nc = cfg.latent, cfg.rnn_hidden, cfg.non_causal
        width = 2 * hid if nc else hid
        # the x path runs backward: reverse-only (causal) or both ways (non-causal)
        self.rnn_x = LSTMLayer(cfg.n_bins, hid, reverse=not nc, bidirectional=nc)
        self.rnn_z = LSTMLayer(m, hid)  # stepped, one cell step per t
        self.prior = make_prior(cfg, width + hid)
        self.rnn_dec = LSTMLayer(m, hid, bidirectional=nc)
        self.out = nn.Linear(width, cfg.n_bins)
        self.code_dim = self.prior.code_dim

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """y_{1:T} from a whole latent sequence ``z`` (B, T, m) or (T, m): the decoder's LSTM
        runs over time, so y_t depends on z_{1:t} (causal) or on z_{1:T} (non-causal)."""
        return self.out(self.rnn_dec(z))

    def transition_mean(self, z_prev: torch.Tensor) -> torch.Tensor:
        """The RVAE's prior is N(0, I) at every step."""
        return torch.zeros_like(z_prev)

    def chain(self, x: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        gx = self.rnn_x(self.transform(x))  # (B, T, H or 2H): g^x_t sees x_{t:T} (non-causal: all)
        z = x.new_zeros((*x.shape[:-2], self.cfg.latent))
        zero = torch.zeros_like(z)  # the prior's mean and log-variance: N(0, I) at every step
        state = None
        zs, codes, kls = [], [], []
        for t in range(x.shape[-2]):  # the recursion itself: g^z_t needs z_{t-1}
            state = self.rnn_z.step(z, state)
            z, code, kl = self.prior_step(torch.cat([gx[..., t, :], state[0]], -1), zero, zero, noise, t)
            zs.append(z)
            codes.append(code)
            kls.append(kl)
        z = torch.stack(zs, -2)
        return {"dec": z, "z": z, "kl": torch.stack(kls, -1), "code": torch.stack(codes, -2)}
