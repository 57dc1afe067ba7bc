"""Sequence families: dynamical VAEs over (batch, T, bins) sequences of power frames.

A dynamical VAE (Bie, Girin, Leglaive, Hueber, Alameda-Pineda, Interspeech 2021) models the
sequence x_{1:T} with latents z_{1:T} linked in time. All of the families here share:

- the observation model of the frame-wise models (eq. 2): x_t ~ N_c(0, diag exp(y_t)), so the
  reconstruction term is the Itakura-Saito sum per frame (:func:`itakura_saito`);
- an inference recursion that draws z_t from q(z_t | z_{t-1}, ...), one reparameterised sample
  at a time (z_0 = 0), and a per-step KL in closed form between q(z_t | ...) and
  p(z_t | z_{t-1}, ...), both at that sample (the benchmark's estimator, its ``loss_KLD`` without
  the constant offset it logs);
- the loss per frame: IS_t + beta KL_t, averaged over the batch's B T frames (the benchmark's
  normalisation), reported as :class:`LossTerms` of B T frames, so the training engine, early
  stopping and logs treat a sequence's frames as they treat frames;
- the noise-free validation statistic (``--stop-on posterior-mean``) on the **mean chain**: the
  recursion run with z_t = its posterior mean, the decoder fed that chain, the KL in closed form
  along it. Resynthesis decodes the same chain over a whole utterance at once.

The sequences come from :mod:`sdmvae_cli.data.sequences` (tiles inside utterances).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.base import LOG_FLOOR, LossTerms, ModelConfig, SpectrogramVAE, itakura_saito
from sdmvae_cli.nets.noise import NoiseSpec, draw_noise
from sdmvae_cli.nets.schedules import kl_warmup_weight
from sdmvae_cli.nets.sdm import SDMVAE
from sdmvae_cli.nets.seqpriors import PRIOR_OPTIONS, InnovationPrior, check_prior, prior_label, prior_name_parts

#: the options every sequence family reads: its sizes, and its prior's (nets/seqpriors.py)
SEQUENCE_OPTIONS: tuple[str, ...] = (
    "latent",
    "input_transform",
    "beta",
    "kl_warmup",
    "seq_len",
    "rnn_hidden",
    "prior",
    "dictionary",
    "k",
    "dict_lr",
    "alpha",
    "c_start",
    "c_end",
    "c_warmup",
)


def widths_from(widths: tuple[int, ...], latent: int) -> list[int]:
    """The benchmark's decoder widths (16-32-64-128-256 for its z of 16) without layers narrower
    than the latent itself: at m = 64 a 32-wide first layer would be a bottleneck the benchmark's
    z_dim = 16 never had."""
    return [w for w in widths if w >= latent] or [max(widths)]


class SequenceVAE(SpectrogramVAE):
    """The interface of sequence families (:attr:`SEQUENTIAL`).

    A family implements :meth:`chain`: the inference recursion and the per-step KL for
    sequences ``x`` (B, T, bins) with its prior's noise (a dict of (B, T, .) tensors), or the
    mean chain with ``noise`` None, and :meth:`decode`. Everything else (loss, validation
    statistic, reconstruction, codes) is here."""

    SEQUENTIAL: ClassVar[bool] = True
    #: vmap has no batching rule for the fused LSTM kernels; our :class:`LSTMLayer`'s unrolled
    #: path has one, but on the CPU 2 (4) stacked DKF members gave 0.84x (0.57x) the aggregate
    #: frames/s of one member on the fused kernel (docs/benchmarks.md): one stack each
    STACKABLE: ClassVar[bool] = False
    #: compiling the unrolled recursion took 4 min on the 2-core CPU for no measured gain (DKF,
    #: 13.2k eager against 13.5k compiled frames/s): ``--compile auto`` leaves it off
    COMPILE_AUTO: ClassVar[bool] = False
    #: a whole utterance is one sequence up to 2^15 frames (8.7 min); a longer file is decoded
    #: in blocks of that many frames, each its own sequence (a stated approximation)
    RESYNTH_BLOCK_FRAMES: ClassVar[int | None] = 1 << 15

    OPTIONS = SEQUENCE_OPTIONS
    #: the benchmark's settings (DVAE config/speech/cfg_*.ini: Adam lr 2e-3, patience 50)
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]] = {"lr": 2e-3, "patience": 50}
    #: the parameters `enhance` fine-tunes on a noisy file (DVAE_SE's variational EM: q is the
    #: trained encoder itself): name prefixes of the inference network; None: no such E-step
    ENCODER_PREFIXES: ClassVar[tuple[str, ...] | None] = None
    #: why a family with no ENCODER_PREFIXES cannot be an enhancement prior
    NO_ENHANCE: ClassVar[str] = "its variational EM is not built"
    #: `enhance` options where the command line leaves them unset (DVAE_SE's: 300 iterations of
    #: one Adam step at lr 1e-3 on the encoder's weights; the frame-wise defaults tune per-frame
    #: posterior parameters, an lr 50x too large for network weights)
    ENHANCE_DEFAULTS: ClassVar[dict[str, Any]] = {"iterations": 300, "steps": 1, "lr": 1e-3}
    #: the prior strategy (built by the family, on its inference feature)
    prior: InnovationPrior

    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if cfg.seq_len < 2:
            raise SdmvaeError(f"--seq-len must be >= 2 for a sequence model, got {cfg.seq_len}")
        check_prior(cfg)

    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        return cls.LABEL + cls.label_suffix(cfg)

    @classmethod
    def label_suffix(cls, cfg: ModelConfig) -> str:
        """The prior's part (' + SDM (DCT, k=64)'), then a KL warm-up where there is one, so that
        runs with and without it are two rows."""
        return prior_label(cfg) + (f" (KL warm-up {cfg.kl_warmup})" if cfg.kl_warmup > 0 else "")

    @classmethod
    def reads(cls, cfg: ModelConfig | None = None) -> tuple[str, ...]:
        """Without another prior's options (``--prior gaussian --alpha 0.5`` is refused)."""
        if cfg is None:
            return cls.OPTIONS
        other = {f for p, opts in PRIOR_OPTIONS.items() if p != cfg.prior for f in opts}
        return tuple(o for o in cls.OPTIONS if o not in other)

    @classmethod
    def validation_set(cls, cfg: ModelConfig) -> str:
        return f"whole tiles of {cfg.seq_len} frames"

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        order = SDMVAE.DICTIONARY_ORDER  # identity, DCT, learned: the frame-wise SDM-VAE's rows
        return (
            cfg.prior != "gaussian",
            cfg.prior,
            order.index(cfg.dictionary) if cfg.dictionary in order else 9,
            cfg.k,
            cfg.alpha,
        )

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        parts, shown = prior_name_parts(cfg)
        return [*parts, f"T{cfg.seq_len}"], shown | {"seq_len"}

    def dictionary(self) -> torch.Tensor | None:
        return getattr(self.prior, "D", None)  # --prior sdm's dictionary on the innovation

    def lr_scale(self, name: str) -> str | None:
        return "dict_lr" if name == "prior.D" else None

    @torch.no_grad()
    def project_(self, params) -> None:
        self.prior.project_(params, "prior.")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: log power (our default) or raw power (the benchmark's)."""
        return torch.log(x + LOG_FLOOR) if self.cfg.input_transform == "log" else x

    def noise_spec(self, batch: int) -> NoiseSpec:
        return self.step_noise_spec(batch, self.cfg.seq_len)

    def step_noise_spec(self, batch: int, steps: int) -> NoiseSpec:
        """The noise of ``batch`` sequences of ``steps`` frames: the prior's (a family may add its own)."""
        return self.prior.noise_spec(batch, steps)

    def encoder_prefixes(self) -> tuple[str, ...] | None:
        """What `enhance` fine-tunes (:attr:`ENCODER_PREFIXES`); None: this model cannot be a prior."""
        return self.ENCODER_PREFIXES

    def prior_step(self, h: torch.Tensor, f: torch.Tensor, logv: torch.Tensor, noise: Any, t: int):
        """Step t of the prior strategy: (z_t, code_t, KL_t); ``noise`` None: the mean chain."""
        step_noise = None if noise is None else {k: v[..., t, :] for k, v in noise.items()}
        return self.prior.step(h, f, logv, step_noise, self.hp, self.epoch)

    # -- to implement --------------------------------------------------------------------
    def chain(self, x: torch.Tensor, noise: Any) -> dict[str, torch.Tensor]:
        """Run the inference recursion on sequences ``x`` with the step's ``noise`` (a dict of
        (B, T, .) tensors; None: the mean chain): returns ``dec`` (the decoder's input), ``kl``
        (B x T, per-step KL in nats) and ``code`` (the interpretable code, B x T x k)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transition_mean(self, z_prev: torch.Tensor) -> torch.Tensor:
        """f_t, the prior's mean of z_t given z_{t-1} alone (what decoding codes needs); a family
        whose transition reads more than the latent's past refuses, saying what it reads."""
        raise SdmvaeError(f"{self.LABEL}: its codes alone do not determine its latent")

    # -- shared --------------------------------------------------------------------------
    def _terms(self, x: torch.Tensor, noise: Any) -> LossTerms:
        """IS_t + w beta KL_t per frame, w the KL warm-up weight in training (``--kl-warmup N``:
        the benchmark's remedy for a posterior that collapses before the decoder learns; 1 in
        eval mode, so the validation statistic is always the unit-weight bound)."""
        out = self.chain(x, noise)
        recon = itakura_saito(x, self._decoded(out)).flatten()
        kl = out["kl"].flatten()
        weighted = self.weighted_kl(kl)
        if self.training and self.cfg.kl_warmup > 0:
            weighted = weighted * kl_warmup_weight(self.epoch, self.cfg.kl_warmup)
        return LossTerms(recon + weighted, recon, kl)

    def loss(self, x: torch.Tensor, noise: Any = None) -> LossTerms:
        """The one-sample ELBO per frame of sequences ``x`` (B, T, bins)."""
        if noise is None:  # inference and tests: a fresh draw from the global generator
            noise = draw_noise(self.step_noise_spec(x.shape[0], x.shape[-2]), device=x.device)
        return self._terms(x, noise)

    def mean_code_loss(self, x: torch.Tensor) -> LossTerms:
        """The noise-free statistic: the mean chain decoded, the per-step KL along it."""
        return self._terms(x, None)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One utterance's frames (T, bins) as one sequence: the mean chain's decoded power and
        its code. Why a whole utterance at once: it is exact and deterministic (no state resets
        or seams), it is how the benchmark scores its models, and 10 s is only 625 steps."""
        seq = x.unsqueeze(0) if x.dim() == 2 else x
        out = self.chain(seq, None)
        power, code = torch.exp(self._decoded(out)), out["code"]
        return (power[0], code[0]) if x.dim() == 2 else (power, code)

    def _decoded(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """y_{1:T} of a chain: decoded here, unless the chain decoded it on the way (``y``)."""
        return out["y"] if "y" in out else self.decode(out["dec"])

    def code_of(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)[1]

    @torch.no_grad()
    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """The decoder's input of a code sequence (T, k) or (B, T, k), one sequence each: the
        generative recursion z_0 = 0, z_t = compose(f(z_{t-1}), code_t) (the SDM prior: f_t + D a_t),
        so an edited a_t moves every later z through the dynamics. On the mean chain's own codes
        it gives back the chain's z exactly (what ``resynth --from-codes`` decodes)."""
        z = codes.new_zeros((*codes.shape[:-2], self.cfg.latent))
        zs = []
        for t in range(codes.shape[-2]):  # the recursion itself: z_t needs z_{t-1}
            z = self.prior.compose(self.transition_mean(z), codes[..., t, :])
            zs.append(z)
        return torch.stack(zs, -2)
