"""sdmvae: sparse-latent variational autoencoders for speech power spectrograms.

Reproduces and extends Sadeghi & Magron, "A Sparsity-promoting Dictionary Model for
Variational Autoencoders" (Interspeech 2022), and the sparse-latent VAEs it is compared with.
"""

from sdmvae_cli.core.version import __version__

__all__ = ["__version__", "load_model", "resynthesise"]


def resynthesise(audio, model=None, sample_rate=None, device="cpu"):
    """``sdmvae_cli.resynthesise("in.wav", model="vae-m64")``: audio through a model in one call.

    Returns a :class:`sdmvae_cli.inference.resynth.Resynthesis` (``.output`` at the input's rate, length
    and level; ``.codes``, frames x code dimension). See :func:`sdmvae_cli.inference.resynth.resynthesise`."""
    from sdmvae_cli.inference.resynth import resynthesise as _resynthesise

    return _resynthesise(audio, model, sample_rate=sample_rate, device=device)


def load_model(path, device="cpu"):
    """A checkpoint file, run directory or released name -> :class:`sdmvae_cli.nets.checkpoint.LoadedModel`."""
    from sdmvae_cli.nets.checkpoint import load_model as _load_model

    return _load_model(path, device=device)
