"""Training options and per-epoch records: the plain data shared by `train` and `sweep`, and the
one check of a fresh run's options (:func:`check_options`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sdmvae_cli.core.errors import SdmvaeError, UsageError, dataclass_from_dict
from sdmvae_cli.nets import ModelConfig, validate_config

#: the validation statistics a run may stop on (``--stop-on``) -> the history column holding it.
#: posterior-mean (the default): the ELBO with the posterior-mean code decoded and the KL in
#: closed form, free of sampling noise; mean: the one-sample ELBO with fixed noise (the paper's
#: validation loss, and the default before this version); median: the median over frames of
#: that one-sample loss (robust to a few loud frames, but tracks a mid-loudness frame).
STOP_COLUMNS: dict[str, str] = {"posterior-mean": "val_pm_total", "mean": "val_total", "median": "val_median"}
#: what a checkpoint or summary that names no statistic was stopped on (every run before stop_on existed)
LEGACY_STOP_ON = "mean"
#: options whose default changed, with the old default: a run started under it resumes with it,
#: and a spec that leaves the option unset is the same spec as before (sweep --resume)
CHANGED_DEFAULTS: dict[str, Any] = {"stop_on": LEGACY_STOP_ON}
#: what a resumed run uses for an option its config.json predates: how it was trained then
#: (full fp32 before TF32 was an option, the mean before stop_on was one)
RESUME_FALLBACKS: dict[str, Any] = {"tf32": False, "stop_on": LEGACY_STOP_ON}
#: Stack.validate's columns, in order
VALIDATION_COLUMNS = ("val_total", "val_recon", "val_kl", "val_median", "val_pm_total", "val_pm_recon", "val_pm_kl")
#: the unit-weight bound (IS reconstruction + KL) of each statistic that has one, for comparing runs of different beta
UNIT_WEIGHT_TERMS: dict[str, tuple[str, str]] = {"posterior-mean": ("val_pm_recon", "val_pm_kl"), "mean": ("val_recon", "val_kl")}


def stop_on_of(train: dict[str, Any] | None) -> str:
    """The statistic a run's stored training options say it stopped on (legacy: the mean)."""
    return (train or {}).get("stop_on", LEGACY_STOP_ON)


@dataclass
class TrainOptions:
    lr: float = 1e-4
    batch_size: int = 128
    epochs: int = 500  # maximum number of epochs; epochs are numbered from 0 everywhere
    patience: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cuda_graph: bool = True
    compile: str = "auto"  # auto | on | off: torch.compile of the training step (auto: see compile_enabled)
    stop_on: str = "posterior-mean"  # validation statistic for early stopping and best.pt: a key of STOP_COLUMNS
    tf32: bool = True  # CUDA matrix products in TF32 (no effect on a CPU); False: full fp32
    graph_steps: int = 32  # steps per CUDA graph replay, and per block of pre-drawn noise
    val_batch: int = 16384
    max_device_fraction: float = 0.5  # of free device memory (or host RAM) for resident frames
    max_device_bytes: int | None = None  # explicit cap, mostly for tests of the streaming path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainOptions":
        return dataclass_from_dict(cls, d, "training")

    def validate(self) -> None:
        if not 0 <= self.lr < math.inf:  # 0 freezes the weights (a baseline, and tests); the CLI asks for > 0
            raise SdmvaeError(f"--lr must be >= 0 and finite, got {self.lr}")
        if not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise SdmvaeError(f"--seed must be in [-2^63, 2^64), got {self.seed}")
        if not 0 < self.max_device_fraction <= 1:
            raise SdmvaeError(f"max_device_fraction must be in (0, 1], got {self.max_device_fraction}")
        if self.max_device_bytes is not None and self.max_device_bytes < 1:
            raise SdmvaeError(f"max_device_bytes must be >= 1, got {self.max_device_bytes}")
        for name in ("batch_size", "epochs", "graph_steps", "val_batch"):
            if getattr(self, name) < 1:
                raise SdmvaeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.patience < 1:
            raise SdmvaeError(f"--patience must be >= 1, got {self.patience}")
        if self.stop_on not in STOP_COLUMNS:
            raise SdmvaeError(f"--stop-on must be one of {', '.join(STOP_COLUMNS)}, got {self.stop_on!r}")
        if self.compile not in ("auto", "on", "off"):
            raise SdmvaeError(f"--compile must be auto, on or off, got {self.compile!r}")


def check_options(cfg: ModelConfig, opts: TrainOptions) -> None:
    """The check of a fresh run's options, made once where they enter (`train`'s
    :func:`~sdmvae_cli.training.train.train`, a sweep's :func:`~sdmvae_cli.training.spec.expand_spec`),
    before anything is read or written: the model's own (ranges, dictionary and k, ...:
    :func:`~sdmvae_cli.nets.validate_config`), then training's (:meth:`TrainOptions.validate`).
    A :class:`UsageError`: the options are the caller's (`sdmvae train` exits 2; a sweep spec
    names the run in its own error)."""
    try:
        validate_config(cfg)
        opts.validate()
    except SdmvaeError as exc:
        raise UsageError(str(exc)) from None


#: options that may differ between members of one stack (the rest must be equal): each member
#: has its own learning rate, generators, early-stopping state and statistic, and epoch cap
PER_MEMBER_OPTIONS = ("lr", "seed", "patience", "epochs", "stop_on")


@dataclass
class EpochRecord:
    epoch: int
    train_total: float
    train_recon: float
    train_kl: float
    val_total: float
    val_recon: float
    val_kl: float
    val_median: float  # median over validation frames of the per-frame total
    # the noise-free statistic (SpectrogramVAE.mean_code_loss) and its terms; NaN in histories from before it
    val_pm_total: float = field(default=math.nan, kw_only=True)
    val_pm_recon: float = field(default=math.nan, kw_only=True)
    val_pm_kl: float = field(default=math.nan, kw_only=True)
    seconds: float
    frames_per_s: float  # per member: each member of the stack saw this many frames per second
    best: bool = False
    engine: str = ""  # how the steps ran (Stack.engine), e.g. cpu:compiled-step
    stack_members: int = 1  # members computed side by side in this epoch (frames_per_s is per member)


#: on a CPU, ``--compile auto`` compiles a stack whose planned work holds at least this many
#: member-frames (see :func:`compile_enabled`)
AUTO_COMPILE_MEMBER_FRAMES = 2_000_000


def planned_epochs(opts: TrainOptions, done: int = 0) -> int:
    """The epochs a run will train at least: its remaining cap, or patience + 1 when early
    stopping can end it sooner (a run never stops before patience epochs without improvement)."""
    return max(0, min(opts.epochs - done, opts.patience + 1))


def compile_enabled(setting: str, device: torch.device, member_epochs: list[int], frames: int, family_auto: bool = True) -> bool:
    """Whether a stack compiles its training step. ``auto``: always with CUDA; on a CPU when the
    stack's planned work, sum over members of :func:`planned_epochs` x training frames, holds
    >= AUTO_COMPILE_MEMBER_FRAMES member-frames.

    Why the planned work and not one epoch's size: the compile is paid once per stack (15-18 s on
    a new 2-core machine, about 24 s for a sweep of mixed families, 3-4 s with inductor's cache
    warm) and the compiled step saves about 1/25k - 1/45k s per member-frame (25-38k frames/s
    eager, 33-63k compiled: docs/benchmarks.md), so it is repaid after about 1M member-frames;
    the line sits at twice that. A 3-epoch sweep of mixed families on a full split was compiled
    by the old per-epoch rule and ran at 0.6x the speed of the same runs eager (issue 23.20).
    ``family_auto`` False (:attr:`SpectrogramVAE.COMPILE_AUTO`): ``auto`` is off for the family."""
    if setting != "auto":
        return setting == "on"
    if not family_auto:
        return False
    return device.type == "cuda" or sum(member_epochs) * frames >= AUTO_COMPILE_MEMBER_FRAMES
