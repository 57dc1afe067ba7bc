"""Priors on the latent of a sequence family, one strategy per ``--prior``, applied step by step.

Notation: at step t the family's transition gives f_t (mean) and v_t (variance, as log v_t) from
the past (DKF: from z_{t-1}; RVAE: f_t = 0, v_t = 1), and its inference network a feature h_t
from which the strategy's heads read the posterior. Each strategy returns z_t (what the
decoder and the next step see), the interpretable code, and KL_t in nats.

**gaussian** (the benchmark's): q(z_t | .) = N(mu_t, diag sigma_t^2), p(z_t | .) = N(f_t, diag v_t),
KL_t in closed form (:func:`gaussian_kl`). The code is z_t itself, as the frame-wise VAE's.

**sdm** (the SDM-VAE prior on the *innovation*): a code a_t in R^k, a dictionary D (m x k,
unit-norm atoms: ``--dict``, ``--k``), z_t = f_t + D a_t, a_t ~ N(0, diag gamma_t) independent
over t, q(a_t | .) = N(mu_t, diag sigma_t^2). Maximising the ELBO over gamma_t (type-II ML, the
SDM-VAE paper's eq. 9) gives gamma_t = mu_t^2 + sigma_t^2, held fixed inside the KL (eqs. 8a, 10):
KL_t = 1/2 sum_j [log gamma - log sigma^2 + (sigma^2 + mu^2) / gamma - 1], which at that value is
1/2 sum_j log(1 + mu_j^2 / sigma_j^2): a log penalty on each innovation's signal-to-uncertainty
ratio. What the dynamics predict (f_t) costs nothing; only what they do not explain pays, so
steady segments should get near-zero codes. v_t is unused (the KL lives in a-space). The latent
is a_{1:T} (z is a function of it), so the bound holds for any k. Code: a_t (Hoyer, eq. 12).

**vsc** (spike-and-slab per step, Tonolini et al. 2020, D = I): a_tj ~ alpha N(0, v_tj) +
(1 - alpha) delta_0, z_t = f_t + a_t; q(a_tj | .) = pi N(mu, sigma^2) + (1 - pi) delta_0. The atom
and the slab are mutually singular, so the KL is exactly the Bernoulli KL plus pi times the slabs'
Gaussian KL (Tonolini eq. 7 with a slab variance v_t instead of 1). Sampling relaxes the spike
selection as frame-wise VSC does: a = sigmoid(c (eta - 1 + pi)) (mu + sigma eps), c warmed up
(``--c-start``, ``--c-end``, ``--c-warmup``). Mean chain: a = pi mu. Code: a_t.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.flags import flag_of
from sdmvae_cli.nets.base import ModelConfig
from sdmvae_cli.nets.dictionary import make_dictionary
from sdmvae_cli.nets.noise import NoiseSpec
from sdmvae_cli.nets.sdm import gamma_update, sdm_kl
from sdmvae_cli.nets.vae import GaussianHeads, Heads
from sdmvae_cli.nets.vsc import GAMMA_EPS, bernoulli_kl, c_schedule

PRIORS = ("gaussian", "sdm", "vsc")
GAMMA_FLOOR = 1e-8
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # z_t, code_t, KL_t
Hp = Callable[[str], object]


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, exp logvar_q) || N(mu_p, exp logvar_p)) per dimension, in closed form."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) * torch.exp(-logvar_p) - 1.0)


class InnovationPrior(nn.Module):
    """One step of a prior strategy: posterior heads on h_t, then (z_t, code_t, KL_t)."""

    @torch.no_grad()
    def project_(self, params: dict, prefix: str) -> None:
        """In-place projection of this prior's (possibly stacked) parameters after a step."""

    def __init__(self, cfg: ModelConfig, d_in: int):
        super().__init__()
        self.cfg = cfg
        self.code_dim = cfg.latent

    def noise_spec(self, batch: int, steps: int) -> NoiseSpec:
        return {"eps": ("normal", (batch, steps, self.code_dim))}

    def step(self, h: torch.Tensor, f: torch.Tensor, logv: torch.Tensor, noise: dict | None, hp: Hp, epoch) -> Step:
        """``noise`` None: the mean chain. ``hp``: the model's scalar hyper-parameter reader (a
        stack member's own values), ``epoch``: the model's epoch buffer (schedules)."""
        raise NotImplementedError

    def compose(self, f: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """z_t from the transition's mean f_t and the code: the code is z_t itself (gaussian)."""
        return code


class GaussianPrior(InnovationPrior):
    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.heads = GaussianHeads(d_in, cfg.latent)

    def step(self, h, f, logv, noise, hp, epoch):
        p = self.heads(h)
        z = p["mu"] if noise is None else p["mu"] + torch.exp(0.5 * p["logvar"]) * noise["eps"]
        return z, z, gaussian_kl(p["mu"], p["logvar"], f, logv).sum(-1)


class SdmPrior(InnovationPrior):
    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.code_dim = cfg.k
        self.heads = GaussianHeads(d_in, cfg.k)
        d = make_dictionary(cfg.dictionary, cfg.latent, cfg.k)
        if cfg.dictionary == "learned":
            self.D = nn.Parameter(d)
        else:
            self.register_buffer("D", d)

    @torch.no_grad()
    def project_(self, params, prefix):
        """Unit-norm atoms of a learned dictionary (columns of D; dim -2 also on a stack)."""
        if self.cfg.dictionary == "learned":
            d = params[prefix + "D"]
            d.div_(d.norm(dim=-2, keepdim=True).clamp_min(1e-8))

    def step(self, h, f, logv, noise, hp, epoch):
        p = self.heads(h)
        mu, logvar = p["mu"], p["logvar"]
        a = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise["eps"]
        # gamma floored: an unused atom's mu and sigma may both shrink towards 0 (0/0 in the KL)
        gamma = gamma_update(mu, logvar).clamp_min(GAMMA_FLOOR)
        return self.compose(f, a), mu if noise is None else a, sdm_kl(mu, logvar, gamma)

    def compose(self, f, code):
        """z_t = f_t + D a_t: the innovation through the dictionary."""
        return f + code @ self.D.t()


class VscPrior(InnovationPrior):
    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.heads = Heads(d_in, cfg.latent, ("mu", "logvar", "spike_logit"))

    def noise_spec(self, batch, steps):
        shape = (batch, steps, self.code_dim)
        return {"eps": ("normal", shape), "eta": ("uniform", shape)}

    def step(self, h, f, logv, noise, hp, epoch):
        p = self.heads(h)
        mu, logvar = p["mu"], p["logvar"]
        pi = torch.sigmoid(p["spike_logit"]).clamp(GAMMA_EPS, 1 - GAMMA_EPS)
        if noise is None:
            a = pi * mu
        else:
            c = c_schedule(epoch, hp("c_start"), hp("c_end"), self.cfg.c_warmup)
            a = torch.sigmoid(c * (noise["eta"] - 1 + pi)) * (mu + torch.exp(0.5 * logvar) * noise["eps"])
        slab = gaussian_kl(mu, logvar, torch.zeros_like(mu), logv)
        return self.compose(f, a), a, (pi * slab + bernoulli_kl(pi, hp("alpha"))).sum(-1)

    def compose(self, f, code):
        """z_t = f_t + a_t (D = I)."""
        return f + code


STRATEGIES: dict[str, type[InnovationPrior]] = {"gaussian": GaussianPrior, "sdm": SdmPrior, "vsc": VscPrior}


def make_prior(cfg: ModelConfig, d_in: int) -> InnovationPrior:
    return STRATEGIES[cfg.prior](cfg, d_in)


#: each prior's own options: set away from their defaults under another prior they would be
#: stored in config.json, name the run, and change nothing
PRIOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "gaussian": (),
    "sdm": ("dictionary", "k", "dict_lr"),
    "vsc": ("alpha", "c_start", "c_end", "c_warmup"),
}


def check_prior(cfg: ModelConfig) -> None:
    """The prior's own options, in one line each; another prior's options left at their defaults."""
    if cfg.prior not in PRIORS:
        raise SdmvaeError(f"unknown prior {cfg.prior!r}; expected {', '.join(PRIORS)}")
    default = ModelConfig()
    foreign = [f for p, opts in PRIOR_OPTIONS.items() if p != cfg.prior for f in opts if getattr(cfg, f) != getattr(default, f)]
    if foreign:
        flags = ", ".join(flag_of(f) for f in foreign)
        raise SdmvaeError(f"{flags} {'does' if len(foreign) == 1 else 'do'} not apply to --prior {cfg.prior}")
    if cfg.prior == "sdm":
        if cfg.dictionary not in ("dct", "identity", "learned"):
            raise SdmvaeError(f"unknown dictionary {cfg.dictionary!r}; expected dct, identity or learned")
        if cfg.dictionary == "identity" and cfg.k != cfg.latent:
            raise SdmvaeError(f"--dict identity needs --k equal to --latent (got k={cfg.k}, latent={cfg.latent})")
    if cfg.prior == "vsc" and not 0.0 < cfg.alpha < 1.0:
        raise SdmvaeError(f"--alpha must be in (0, 1), got {cfg.alpha}")


def prior_label(cfg: ModelConfig) -> str:
    """' + SDM (DCT, k=64)', ' + VSC (alpha=0.5)' or '' (Gaussian): the suffix of a row label."""
    if cfg.prior == "sdm":
        kind = {"identity": "identity", "learned": f"learned, k={cfg.k}"}.get(cfg.dictionary, f"DCT, k={cfg.k}")
        return f" + SDM ({kind})"
    return f" + VSC (alpha={cfg.alpha:g})" if cfg.prior == "vsc" else ""


def prior_name_parts(cfg: ModelConfig) -> tuple[list[str], set[str]]:
    if cfg.prior == "sdm":
        return ["sdm", cfg.dictionary, *([] if cfg.dictionary == "identity" else [f"k{cfg.k}"])], {"prior", "dictionary", "k"}
    if cfg.prior == "vsc":
        return [f"vsc-a{cfg.alpha:g}"], {"prior", "alpha"}
    return [], {"prior"}
