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
base KL and beta2 on the Gamma KL). The base KL is taken in closed form against N(0, v)
(Gaussian base, v = ``spread_prior`` a variance) or Laplace(0, v) (Laplacian base, v a scale),
as the authors' ``fixed_kl`` (model/reparameterization.py); v = 1 by default. With
J = ``samples`` > 1, each frame draws J samples and keeps the one of highest ELBO (eq. 9).
``kl_warmup`` = N > 0 scales the whole KL of the training objective by min(1, (epoch + 1) / N)
(the authors' linear ramp, train_vsc_celeba.py, ramps kl_weight over the first 10 % of steps);
validation always uses the full weight, so its epochs stay comparable.

Posterior-mean code: z = T(s) is 0 with probability p0 = P(|s - mu| <= lambda) and otherwise
mu + d - lambda sign(d) with d = s - mu symmetric about 0, whose conditional mean is mu. So
E[z] = (1 - p0) mu exactly (lambda at its posterior mean when learned): the code used for
resynthesis by default (``code = "mean"``), dense. With ``code = "sample"`` resynthesis,
evaluation and the validation statistic (:meth:`SpectrogramVAE.mean_code_loss`: "what
resynthesis uses") decode instead, as the authors' code does (train_vsc_dict.py,
train_vsc_celeba.py: ``b_select``), the thresholded sample of highest ELBO among J draws, which
has exact zeros. The J draws of standard noise are fixed (seeded with SELECT_SEED at
construction) and common to every frame, so a frame's code does not depend on its batch, a
resynthesis is reproducible, and the statistic is deterministic for given weights (its
sampling noise is the same at every epoch, and the minimum over J draws has no heavy upper
tail). Why not the dense mean there: a model trained on its best of J samples never decodes
(1 - p0) mu, and in a tiny run its decoded loss moved by 2000 nats between epochs while that of
the selected sample fell steadily.

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

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.base import COMMON_OPTIONS, LossTerms, ModelConfig, SpectrogramVAE, itakura_saito
from sdmvae_cli.nets.noise import draw_noise, open_uniform
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.schedules import kl_warmup_weight
from sdmvae_cli.nets.vae import Heads


def shifted_soft_threshold(s: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Fallah & Rozell eq. 2 (see module docstring)."""
    d = s - mu
    return torch.where(d.abs() > lam, s - lam * torch.sign(d), torch.zeros_like(s))


def straight_through(s: torch.Tensor, lam: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Eq. 4: forward value T(s), gradient w.r.t. s of the identity."""
    s_sg = s.detach()
    return s + shifted_soft_threshold(s_sg, lam, mu) - s_sg


#: seed of the J fixed draws of standard noise of the ``code = "sample"`` selection
SELECT_SEED = 0
#: most floats of decoded output (J x frames x bins) the selection holds at once (64 MiB)
SELECT_FLOATS = 1 << 24


def _log(v) -> float | torch.Tensor:
    """log of a float (a Python number: nothing copied inside a CUDA graph) or of a 0-d tensor
    (a member's value in a stacked sweep)."""
    return math.log(v) if isinstance(v, (int, float)) else torch.log(v)


def gaussian_kl_spread(mu: torch.Tensor, logvar: torch.Tensor, var_p=1.0) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, v)) per dimension: 0.5 ((mu^2 + sigma^2) / v + log v - log sigma^2 - 1).
    At v = 1 every added operation (/ 1, + 0) is exact in IEEE arithmetic, so the value is
    bit for bit that of the N(0, 1) KL the model used before ``spread_prior`` existed."""
    return 0.5 * ((mu.square() + logvar.exp()) / var_p + _log(var_p) - logvar - 1.0)


def laplace_kl_std(mu: torch.Tensor, log_b: torch.Tensor, scale_p=1.0) -> torch.Tensor:
    """KL(Laplace(mu, b) || Laplace(0, s)) per dimension:
    log s - log b + |mu| / s + (b / s) exp(-|mu| / b) - 1 (s = 1: bit for bit the former value)."""
    b = log_b.exp()
    return -log_b + _log(scale_p) + mu.abs() / scale_p + b / scale_p * torch.exp(-mu.abs() / b) - 1.0


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
    OPTIONS = COMMON_OPTIONS + (
        "base",
        "threshold",
        "learn_threshold",
        "gamma_shape",
        "gamma_rate",
        "beta2",
        "samples",
        "spread_prior",
        "kl_warmup",
        "code",
    )
    LOGS_WEIGHTED_KL = True  # its KL has two weights (beta, beta2) applied inside
    ROW_RANK = 3  # no MCEM prior: the threshold is part of the posterior, not of a generative prior

    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        lam = (
            f"learned lambda, Gamma({cfg.gamma_shape:g}, {cfg.gamma_rate:g}) prior"
            if cfg.learn_threshold
            else f"lambda={cfg.threshold:g}"
        )
        extra = "".join(
            f", {text}"
            for text, show in (
                (f"J={cfg.samples}", cfg.samples > 1),
                (f"prior spread {cfg.spread_prior:g}", cfg.spread_prior != 1.0),
                (f"KL warm-up {cfg.kl_warmup}", cfg.kl_warmup > 0),
                ("sampled code", cfg.code == "sample"),
            )
            if show
        )
        return f"Thresholded ({cfg.base}, {lam}{extra})"

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        return (cfg.learn_threshold, cfg.base, cfg.threshold)

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        return [cfg.base, "learned" if cfg.learn_threshold else f"l{cfg.threshold:g}"], {"base", "learn_threshold", "threshold"}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # log_scale: log sigma^2 (gaussian base) or log b (laplace base)
        names = ("mu", "log_scale") + (("lam_shape", "lam_rate") if cfg.learn_threshold else ())
        self.heads = Heads(self.enc_dim, cfg.latent, names)
        if cfg.code == "sample":
            # the selection's J fixed draws, (J, 1, m) or (1, m): broadcast over frames; not in
            # the state_dict (rebuilt from the seed), drawn without touching the global RNG
            fixed = draw_noise(self.noise_spec(1), generator=torch.Generator().manual_seed(SELECT_SEED))
            for name, t in fixed.items():
                self.register_buffer(f"select_{name}", t, persistent=False)

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
        if not (math.isfinite(cfg.spread_prior) and cfg.spread_prior > 0):
            raise SdmvaeError(f"--spread-prior must be > 0 and finite, got {cfg.spread_prior}")
        if cfg.kl_warmup < 0:
            raise SdmvaeError(f"--kl-warmup must be >= 0, got {cfg.kl_warmup}")
        if cfg.code not in ("mean", "sample"):
            raise SdmvaeError(f"--code must be mean or sample, got {cfg.code!r}")

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

    def noise_batch_axis(self, name: str) -> int:
        return 1 if self.cfg.samples > 1 else 0

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

    def fixed_noise(self) -> dict[str, torch.Tensor]:
        """The selection's J fixed draws (``code = "sample"`` only), broadcastable over frames."""
        return {name: getattr(self, f"select_{name}") for name in self.noise_spec(1)}

    def selected_code(self, x: torch.Tensor, post: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per frame, the thresholded sample T(s) of highest ELBO among the J = ``samples`` fixed
        draws (eq. 9; the KL is the same for every draw, so: of lowest IS), shape (frames,
        latent); exact zeros where |s - mu| <= lambda. In chunks of frames that bound the
        decoded J x frames x bins (no RNG: vmap- and graph-safe)."""
        post = self.encode(x) if post is None else post
        noise = self.fixed_noise()
        j = self.cfg.samples
        step = max(1, SELECT_FLOATS // (j * self.cfg.n_bins))
        out = []
        for s in range(0, x.shape[0], step):
            p = {k: v[s : s + step] for k, v in post.items()}
            z = shifted_soft_threshold(self._base_sample(p, noise), self._lambda(p, noise), p["mu"])
            if j > 1:  # (J, b, m): keep the draw of lowest IS per frame
                best = itakura_saito(x[s : s + step].unsqueeze(0), self.decode(z)).argmin(0)
                z = z.gather(0, best.view(1, -1, 1).expand(1, -1, z.shape[-1]))[0]
            out.append(z)
        return torch.cat(out) if out else post["mu"][:0]

    def decoded_code(self, x, post):
        """With ``code = "sample"``: the selected sample (resynthesis and the validation statistic)."""
        return self.selected_code(x, post) if self.cfg.code == "sample" else super().decoded_code(x, post)

    def code_of(self, x):
        """The code evaluation measures: the selected sample with ``code = "sample"``."""
        return self.selected_code(x) if self.cfg.code == "sample" else super().code_of(x)

    @torch.no_grad()
    def reconstruct(self, x):
        """With ``code = "sample"`` the interpretable code returned is the selected sample too."""
        if self.cfg.code != "sample":
            return super().reconstruct(x)
        z = self.selected_code(x)
        return torch.exp(self.decode(z)), z

    def spike_probability(self, post) -> torch.Tensor:
        lam = (
            post["lam_shape"] / post["lam_rate"]
            if self.cfg.learn_threshold
            else self.hp("threshold") * torch.ones_like(post["mu"])
        )
        if self.cfg.base == "gaussian":
            return torch.erf(lam / (torch.exp(0.5 * post["log_scale"]) * math.sqrt(2.0)))
        return 1 - torch.exp(-lam / post["log_scale"].exp())

    def mean_code(self, post):
        """E[T(s)] = (1 - p0) mu (module docstring)."""
        return (1.0 - self.spike_probability(post)) * post["mu"]

    def base_kl(self, post) -> torch.Tensor:
        """Against N(0, v) (v a variance) or Laplace(0, v) (v a scale), v = ``spread_prior``."""
        if self.cfg.base == "gaussian":
            return gaussian_kl_spread(post["mu"], post["log_scale"], self.hp("spread_prior")).sum(-1)
        return laplace_kl_std(post["mu"], post["log_scale"], self.hp("spread_prior")).sum(-1)

    def kl(self, post, z):
        """beta1 * base KL + beta2 * Gamma KL: unlike the other models, already weighted (two
        weights), so :meth:`loss` adds it as is."""
        kl = self.hp("beta") * self.base_kl(post)
        if self.cfg.learn_threshold:
            kl = kl + self.hp("beta2") * gamma_kl(
                post["lam_shape"], post["lam_rate"], self.hp("gamma_shape"), self.hp("gamma_rate")
            ).sum(-1)
        return kl

    def weighted_kl(self, kl):
        return kl  # already weighted by beta / beta2 (see kl)

    def loss(self, x, noise=None):
        """Max-ELBO over J samples per frame (eq. 9); J = 1 is the plain estimator. In training
        mode the KL is scaled by the warm-up weight (:func:`kl_warmup_weight`; the authors scale
        their whole kl_weight, the Gamma term included); in eval mode (validation) it is not."""
        post = self.encode(x)
        kl = self.kl(post, None)  # already weighted by beta / beta2
        if self.training and self.cfg.kl_warmup > 0:
            kl = kl * kl_warmup_weight(self.epoch, self.cfg.kl_warmup)
        if self.cfg.samples == 1:
            recon = itakura_saito(x, self.decode(self.sample(post, noise)))
        else:
            z = self.sample(post, noise)  # (J, B, m): mu and the posterior broadcast over J
            recon = itakura_saito(x.unsqueeze(0), self.decode(z)).min(0).values  # the KL is the same for every j
        return LossTerms(recon + kl, recon, kl)
