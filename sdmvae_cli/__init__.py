"""sdmvae: sparse-latent variational autoencoders for speech power spectrograms.

Reproduces and extends Sadeghi & Magron, "A Sparsity-promoting Dictionary Model for
Variational Autoencoders" (Interspeech 2022), and the sparse-latent VAEs it is compared with.
"""

__version__ = "0.1.0"
