"""`srnn`: the stochastic recurrent neural network of the dynamical-VAE benchmark.

Definition (Bie et al. 2021, section 2; Fraccaro et al. 2016), as DVAE's ``srnn.py`` with its
speech configuration, with z_0 = 0 and every dense layer tanh:

- deterministic chain h_t = forward LSTM over a dense layer (256) of x_{t-1}, so h_t sees
  x_{1:t-1} only. x_0 is **silence**: the input transform of a zero-power frame (log(0 + 1e-8)
  with our default log input, 0 with raw power), so "x_0 is silence" means the same in both
  input modes (the benchmark's x_0 = 0 is that of raw power);
- prior p(z_t | z_{t-1}, h_t) = N(f_t, diag v_t): [h_t; z_{t-1}] -> dense 64 -> 32 -> linear heads
  f_t and log v_t;
- observation p(x_t | z_t, h_t) = N_c(0, diag exp(y_t)), y_t from [h_t; z_t] -> dense 256 -> linear;
- inference q(z_t | z_{t-1}, g_t): g_t = **backward** LSTM over a dense layer (256) of [h_t; x_t]
  (so it sees x_{t:T} and, through h, x_{1:t-1}); [g_t; z_{t-1}] -> dense 64 -> 32 -> the prior
  strategy's heads (:mod:`sdmvae_cli.nets.seqpriors`).

The 64- and 32-wide layers are the benchmark's for its z of 16; they are widened to m when the
latent is wider (max(64, m), max(32, m)): a layer narrower than z would be a bottleneck the
benchmark never had (as :func:`~sdmvae_cli.nets.sequence.widths_from` does for the DKF).

h is teacher-forced: it reads the ground-truth x_{t-1} in training and in resynthesis (as the
benchmark does); used without x (generation, enhancement) it would need scheduled sampling.

**Scheduled sampling** (``--ss-start S --ss-end E``, DVAE_SE's SRNN prior, ``src/model_ss/srnn_ss.py``):
two deterministic chains. h^inf (teacher-forced, as above) feeds the inference network; h^gen
is the same LSTM stepped on the model's own previous prediction, exp(y_{t-1}) (detached; x_0
silence), and feeds the prior p(z_t | z_{t-1}, h^gen_t) always. The decoder reads [h_t; z_t]
with h_t = h^gen_t with probability p(epoch) (0 before epoch S, rising linearly to 1 at E), else
h^inf_t: one draw per sequence and step (DVAE_SE draws one per step for the whole batch; per
sequence keeps a batch's rows independent, which the data-parallel split needs). Outside
training (validation, resynthesis, enhancement) p = 1: the model as it is used without the clean
signal, so early stopping watches that model throughout. Such an SRNN can be an `enhance` prior:
its E-step fine-tunes the inference branch on the noisy power (DVAE_SE's "SRNN-GM v1").
"""

from __future__ import annotations

import torch
from torch import nn

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.base import ModelConfig, mlp
from sdmvae_cli.nets.lstm import LSTMLayer
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.seqpriors import make_prior
from sdmvae_cli.nets.sequence import SEQUENCE_OPTIONS, SequenceVAE

#: the benchmark's dense widths (DVAE config/speech/cfg_srnn.ini)
X_WIDTH, Z_WIDTHS, DECODER_WIDTH = 256, (64, 32), 256
#: the fed-back prediction's log-power is capped (exp overflows float32 above 88)
MAX_LOG_POWER = 80.0


class GaussianTransition(nn.Module):
    """p(z_t | z_{t-1}, h_t): a dense trunk on [h_t; z_{t-1}] and two linear heads."""

    def __init__(self, d_in: int, widths: list[int], m: int):
        super().__init__()
        self.trunk = mlp([d_in, *widths], "tanh")
        self.mean = nn.Linear(widths[-1], m)
        self.logvar = nn.Linear(widths[-1], m)

    def forward(self, hz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean f_t, log-variance log v_t) of z_t given [h_t; z_{t-1}]."""
        u = self.trunk(hz)
        return self.mean(u), self.logvar(u)


@register("srnn")
class SRNN(SequenceVAE):
    DESCRIPTION = (
        "Stochastic RNN (sequence model: teacher-forced forward LSTM h_t, backward-LSTM inference); --prior gaussian/sdm/vsc."
    )
    LABEL, ROW_RANK = "SRNN", 21
    OPTIONS = SEQUENCE_OPTIONS + ("ss_start", "ss_end")
    NO_ENHANCE = "its h_t is teacher-forced on the clean x_{t-1}, unknown in a noisy file (train it with --ss-start/--ss-end)"
    #: fine-tuned by `enhance` with a scheduled-sampling SRNN: the inference branch (h^gen's LSTM stays)
    SS_ENCODER_PREFIXES = ("hx_to_g.", "rnn_g.", "g_to_z.", "prior.heads.")

    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if cfg.ss_end > 0 and not cfg.ss_start < cfg.ss_end:
            raise SdmvaeError(f"--ss-start must be below --ss-end, got {cfg.ss_start} and {cfg.ss_end}")
        if cfg.ss_end == 0 and cfg.ss_start > 0:
            raise SdmvaeError("--ss-start needs --ss-end (scheduled sampling ends there)")

    @classmethod
    def validation_set(cls, cfg: ModelConfig) -> str:
        """With scheduled sampling the decoder reads its own predictions in validation: not the
        teacher-forced model's figure, so the two are never ranked together."""
        own = ", decoded from its own predictions" if cfg.ss_end > 0 else ""
        return super().validation_set(cfg) + own

    @classmethod
    def label_suffix(cls, cfg: ModelConfig) -> str:
        ss = f" (scheduled sampling {cfg.ss_start}-{cfg.ss_end})" if cfg.ss_end > 0 else ""
        return ss + super().label_suffix(cfg)

    @classmethod
    def patience_from(cls, cfg: ModelConfig) -> int:
        """Validation measures the model as used without the clean signal (p = 1), which the
        training objective reaches only at ss_end: no epoch before counts against the patience."""
        return cfg.ss_end

    def encoder_prefixes(self) -> tuple[str, ...] | None:
        return self.SS_ENCODER_PREFIXES if self.cfg.ss_end > 0 else None

    def step_noise_spec(self, batch: int, steps: int):
        spec = super().step_noise_spec(batch, steps)
        if self.cfg.ss_end > 0:  # the decoder's choice of h per sequence and step
            spec = {**spec, "coin": ("uniform", (batch, steps, 1))}
        return spec

    def prediction_weight(self) -> torch.Tensor | float:
        """p(epoch): how often the decoder reads its own predictions (1 outside training)."""
        if not self.training:
            return 1.0
        span = self.cfg.ss_end - self.cfg.ss_start
        return torch.clamp((self.epoch - self.cfg.ss_start) / span, 0.0, 1.0)

    def build_networks(self, cfg: ModelConfig) -> None:
        m, hid = cfg.latent, cfg.rnn_hidden
        widths = [max(w, m) for w in Z_WIDTHS]
        self.x_to_h = mlp([cfg.n_bins, X_WIDTH], "tanh")
        self.rnn_h = LSTMLayer(X_WIDTH, hid)
        self.hx_to_g = mlp([hid + cfg.n_bins, X_WIDTH], "tanh")
        self.rnn_g = LSTMLayer(X_WIDTH, hid, reverse=True)
        self.g_to_z = mlp([hid + m, *widths], "tanh")
        self.prior = make_prior(cfg, widths[-1])
        self.transition = GaussianTransition(hid + m, widths, m)
        self.decoder = mlp([hid + m, DECODER_WIDTH], "tanh")
        self.out = nn.Linear(DECODER_WIDTH, cfg.n_bins)
        self.code_dim = self.prior.code_dim

    def decode(self, hz: torch.Tensor) -> torch.Tensor:
        """y_t from [h_t; z_t] (what :meth:`chain` returns as ``dec``)."""
        return self.out(self.decoder(hz))

    def transition_mean(self, z_prev: torch.Tensor) -> torch.Tensor:
        raise SdmvaeError(
            "SRNN: its transition and decoder read h_t, an LSTM over the audio's own past frames, so codes alone "
            "do not determine its output (decode codes of a DKF or an RVAE)"
        )

    def deterministic(self, xt: torch.Tensor) -> torch.Tensor:
        """h_{1:T} from transformed frames ``xt`` (B, T, bins): the LSTM over x_{0:T-1}, x_0 the
        transform of a zero-power frame (silence in either input mode)."""
        silence = self.transform(xt.new_zeros((*xt.shape[:-2], 1, xt.shape[-1])))
        return self.rnn_h(self.x_to_h(torch.cat([silence, xt[..., :-1, :]], -2)))

    def chain(self, x: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        if self.cfg.ss_end > 0:
            return self._scheduled_chain(x, noise)
        xt = self.transform(x)
        h = self.deterministic(xt)  # (B, T, H): h_t sees x_{<t}
        g = self.rnn_g(self.hx_to_g(torch.cat([h, xt], -1)))  # g_t sees x_{t:T} (and h_t)
        z = x.new_zeros((*x.shape[:-2], self.cfg.latent))
        zs, codes, kls = [], [], []
        for t in range(x.shape[-2]):  # the recursion itself: z_t needs z_{t-1}
            f, logv = self.transition(torch.cat([h[..., t, :], z], -1))
            z, code, kl = self.prior_step(self.g_to_z(torch.cat([g[..., t, :], z], -1)), f, logv, noise, t)
            zs.append(z)
            codes.append(code)
            kls.append(kl)
        z = torch.stack(zs, -2)
        return {"dec": torch.cat([h, z], -1), "z": z, "h": h, "kl": torch.stack(kls, -1), "code": torch.stack(codes, -2)}

    def _scheduled_chain(self, x: torch.Tensor, noise) -> dict[str, torch.Tensor]:
        """The scheduled-sampling recursion (module docstring): h^gen stepped on the model's own
        predictions, the prior on h^gen, the decoder on h^gen or h^inf by the step's coin."""
        xt = self.transform(x)
        h_inf = self.deterministic(xt)
        g = self.rnn_g(self.hx_to_g(torch.cat([h_inf, xt], -1)))
        w = self.prediction_weight()
        z = x.new_zeros((*x.shape[:-2], self.cfg.latent))
        prev, state = x.new_zeros(x[..., 0, :].shape), None  # x_0: silence
        hs, ys, zs, codes, kls = [], [], [], [], []
        for t in range(x.shape[-2]):  # h^gen_t needs y_{t-1}, which needs z_{t-1}
            state = self.rnn_h.step(self.x_to_h(self.transform(prev)), state)
            f, logv = self.transition(torch.cat([state[0], z], -1))
            z, code, kl = self.prior_step(self.g_to_z(torch.cat([g[..., t, :], z], -1)), f, logv, noise, t)
            h = torch.where(self._pick(noise, t, w), state[0], h_inf[..., t, :])
            y = self.decode(torch.cat([h, z], -1))
            prev = torch.exp(y.detach().clamp(max=MAX_LOG_POWER))
            ys.append(y)
            hs.append(h)
            zs.append(z)
            codes.append(code)
            kls.append(kl)
        h, z = torch.stack(hs, -2), torch.stack(zs, -2)
        out = {"dec": torch.cat([h, z], -1), "y": torch.stack(ys, -2), "z": z, "h": h, "kl": torch.stack(kls, -1)}
        return out | {"code": torch.stack(codes, -2)}

    def _pick(self, noise, t: int, w) -> torch.Tensor:
        """Whether the decoder reads h^gen at step t: the step's coin under p in training; the
        mean chain (no noise) takes the likelier side; p = 1 outside training."""
        if noise is None:
            return torch.as_tensor(w >= 0.5)
        if "coin" not in noise:
            raise SdmvaeError("a scheduled-sampling SRNN's noise has no 'coin': draw it from the model's step_noise_spec")
        return noise["coin"][..., t, :] < w
