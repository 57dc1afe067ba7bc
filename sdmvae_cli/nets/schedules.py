"""Schedules over epochs that a family's objective reads from its ``epoch`` buffer (set by the
engine before each epoch; a buffer so that a captured CUDA graph sees its in-place updates)."""

from __future__ import annotations

import torch


def kl_warmup_weight(epoch, warmup: int):
    """Linear KL warm-up: min(1, (epoch + 1) / warmup), 1 without warm-up; works on floats and on
    the 0-d ``epoch`` buffer (a captured CUDA graph then sees its in-place updates). Epoch 0
    already has weight 1 / warmup: the KL is never switched off, so no epoch trains a plain
    autoencoder whose variances run away."""
    if warmup <= 0:
        return 1.0
    if isinstance(epoch, torch.Tensor):
        return torch.clamp((epoch + 1.0) / warmup, max=1.0)
    return min(1.0, (epoch + 1) / warmup)
