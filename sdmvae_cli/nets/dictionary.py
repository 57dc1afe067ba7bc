"""Dictionaries D (m x k) for SDM-VAE: z = D a (paper eq. 4)."""

from __future__ import annotations

import math

import torch

from sdmvae_cli.core.errors import SdmvaeError


def dct_dictionary(m: int, k: int) -> torch.Tensor:
    """Overcomplete DCT dictionary (paper eq. 11).

    Column 0 is constant 1/sqrt(m); column r >= 1 is cos((l - 1) pi r / k) over l = 1..m,
    mean-subtracted and scaled to unit norm (so every column has unit norm).
    """
    l = torch.arange(m, dtype=torch.float64)
    r = torch.arange(k, dtype=torch.float64)
    d = torch.cos(l[:, None] * math.pi * r[None, :] / k)
    d[:, 1:] -= d[:, 1:].mean(0, keepdim=True)
    d[:, 0] = 1.0
    d = d / d.norm(dim=0, keepdim=True)
    return d.float()


def make_dictionary(kind: str, m: int, k: int) -> torch.Tensor:
    if kind == "identity":
        if k != m:
            raise SdmvaeError(f"the identity dictionary needs k == latent (got k={k}, latent={m})")
        return torch.eye(m)
    if kind in ("dct", "learned"):
        if m < 2 and k > 1:
            raise SdmvaeError("a DCT dictionary with k > 1 needs latent >= 2")
        return dct_dictionary(m, k)  # the learned dictionary starts from the DCT
    raise SdmvaeError(f"unknown dictionary {kind!r}; expected dct, identity or learned")


def mutual_coherence_penalty(d: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal Gram entry of the (unit-norm) atoms: 0 for orthogonal atoms."""
    k = d.shape[1]
    if k < 2:
        return d.new_zeros(())
    g = d.t() @ d
    off = g - torch.diag_embed(torch.diagonal(g))
    return off.square().sum() / (k * (k - 1))
