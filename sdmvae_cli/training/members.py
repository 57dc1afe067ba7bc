"""A run's member, opened: fresh (its initial weights) or resumed from its ``last.pt`` (weights,
Adam, early-stopping and generator states), with the checks that come with each.

Reproducibility: each run has a permutation generator (seed) and a noise generator (derived
from the seed, on the training device); their states are stored in ``last.pt`` so ``--resume``
continues bit-identically on the same device.

``writer``: whether this process writes the run folder. Every process of a data-parallel
launch opens the member (:mod:`sdmvae_cli.training.data_parallel`); rank 0 alone checks, claims
and tidies its folder, the others only read ``last.pt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import claim_folder
from sdmvae_cli.core.outputs import remove_stale_temporaries
from sdmvae_cli.data.prepared import fingerprint_aliases
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.nets.checkpoint import read_checkpoint
from sdmvae_cli.training.early_stopping import resumed_status
from sdmvae_cli.training.optim import OPTIMIZER_KIND
from sdmvae_cli.training.options import RESUME_FALLBACKS, TrainOptions
from sdmvae_cli.training.run_folder import check_run_dir
from sdmvae_cli.training.same_run import MAY_CHANGE
from sdmvae_cli.training.stack import Member, init_state

log = logging.getLogger("sdmvae")


@dataclass
class RunSpec:
    """What to train: a fresh run (model config + options, checked by whoever made the spec:
    :func:`~sdmvae_cli.training.options.check_options`) or a resumed one (run_dir/last.pt)."""

    name: str
    run_dir: Path
    model: ModelConfig | None = None
    opts: TrainOptions = field(default_factory=TrainOptions)
    resume: bool = False
    overwrite: bool = False  # replace an earlier run in run_dir (its files are removed once every check passed)


#: the noise generator's seed is derived from the run's seed so it is not the permutation's stream
NOISE_SEED_XOR = 0x5DEECE66D
#: a member with its initial (or resumed) weights and optimizer state (None: a fresh Adam)
Opened = tuple[Member, dict[str, torch.Tensor], dict[str, Any] | None]


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed ^ NOISE_SEED_XOR)


def open_member(
    spec: RunSpec, info: dict, stft: StftConfig, prepared_dir: Path, device: torch.device, writer: bool = True
) -> Opened:
    """A Member with its initial (or resumed) weights and optimizer state."""
    if not spec.resume:
        cfg, opts = spec.model, spec.opts
        assert cfg is not None
        if writer:
            check_run_dir(spec.run_dir, spec.overwrite, prepared_dir)
        m = Member(spec.name, cfg, opts, spec.run_dir)
        m.perm_gen, m.noise_gen = _generators(opts.seed, device)
        return m, init_state(cfg, opts.seed), None
    return _resumed_member(spec, info, stft, prepared_dir, device, writer)


def _resumed_member(
    spec: RunSpec, info: dict, stft: StftConfig, prepared_dir: Path, device: torch.device, writer: bool
) -> Opened:
    """The member of ``spec.run_dir/last.pt``, as it was after its last completed epoch: its
    options (only ``epochs`` and the device from ``spec``), weights, Adam, early-stopping and
    generator states."""
    if writer:
        claim_folder(spec.run_dir)  # one writer per run folder, until train_runs returns (sdmvae_cli.core.lock)
    last = spec.run_dir / "last.pt"
    if not last.exists():
        raise SdmvaeError(f"--resume: {last} does not exist")
    state = read_checkpoint(last)
    if state.get("data_fingerprint") not in fingerprint_aliases(info):
        raise SdmvaeError(
            f"--resume: {prepared_dir} is not the prepared data {spec.run_dir} was trained on (fingerprint differs)"
        )
    if StftConfig.from_dict(state["config"]["stft"]) != stft:
        raise SdmvaeError("--resume: the prepared data uses another STFT config than the checkpoint")
    optim = state.get("optimizer_state")
    if not isinstance(optim, dict) or optim.get("kind") != OPTIMIZER_KIND:
        raise SdmvaeError(f"--resume: {last} has no optimizer state of this sdmvae version (an exported or older checkpoint)")
    if writer:
        remove_stale_temporaries(spec.run_dir)  # a checkpoint write cut by kill -9 (one process per run folder)
    cfg = ModelConfig.from_dict(state["config"]["model"])
    saved = {k: v for k, v in state["config"]["train"].items() if k in TrainOptions.__dataclass_fields__}
    # an option the checkpoint predates: as it was trained; then what a resume may change (training.same_run)
    opts = TrainOptions(**{**RESUME_FALLBACKS, **saved, **{k: getattr(spec.opts, k) for k in MAY_CHANGE}})
    m = Member(
        spec.name,
        cfg,
        opts,
        spec.run_dir,
        history=list(state["history"]),
        epoch=int(state["epoch"]) + 1,
        first_epoch=int(state["epoch"]) + 1,
        best_val=float(state["best_val"]),
        best_epoch=int(state["best_epoch"]),
        since_best=int(state["since_best"]),
        wrote_checkpoint=True,
    )
    m.perm_gen, m.noise_gen = _generators(opts.seed, device)
    m.perm_gen.set_state(state["rng"]["perm"])
    if state["rng"].get("noise_device") == device.type:
        m.noise_gen.set_state(state["rng"]["noise"])
    else:
        log.warning(
            "%s: resumed on %s but trained on %s: sampling noise continues from a fresh stream",
            spec.name,
            device.type,
            state["rng"].get("noise_device"),
        )
    resumed_status(m)
    return m, state["model_state"], optim
