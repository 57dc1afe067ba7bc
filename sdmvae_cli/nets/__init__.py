"""The model family: frame-wise VAEs on power spectrograms with sparse or dense latents.

Importing this package registers every model; use :func:`build_model` / :data:`REGISTRY`.
"""

from sdmvae_cli.nets import cauchy, dkf, laplace, rvae, sdm, srnn, threshold, vae, vsc  # noqa: F401  (registration)
from sdmvae_cli.nets.base import LossTerms, ModelConfig, SpectrogramVAE
from sdmvae_cli.nets.registry import REGISTRY, build_model, foreign_options, model_names, register, validate_config

__all__ = [
    "LossTerms",
    "ModelConfig",
    "SpectrogramVAE",
    "REGISTRY",
    "build_model",
    "foreign_options",
    "model_names",
    "register",
    "validate_config",
]
