"""`sdm`: SDM-VAE, the sparsity-promoting dictionary model (Sadeghi & Magron 2022).

The encoder gives a Gaussian posterior over the sparse code a in R^k; the decoder input is
z = D a (eq. 4). The prior on a is N(0, diag(gamma)) (eq. 5); gamma is not learned by
gradient but set per frame, in closed form, to the value that minimises the KL (eq. 9):
gamma = mu^2 + sigma^2, held fixed (no gradient) inside the KL of eqs. 8a/8b/10.
"""

from __future__ import annotations

import torch
from torch import nn

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.base import COMMON_OPTIONS, ModelConfig, SpectrogramVAE, reparameterise
from sdmvae_cli.nets.dictionary import make_dictionary, mutual_coherence_penalty
from sdmvae_cli.nets.latents import SdmLatent
from sdmvae_cli.nets.registry import register
from sdmvae_cli.nets.vae import GaussianHeads


def gamma_update(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form prior variances (eq. 9), detached: gamma = mu^2 + sigma^2."""
    return (mu.square() + logvar.exp()).detach()


def sdm_kl(mu: torch.Tensor, logvar: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, gamma)) summed over atoms (eqs. 8a, 10)."""
    return 0.5 * (torch.log(gamma) - logvar + (logvar.exp() + mu.square()) / gamma - 1.0).sum(-1)


@register("sdm")
class SDMVAE(SpectrogramVAE):
    DESCRIPTION = "SDM-VAE: z = D a, prior N(0, diag(gamma)) with closed-form gamma (Sadeghi & Magron 2022)."
    OPTIONS = COMMON_OPTIONS + ("dictionary", "k", "dict_lr", "coherence")
    ROW_RANK, MCEM_LATENT = 2, SdmLatent
    DICTIONARY_ORDER = ("identity", "dct", "learned")

    @classmethod
    def family_label(cls, cfg: ModelConfig) -> str:
        if cfg.dictionary == "identity":
            return "SDM-VAE (identity)"
        return f"SDM-VAE ({'learned' if cfg.dictionary == 'learned' else 'DCT'}, k={cfg.k})"

    @classmethod
    def row_order(cls, cfg: ModelConfig) -> tuple:
        order = cls.DICTIONARY_ORDER
        return (order.index(cfg.dictionary) if cfg.dictionary in order else 9, cfg.k)

    @classmethod
    def name_parts(cls, cfg: ModelConfig) -> tuple[list[str], set[str]]:
        return [cfg.dictionary, f"k{cfg.k}"], {"dictionary", "k"}

    def dictionary(self) -> torch.Tensor:
        return self.D

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """z = D a (eq. 4)."""
        return codes @ self.D.t()

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.code_dim = cfg.k
        self.heads = GaussianHeads(self.enc_dim, cfg.k)
        d = make_dictionary(cfg.dictionary, cfg.latent, cfg.k)
        if cfg.dictionary == "learned":
            self.D = nn.Parameter(d)
        else:
            self.register_buffer("D", d)
        #: when set, a constant gamma replaces the update (eq. 9); used to check that SDM-VAE
        #: with D = I and gamma = 1 is exactly the plain VAE
        self.fixed_gamma: float | None = None

    @classmethod
    def validate(cls, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if cfg.k < 1:
            raise SdmvaeError("--k must be >= 1")
        if cfg.dictionary == "identity" and cfg.k != cfg.latent:
            raise SdmvaeError(f"--dict identity needs --k equal to --latent (got k={cfg.k}, latent={cfg.latent})")
        if cfg.dictionary not in ("dct", "identity", "learned"):
            raise SdmvaeError(f"unknown dictionary {cfg.dictionary!r}; expected dct, identity or learned")

    def encode(self, x):
        return self.heads(self.features(x))

    def noise_spec(self, batch: int):
        return {"eps": ("normal", (batch, self.cfg.k))}

    def sample(self, post, noise=None):
        return reparameterise(post["mu"], post["logvar"], self._noise(post, noise)["eps"]) @ self.D.t()

    def mean_code(self, post):
        return post["mu"] @ self.D.t()

    def interpretable_code(self, post):
        return post["mu"]

    def gamma(self, post) -> torch.Tensor:
        if self.fixed_gamma is not None:
            return torch.full_like(post["mu"], float(self.fixed_gamma))
        return gamma_update(post["mu"], post["logvar"])

    def kl(self, post, z):
        return sdm_kl(post["mu"], post["logvar"], self.gamma(post))

    def penalty(self):
        if self.cfg.dictionary == "learned" and self.cfg.coherence > 0:
            return self.hp("coherence") * mutual_coherence_penalty(self.D)
        return 0.0

    @torch.no_grad()
    def project_(self, params) -> None:
        """Unit-norm atoms (columns of D; dim -2 also works on a stack of dictionaries)."""
        if self.cfg.dictionary == "learned":
            d = params["D"]
            d.div_(d.norm(dim=-2, keepdim=True).clamp_min(1e-8))

    def lr_scale(self, name: str) -> str | None:
        return "dict_lr" if name == "D" else None
