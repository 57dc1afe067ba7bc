"""The standard noise of a training step: what a family declares (:data:`NoiseSpec`) and how
every draw is made (:func:`draw_noise`), so a stack's members and a lone run draw alike."""

from __future__ import annotations

from typing import Mapping

import torch

#: standard noise one training step consumes: name -> ("normal" | "uniform", shape)
NoiseSpec = dict[str, tuple[str, tuple[int, ...]]]
Noise = Mapping[str, torch.Tensor]


def draw_noise(
    spec: NoiseSpec,
    lead: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Standard normal / uniform tensors for ``spec``, with extra leading dims ``lead``.

    Training draws all sampling noise through here, from the run's own generator, in a fixed
    order (sorted names): that is what makes a member of a stacked sweep see exactly the noise
    of the same run trained alone, and lets a CUDA graph read noise from static buffers.
    """
    out = {}
    for name in sorted(spec):
        kind, shape = spec[name]
        fn = torch.randn if kind == "normal" else torch.rand
        out[name] = fn((*lead, *shape), generator=generator, device=device)
    return out


def open_uniform(u: torch.Tensor) -> torch.Tensor:
    """Uniform noise kept off 0 and 1 (for logs and inverse CDFs)."""
    return u.clamp(1e-6, 1 - 1e-6)
