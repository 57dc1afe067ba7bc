"""`vsc`: Variational Sparse Coding with a spike-and-slab prior (Tonolini et al., JMLR 2020).

Posterior: q(z_j) = gamma_j N(mu_j, sigma_j^2) + (1 - gamma_j) delta_0; prior: the same with
slab N(0, 1) and slab probability alpha (paper grid 0.05, 0.5, 0.9). Closed-form KL (Tonolini
eq. 7): sum_j gamma_j KL(N(mu_j, sigma_j^2) || N(0, 1)) + KL(Bern(gamma_j) || Bern(alpha)).

Sampling (Tonolini eq. 9): z = sigmoid(c (eta - 1 + gamma)) * (mu + sigma eps), eta ~ U(0, 1):
a smooth relaxation of the spike selection 1[eta > 1 - gamma]. Our warm-up schedule for c:
linear from ``c_start`` (50) at epoch 0 to ``c_end`` (200) at epoch ``c_warmup`` (100), then
constant; c is computed from the ``epoch`` buffer so a captured CUDA graph sees its updates
and each member of a stacked sweep can have its own c_start/c_end.
"""

from __future__ import annotations

import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.base import COMMON_OPTIONS, ModelConfig, SpectrogramVAE, gaussian_kl_std
from sdmvae_cli.nets.latents import VscLatent
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import Heads

GAMMA_EPS = 1e-6


def bernoulli_kl(gamma: torch.Tensor, alpha: float) -> torch.Tensor:
    return gamma * torch.log(gamma / alpha) + (1 - gamma) * torch.log((1 - gamma) / (1 - alpha))


def spike_slab_kl(mu: torch.Tensor, logvar: torch.Tensor, gamma: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-frame KL between spike-and-slab posterior and prior (Tonolini eq. 7)."""
    return (gamma * gaussian_kl_std(mu, logvar) + bernoulli_kl(gamma, alpha)).sum(-1)


def c_schedule(epoch, start, end, warmup: int):
    """Linear warm-up of c; works on floats and on tensors (epoch a 0-d buffer)."""
    if warmup <= 0:
        return end
    frac = torch.clamp(epoch / warmup, max=1.0) if isinstance(epoch, torch.Tensor) else min(1.0, epoch / warmup)
    return start + (end - start) * frac


@register("vsc")
class VSC(SpectrogramVAE):
    DESCRIPTION = "Spike-and-slab prior and posterior (Tonolini et al. 2020)."
    OPTIONS = COMMON_OPTIONS + ("alpha", "c_start", "c_end", "c_warmup")
    ROW_RANK, MCEM_LATENT = 1, VscLatent

    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        return f"VSC (alpha={cfg.alpha:g})"

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        return (cfg.alpha,)

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        return [f"a{cfg.alpha:g}"], {"alpha"}

    @classmethod
    def upgrade_state(cls, state: dict) -> dict:
        """Format 1 stored the c schedule as a buffer; it is computed from the epoch now."""
        return {k: v for k, v in state.items() if k != "c"}

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.heads = Heads(self.enc_dim, cfg.latent, ("mu", "logvar", "spike_logit"))

    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if not 0.0 < cfg.alpha < 1.0:
            raise SdmvaeError(f"--alpha must be in (0, 1), got {cfg.alpha}")

    def encode(self, x):
        p = self.heads(self.features(x))
        gamma = torch.sigmoid(p["spike_logit"]).clamp(GAMMA_EPS, 1 - GAMMA_EPS)
        return {"mu": p["mu"], "logvar": p["logvar"], "gamma": gamma}

    @property
    def c(self):
        return c_schedule(self.epoch, self.hp("c_start"), self.hp("c_end"), self.cfg.c_warmup)

    def noise_spec(self, batch: int):
        return {"eps": ("normal", (batch, self.cfg.latent)), "eta": ("uniform", (batch, self.cfg.latent))}

    def sample(self, post, noise=None):
        mu, logvar, gamma = post["mu"], post["logvar"], post["gamma"]
        n = self._noise(post, noise)
        slab = mu + torch.exp(0.5 * logvar) * n["eps"]
        return torch.sigmoid(self.c * (n["eta"] - 1 + gamma)) * slab

    def mean_code(self, post):
        return post["gamma"] * post["mu"]

    def kl(self, post, z):
        return spike_slab_kl(post["mu"], post["logvar"], post["gamma"], self.hp("alpha"))
