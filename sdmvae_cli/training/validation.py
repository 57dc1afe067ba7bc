"""The validation statistics of a stack's members, computed after every epoch.

Per member, in the order of :data:`~sdmvae_cli.training.options.VALIDATION_COLUMNS`:

- the one-sample ELBO (total, IS reconstruction, KL) per validation frame, with noise fixed for
  the whole run (drawn once from the member's seed + 1): the paper's validation loss;
- the median over frames of its per-frame total: the one-sample mean can be dominated by the
  sampling noise of a handful of loud frames (docs/results.md), the median tracks a
  mid-loudness frame;
- the noise-free statistic (total, recon, KL): the ELBO with the posterior-mean code decoded and
  the KL in closed form (:meth:`SpectrogramVAE.mean_code_loss`), the default for early stopping
  (:mod:`sdmvae_cli.training.early_stopping`).
"""

from __future__ import annotations

from typing import Callable

import torch

from sdmvae_cli.nets import SpectrogramVAE
from sdmvae_cli.nets.noise import draw_noise


def fixed_noise(template: SpectrogramVAE, seeds: list[int], frames: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Each member's validation noise, (N, ...), from its own generator seeded with ``seeds``."""
    spec = template.noise_spec(frames)
    per = [draw_noise(spec, (), torch.Generator(device=device).manual_seed(seed), device) for seed in seeds]
    return {k: torch.stack([p[k] for p in per]) for k in spec}


@torch.no_grad()
def validation_statistics(
    val_fn: Callable,
    params: dict[str, torch.Tensor],
    hp: dict[str, torch.Tensor],
    val: torch.Tensor,
    noise: dict[str, torch.Tensor],
    members: int,
    val_batch: int,
    axes: dict[str, int],
) -> torch.Tensor:
    """(N, 7) in the order of VALIDATION_COLUMNS. ``val_fn`` is the stack's validation function
    (per member: per-frame totals, and the sums of the one-sample and noise-free terms); the
    frames go through it in slices of about ``val_batch`` frames of all members together; ``axes``
    gives each noise's batch axis (:meth:`SpectrogramVAE.noise_batch_axis`) to slice it by."""
    n_val = val.shape[0]
    rows = val[0].numel() // val.shape[-1]  # frames per row: 1, or a sequence family's seq_len
    vb = max(256 // rows, 1, val_batch // max(1, members) // rows)
    sums = torch.zeros((members, 6), dtype=torch.float64, device=val.device)
    totals = []
    for s in range(0, n_val, vb):
        e = min(n_val, s + vb)
        frame_totals, part = val_fn(params, hp, val[s:e], {k: v.narrow(axes[k] + 1, s, e - s) for k, v in noise.items()})
        sums += part.double()
        totals.append(frame_totals)
    totals = torch.cat(totals, 1)
    median = totals.median(dim=1).values.double()
    means = sums / totals.shape[1]  # per frame (a sequence's frames each count)
    return torch.cat([means[:, :3], median[:, None], means[:, 3:]], 1)
