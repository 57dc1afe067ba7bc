"""Shared pieces: the model configuration, the MLP encoder/decoder and the Itakura-Saito loss.

Architecture (Leglaive et al. 2018, the SDM-VAE paper's baseline, section 4.1): encoder
513 -> 128 tanh -> latent parameters; decoder latent -> 128 tanh -> log-variance (513).
The likelihood is a zero-mean complex Gaussian with variance y = exp(decoder output), whose
negative log-likelihood per frame is, up to a constant, the Itakura-Saito term
``sum_f s_f / y_f + log y_f`` (paper eq. 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, NamedTuple

import torch
from torch import nn

from sdmvae_cli.core.errors import SdmvaeError, dataclass_from_dict
from sdmvae_cli.nets.noise import Noise, NoiseSpec, draw_noise

#: floor added to power before the log input transform (power of a -160 dB bin)
LOG_FLOOR = 1e-8


@dataclass
class ModelConfig:
    """Every hyper-parameter of every model, flat and JSON-able (stored in checkpoints).

    Each model class lists in ``OPTIONS`` the fields it reads; the others keep defaults.
    """

    model: str = "vae"
    n_bins: int = 513
    latent: int = 64  # m, dimension of z (paper: 32 and 64)
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "tanh"
    input_transform: str = "log"  # encoder input: log(power + 1e-8), or "power" (raw, as the authors' code)
    beta: float = 1.0  # KL weight
    # SDM-VAE
    dictionary: str = "dct"  # dct | identity | learned
    k: int = 64  # number of atoms
    dict_lr: float = 1e-3  # learned dictionary's own learning rate
    coherence: float = 0.0  # weight of the mutual-coherence penalty (learned dictionary)
    # VSC
    alpha: float = 0.5  # prior slab probability
    c_start: float = 50.0  # sharpness of the spike selection, warmed up from c_start ...
    c_end: float = 200.0  # ... to c_end ...
    c_warmup: int = 100  # ... linearly over this many epochs
    # thresholded VSC
    base: str = "gaussian"  # gaussian | laplace base posterior
    threshold: float = 0.5  # fixed threshold lambda (when not learned)
    learn_threshold: bool = False
    gamma_shape: float = 2.0  # Gamma prior on lambda (shape, rate): mean 0.5
    gamma_rate: float = 4.0
    beta2: float = 1.0  # weight of the threshold's Gamma KL (beta1 is `beta`)
    samples: int = 1  # J: samples per frame, max-ELBO selection
    spread_prior: float = 1.0  # base prior N(0, v) (variance) / Laplace(0, b) (scale); the authors' spread_prior (0.1)
    kl_warmup: int = 0  # epochs of linear KL warm-up of the training objective (0: none)
    code: str = "mean"  # resynthesis code: mean (E[T(s)], dense) | sample (max-ELBO thresholded sample of J draws)
    # sequence families (DKF, ...): frames per training sequence, the LSTMs' width, the prior
    # on the latent (gaussian | sdm | vsc: nets/seqpriors.py; sdm reads dictionary/k, vsc alpha/c_*)
    seq_len: int = 50
    rnn_hidden: int = 128
    prior: str = "gaussian"
    non_causal: bool = False  # rvae: a bidirectional decoder LSTM over z_{1:T} (else forward: causal)
    # srnn: scheduled sampling (DVAE_SE): the decoder's h from the model's own predictions with a
    # probability rising from 0 at epoch ss_start to 1 at ss_end (ss_end 0: off, teacher-forced)
    ss_start: int = 0
    ss_end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return dataclass_from_dict(cls, d, "model")

    @classmethod
    def completed(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A stored model dict with the fields it predates filled with their defaults (which is
        what loading it builds): how a configuration is compared, so evaluations written
        before a field existed group with those written after."""
        return {**asdict(cls()), **d}


#: every field of ModelConfig (a stored dict is filtered to these before it is read)
MODEL_FIELDS: frozenset[str] = frozenset(f.name for f in fields(ModelConfig))

#: the float fields of ModelConfig: hyper-parameters that may differ between members of one
#: stacked training run (``sdmvae sweep``); models read them through :meth:`SpectrogramVAE.hp`
SCALAR_HPARAMS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig) if f.type in ("float", float))


class LossTerms(NamedTuple):
    """Per-frame loss terms, each of shape (batch,)."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
    if activation not in acts:
        raise SdmvaeError(f"unknown activation {activation!r}; expected tanh or relu")
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), acts[activation]()]
    return nn.Sequential(*layers)


def itakura_saito(x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """Per-frame NLL of the complex-Gaussian variance model (eq. 2): sum x / y + log y."""
    return (x * torch.exp(-log_y) + log_y).sum(-1)


def gaussian_kl_std(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per dimension (the standard VAE term)."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    return mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if eps is None else eps)


#: integer sizes and schedules, [low, high]: past these a run would ask for terabytes or overflow
#: (one clear line instead of an internal error); far above any configuration of the papers
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "latent": (1, 4096),
    "k": (1, 4096),
    "samples": (1, 256),
    "c_warmup": (0, 1_000_000),
    "kl_warmup": (0, 1_000_000),
    "seq_len": (1, 100_000),
    "rnn_hidden": (1, 65536),
    "ss_start": (0, 1_000_000),
    "ss_end": (0, 1_000_000),
}
MAX_LAYER = 65536

#: the options every model reads (architecture and KL weight)
COMMON_OPTIONS: tuple[str, ...] = ("latent", "hidden", "activation", "input_transform", "beta")


class SpectrogramVAE(nn.Module):
    """Base class: encoder trunk, decoder, and the interface every model implements.

    Interface:
      ``encode(x)`` -> dict of posterior parameters;
      ``noise_spec(batch)`` -> the standard noise one training step of ``batch`` frames uses;
      ``sample(post, noise=None)`` -> reparameterised decoder input z (noise drawn if None);
      ``mean_code(post)`` -> the posterior-mean decoder input used for resynthesis;
      ``interpretable_code(post)`` -> the code whose sparsity is measured (a for SDM-VAE, z else);
      ``decode(z)`` -> log-variance (batch, bins);
      ``loss(x, noise=None)`` -> :class:`LossTerms` per frame.

    Scalar hyper-parameters (``SCALAR_HPARAMS``) are read with :meth:`hp`, so a stacked sweep
    can give each member its own value as a tensor (under ``torch.func.vmap``).
    """

    name: ClassVar[str] = "base"
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    #: the family's name in tables and reports, and its rank in the paper's row order
    LABEL: ClassVar[str] = ""
    ROW_RANK: ClassVar[int] = 99
    #: the family's prior for Monte Carlo EM enhancement (nets/latents.py); None: variational EM only
    MCEM_LATENT: ClassVar[type | None] = None
    #: True when the validation KL the family logs is already weighted (so runs of different
    #: weights have no common unit-weight bound to be ranked by)
    LOGS_WEIGHTED_KL: ClassVar[bool] = False
    #: a sequence family: ``loss`` takes (batch, seq_len, bins) sequences cut inside utterances,
    #: and resynthesis decodes a whole utterance as one sequence
    SEQUENTIAL: ClassVar[bool] = False
    #: whether members of this family can share a stack (vmap over their stacked parameters)
    STACKABLE: ClassVar[bool] = True
    #: frames per resynthesis block (None: audio.stft.BLOCK_FRAMES, with the neighbours whose
    #: windows overlap each block: exact for a frame-wise family)
    RESYNTH_BLOCK_FRAMES: ClassVar[int | None] = None
    #: training options this family defaults to where the command line or the sweep spec leaves
    #: them unset (the paper's lr 1e-4 and patience 20 otherwise); config.json records them
    TRAIN_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: `enhance` options this family defaults to where the command line leaves them unset
    ENHANCE_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: whether ``--compile auto`` may compile this family's step (a measured gain)
    COMPILE_AUTO: ClassVar[bool] = True
    #: size of the interpretable code (k for SDM-VAE)
    code_dim: int
    #: per-member scalar hyper-parameters, set by the stacked trainer inside vmap
    _hp: Mapping[str, torch.Tensor] | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.build_networks(cfg)
        # the epoch, for schedules (VSC's c); a buffer so captured CUDA graphs see its updates
        self.register_buffer("epoch", torch.zeros(()), persistent=False)

    def build_networks(self, cfg: ModelConfig) -> None:
        """The frame-wise encoder trunk and decoder (a sequence family builds its own)."""
        hidden = list(cfg.hidden)
        self.encoder = mlp([cfg.n_bins, *hidden], cfg.activation)
        self.decoder = mlp([cfg.latent, *reversed(hidden)], cfg.activation)
        self.out = nn.Linear(hidden[0] if hidden else cfg.latent, cfg.n_bins)
        self.enc_dim = hidden[-1] if hidden else cfg.n_bins
        self.code_dim = cfg.latent

    # -- configuration ---------------------------------------------------------------
    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        """Ranges every model checks (a spec or config file skips the command line's checks;
        the types were checked where the config was read): families add their own."""
        for name, (lo, hi) in SIZE_LIMITS.items():
            v = getattr(cfg, name)
            if not lo <= v <= hi:
                raise SdmvaeError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}], got {v}")
        if cfg.n_bins < 2:
            raise SdmvaeError(f"n_bins must be >= 2, got {cfg.n_bins}")
        if not cfg.hidden or any(not isinstance(h, int) or not 1 <= h <= MAX_LAYER for h in cfg.hidden):
            raise SdmvaeError(f"--hidden needs at least one layer size, each in [1, {MAX_LAYER}], got {cfg.hidden!r}")
        nonneg = ("beta", "coherence", "threshold", "beta2", "c_warmup")
        positive = ("dict_lr", "c_start", "c_end", "gamma_shape", "gamma_rate")
        for name in nonneg + positive:
            v = getattr(cfg, name)
            if not math.isfinite(v) or v < 0 or (name in positive and v == 0):
                raise SdmvaeError(
                    f"--{name.replace('_', '-')} must be {'> 0' if name in positive else '>= 0'} and finite, got {v}"
                )
        if cfg.input_transform not in ("power", "log"):
            raise SdmvaeError(f"unknown input transform {cfg.input_transform!r}; expected power or log")

    # -- shared pieces ---------------------------------------------------------------
    # -- family hooks: what the rest of the package needs to know about a family, asked of its
    # class rather than spelled out in `if model == ...` chains elsewhere
    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        """Row label of a configuration of this family (its distinguishing options, not beta or
        the encoder input, which :func:`sdmvae_cli.evaluation.results.row_label` adds)."""
        return cls.LABEL or cls.name

    @classmethod
    def reads(cls, cfg: ModelConfig | None = None) -> tuple[str, ...]:
        """The options a configuration of this family reads (``OPTIONS``; a family whose
        options depend on another, as a sequence family's on its prior, narrows them)."""
        return cls.OPTIONS

    @classmethod
    def patience_from(cls, cfg: ModelConfig) -> int:
        """The first epoch that counts against ``--patience``: later where a training schedule
        still changes what validation measures (the SRNN's scheduled sampling)."""
        return 0

    @classmethod
    def validation_set(cls, cfg: ModelConfig) -> str:
        """Which validation frames a run's figures average over: runs whose sets differ have no
        common validation loss to be ranked by (``export`` of several candidates)."""
        return "every frame"

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        """Sort key inside the family, in the paper's order (after ``ROW_RANK``)."""
        return ()

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        """(parts of a default run folder name, the options those parts already show)."""
        return [], set()

    @classmethod
    def upgrade_state(cls, state: dict[str, Any]) -> dict[str, Any]:
        """A state dict of an older checkpoint format made loadable (nothing to do by default)."""
        return state

    def dictionary(self) -> torch.Tensor | None:
        """The dictionary D (m x k) of a family that has one (``plot dictionary``), else None."""
        return None

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """The decoder input of an interpretable code (the code itself unless a family maps it)."""
        return codes

    def noise_batch_axis(self, name: str) -> int:
        """The axis of noise ``name`` (as :meth:`noise_spec` shapes it) that runs over the batch's
        rows (frames, or sequences), by which validation slices it: 0 unless a family draws
        leading sample axes (the thresholded model's J)."""
        return 0

    def hp(self, name: str) -> Any:
        """A scalar hyper-parameter: this member's tensor inside a stacked sweep, else the config's."""
        if self._hp is not None and name in self._hp:
            return self._hp[name]
        return getattr(self.cfg, name)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.input_transform == "log":
            x = torch.log(x + LOG_FLOOR)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(z))

    # -- to implement ----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def noise_spec(self, batch: int) -> NoiseSpec:
        return {"eps": ("normal", (batch, self.cfg.latent))}

    def sample(self, post: dict[str, torch.Tensor], noise: Noise | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _noise(self, post: dict[str, torch.Tensor], noise: Noise | None) -> Noise:
        """The given noise, or a fresh draw from the global RNG (inference, tests)."""
        if noise is not None:
            return noise
        ref = next(iter(post.values()))  # (..., frames, dim): leading sample axes are kept
        return draw_noise(self.noise_spec(ref.shape[-2]), lead=tuple(ref.shape[:-2]), device=ref.device)

    def mean_code(self, post: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def interpretable_code(self, post: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mean_code(post)

    def decoded_code(self, x: torch.Tensor, post: dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoder input resynthesis decodes for frames ``x`` (posterior ``post``), and so
        the one the noise-free validation statistic decodes: the posterior-mean code. A family
        whose code needs the frames themselves (the thresholded model's max-ELBO sample,
        ``code = "sample"``) overrides it."""
        return self.mean_code(post)

    def code_of(self, x: torch.Tensor) -> torch.Tensor:
        """The interpretable code of frames ``x`` as resynthesis and evaluation use it. The
        default is that of the posterior; a family whose code needs the frames themselves (the
        thresholded model's max-ELBO sample, ``code = "sample"``) overrides it."""
        return self.interpretable_code(self.encode(x))

    @torch.no_grad()
    def exact_zero_fraction(self, x: torch.Tensor) -> float:
        """Fraction of the entries of :meth:`code_of` that are exactly 0: what separates a truly
        sparse code (thresholded samples) from a merely small one (a posterior mean), which
        Hoyer's measure does not."""
        return float((self.code_of(x) == 0).double().mean())

    def kl(self, post: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Per-frame KL (or its estimate) between posterior and prior, shape (batch,)."""
        raise NotImplementedError

    def kl_exact(self, post: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-frame KL in closed form (no sample): what the noise-free validation statistic
        adds. Families whose training KL is already closed form (it ignores ``z``) inherit
        this; a Monte Carlo family overrides it."""
        return self.kl(post, None)

    def weighted_kl(self, kl: torch.Tensor) -> torch.Tensor:
        """The KL as the objective adds it: ``beta * kl`` (a family that weighs its own terms
        overrides this)."""
        return self.hp("beta") * kl

    # -- generic loss ----------------------------------------------------------------
    def loss(self, x: torch.Tensor, noise: Noise | None = None) -> LossTerms:
        post = self.encode(x)
        z = self.sample(post, noise)
        recon = itakura_saito(x, self.decode(z))
        kl = self.kl(post, z)
        return LossTerms(recon + self.weighted_kl(kl) + self.penalty(), recon, kl)

    def mean_code_loss(self, x: torch.Tensor) -> LossTerms:
        """The validation statistic that rides on no sampling noise (``--stop-on posterior-mean``,
        the default): the negative ELBO with the posterior-mean code decoded (what resynthesis
        uses) and the KL in closed form. Why: the one-sample ELBO's IS term (eq. 2) is
        exponential in the decoder's output, so a few loud validation frames give it a
        heavy-tailed sampling noise (1e8 nats in one draw) that decides when a run stops."""
        post = self.encode(x)
        recon = itakura_saito(x, self.decode(self.decoded_code(x, post)))
        kl = self.kl_exact(post)
        return LossTerms(recon + self.weighted_kl(kl) + self.penalty(), recon, kl)

    def forward(self, x: torch.Tensor, noise: Noise | None = None, noise_free: bool = False) -> LossTerms:
        """The training objective (what ``torch.func.functional_call`` calls in a stack), or with
        ``noise_free`` the validation statistic of :meth:`mean_code_loss`."""
        return self.mean_code_loss(x) if noise_free else self.loss(x, noise)

    def penalty(self) -> torch.Tensor | float:
        """Extra regulariser added to every frame's total (e.g. dictionary coherence)."""
        return 0.0

    # -- training hooks (graph-safe: in-place updates only) ---------------------------
    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch (schedules such as VSC's c warm-up read ``self.epoch``)."""
        self.epoch.fill_(float(epoch))

    @torch.no_grad()
    def project_(self, params: Mapping[str, torch.Tensor]) -> None:
        """In-place projection of (possibly stacked, leading member dim) parameters after a
        step, e.g. unit-norm dictionary atoms. Must use negative dims only."""

    def post_step(self) -> None:
        """Called after each optimiser step of a single (unstacked) model."""
        self.project_(dict(self.named_parameters()))

    def lr_scale(self, name: str) -> str | None:
        """The ModelConfig field holding this parameter's own learning rate (None: the run's lr)."""
        return None

    def param_groups(self, lr: float) -> list[dict]:
        """torch.optim param groups: the run's lr, then one group per own-lr parameter."""
        groups: list[dict] = [{"params": [], "lr": lr}]
        for name, p in self.named_parameters():
            field_name = self.lr_scale(name)
            if field_name is None:
                groups[0]["params"].append(p)
            else:
                groups.append({"params": [p], "lr": float(getattr(self.cfg, field_name))})
        return groups

    # -- inference helpers -------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded power of the posterior-mean code, and the interpretable code."""
        post = self.encode(x)
        return torch.exp(self.decode(self.decoded_code(x, post))), self.interpretable_code(post)


def log_laplace(z: torch.Tensor, loc: float | torch.Tensor = 0.0, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    # a float scale stays a Python number: no host-to-device copy inside a captured CUDA graph
    log2s = math.log(2 * scale) if isinstance(scale, (int, float)) else torch.log(2 * scale)
    return -log2s - (z - loc).abs() / scale


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() * torch.exp(-logvar))
