"""`sdmvae train`: Adam, early stopping on the validation loss, self-describing checkpoints.

A single run is a stack of one member (:mod:`sdmvae_cli.training.stack`): `sdmvae sweep` trains many
at once with exactly the same computation per member. This module turns prepared data and
options into members (fresh or resumed from ``last.pt``), runs their stacks
(:mod:`sdmvae_cli.training.loop`; early stopping: :mod:`sdmvae_cli.training.early_stopping`), and
writes each member's run folder (:mod:`sdmvae_cli.training.run_folder`): ``best.pt``, ``last.pt``,
``history.csv``, ``config.json``, and, when asked (:class:`~sdmvae_cli.training.live_logs.LiveOptions`:
the CLI asks), ``loss.png`` and TensorBoard events as the run goes (:mod:`sdmvae_cli.training.live_logs`).

A fresh run's options are checked once, where they enter (:func:`~sdmvae_cli.training.options.check_options`):
in :func:`train` (one run) and in the sweep's spec (:func:`sdmvae_cli.training.spec.expand_spec`);
:func:`train_runs` takes them checked.

Reproducibility: each run has a permutation generator (seed) and a noise generator (derived
from the seed, on the training device); their states are stored in ``last.pt`` so ``--resume``
continues bit-identically on the same device. Validation uses fixed noise (seed + 1).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import write_json
from sdmvae_cli.core.device import resolve_device
from sdmvae_cli.core.distributed import (
    Launch,
    close_group,
    init_group,
    is_main_process,
    launch_from_env,
    on_main,
    peer_stopped,
    rank_device,
)
from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.core.flags import flag_of
from sdmvae_cli.core.lock import lock_scope
from sdmvae_cli.data.frames import FrameSource, check_frames, device_budget, open_frames
from sdmvae_cli.data.prepared import load_prepare_info
from sdmvae_cli.nets import REGISTRY, ModelConfig
from sdmvae_cli.training.data_parallel import DataParallelStack, rank_rows
from sdmvae_cli.training.live_logs import LiveLogs, LiveOptions
from sdmvae_cli.training.loop import StackCallbacks, train_stack
from sdmvae_cli.training.members import Opened, RunSpec, open_member
from sdmvae_cli.training.options import (
    EpochRecord,
    TrainOptions,
    check_options,
    compile_enabled,
    planned_epochs,
)
from sdmvae_cli.training.run_folder import clear_events, clear_run_dir, run_config, saver
from sdmvae_cli.training.sequence_data import SequenceIndexes, SequenceSource, data_for, sequence_indexes
from sdmvae_cli.training.stack import STREAMED_STACK, Member, Stack, group_key

__all__ = [
    "EpochRecord",
    "LiveOptions",
    "TrainOptions",
    "TrainResult",
    "TrainingDiverged",
    "RunSpec",
    "train",
    "train_runs",
]

log = logging.getLogger("sdmvae")

#: a train split under this many minutes of speech is warned about (README, "How much speech"):
#: the paper trains on about 8 h (TCD-TIMIT); on the first 2.5 and 5 min of our dev split's
#: speakers a 513-128-64 VAE's best validation loss stayed 1900 and 850 nats/frame above its
#: training loss, from 10 min within 10 % of it (the whole 21 min: equal)
LITTLE_SPEECH_MINUTES = 10.0


class TrainingDiverged(SdmvaeError):
    pass


@dataclass
class TrainResult:
    """What :func:`train` returns: the run's outcome, without the engine's state (generators,
    stack) that its :class:`~sdmvae_cli.training.stack.Member` carries."""

    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_val: float
    stopped_early: bool
    interrupted: bool = False
    advice: str = ""  # stopped on the mean while the median per-frame loss still improved (stack.Member.advice)


def default_run_name(cfg: ModelConfig, seed: int) -> str:
    """``<arch>-m<latent>[-<family options>][-<other non-default options>]-s<seed>``, the run
    folder `train` makes under ``runs/`` when none is given: what makes runs differ, so a second
    seed or another beta needs no --out, and never the spelling of a released model
    (``vae-m64``), which a run folder in the working directory would otherwise shadow in
    ``-m vae-m64``. (A sweep names its members by its spec: :func:`sdmvae_cli.training.spec.run_name`.)"""
    family, shown = REGISTRY[cfg.model].name_parts(cfg)
    parts, named = [cfg.model, f"m{cfg.latent}", *family], {"latent", *shown}
    default = ModelConfig()
    for o in REGISTRY[cfg.model].OPTIONS:
        v = getattr(cfg, o)
        if o not in named and v != getattr(default, o):
            text = "x".join(map(str, v)) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)
            parts.append(flag_of(o).lstrip("-") + text)
    return "-".join([*parts, f"s{seed}"])


def check_prepared(prepared_dir: Path) -> tuple[dict, StftConfig]:
    info = load_prepare_info(prepared_dir)
    stft = StftConfig.from_dict(info["stft"])
    if stft != StftConfig():
        log.warning("%s was prepared with a non-default STFT config %s", prepared_dir, stft.to_dict())
    return info, stft


def warn_little_speech(frames: int, stft: StftConfig) -> None:
    """One warning line when the train split holds under :data:`LITTLE_SPEECH_MINUTES` of speech
    (a frame is one hop of audio): the run works, but what it learns is to be taken as a test."""
    minutes = frames * stft.hop_length / stft.sample_rate / 60
    if minutes < LITTLE_SPEECH_MINUTES and is_main_process():  # torchrun: said once, by rank 0
        log.warning(
            "the train split holds %.1f min of speech (%d frames), under %g min: expect a validation loss far above "
            "the training loss and above a larger split's (the paper trains on ~8 h): a trial, not a model to use",
            minutes,
            frames,
            LITTLE_SPEECH_MINUTES,
        )


@lock_scope
def train_runs(
    prepared_dir: str | Path,
    specs: list[RunSpec],
    device_name: str = "auto",
    *,
    on_epoch: Callable[[Member, EpochRecord], None] | None = None,
    on_done: Callable[[Member], None] | None = None,
    on_group: Callable[[list[Member]], None] | None = None,
    on_open: Callable[[list[Member]], None] | None = None,
    live: LiveOptions | None = None,
    launch: Launch | None = None,
) -> list[Member]:
    """Train (or resume) every run: runs that differ only in seed, lr, patience, epochs, stop_on or scalar
    hyper-parameters share a stack; stacks run one after another. Returns the members in order
    (also given to ``on_open`` as soon as they exist, for callers that must see them after a
    Ctrl-C). Ctrl-C: every running member keeps its last completed epoch in last.pt;
    KeyboardInterrupt propagates after the statuses are set. A fresh spec's options come
    checked (:func:`~sdmvae_cli.training.options.check_options`, by :func:`train` or the sweep's spec).
    ``live``: loss.png and TensorBoard events as the runs go (None: neither). ``launch``: the
    runs are data-parallel over its ranks (:mod:`sdmvae_cli.training.data_parallel`; the group
    is joined); rank 0 alone writes the run folders and calls the callbacks."""
    prepared_dir = Path(prepared_dir)
    device = resolve_device(device_name)
    writer = launch is None or launch.is_main
    if launch is None:
        plan = _plan(prepared_dir, specs, device)
    else:  # rank 0 checks first, with the run folders' checks; a refusal ends every rank with rank 0's line
        plans: list[_Plan] = []
        on_main(lambda: plans.append(_plan(prepared_dir, specs, device, launch)), launch)
        plan = plans[0] if launch.is_main else _plan(prepared_dir, specs, device, launch, writer=False)
    info, stft, opened, groups, budget = plan.info, plan.stft, plan.opened, plan.groups, plan.budget
    train_frames, val_frames = plan.train_frames, plan.val_frames
    if on_open:
        on_open([it[0] for it in opened])
    if writer:
        warn_little_speech(len(train_frames), stft)
        _write_configs(specs, opened, info, stft, prepared_dir, launch)
    # a streamed chunk holds at least one batch of the largest batch size (else every batch would be dropped)
    train_src = FrameSource.create(train_frames, device, budget, min_rows=max(m.opts.batch_size for m, _, _ in opened))
    val = FrameSource.create(val_frames, device, max(budget, val_frames.nbytes)).buffer
    shown = LiveLogs(live, prepared_dir, val_frames, stft) if live is not None and writer else None
    cb = (
        StackCallbacks(on_epoch, saver(info, stft, prepared_dir, device), on_done, shown.epoch if shown else None)
        if writer
        else StackCallbacks()
    )
    try:
        _train_stacks(list(groups.values()), opened, data_for(plan.sequences, train_src, val), device, cb, on_group, launch)
    finally:  # also interrupted: each member's last loss.png, its event files closed
        if shown is not None:
            shown.close([it[0] for it in opened])
    return [it[0] for it in opened]


@dataclass
class _Plan:
    """What :func:`train_runs` trains, every check made: the data, the opened members, their stacks."""

    info: dict
    stft: StftConfig
    opened: list[Opened]
    groups: dict[str, list[Opened]]
    budget: int
    train_frames: np.ndarray
    val_frames: np.ndarray
    sequences: SequenceIndexes  # the sequence families' tiles, per --seq-len


def _plan(
    prepared_dir: Path, specs: list[RunSpec], device: torch.device, launch: Launch | None = None, writer: bool = True
) -> _Plan:
    """Every check before the first write (a refused run leaves nothing): the prepared data, each
    member opened (``writer``: with its run folder's checks and claim), and the fit of each
    member to the data and to the launch's ranks."""
    info, stft = check_prepared(prepared_dir)
    opened = [open_member(s, info, stft, prepared_dir, device, writer) for s in specs]
    train_frames, val_frames = _open_splits(prepared_dir, stft)
    first = opened[0][0].opts
    budget = first.max_device_bytes if first.max_device_bytes is not None else device_budget(device, first.max_device_fraction)
    groups: dict[str, list[Opened]] = {}
    for item in opened:
        groups.setdefault(group_key(item[0].cfg, item[0].opts, item[0].name) + f"|{item[0].epoch}", []).append(item)
    _check_fit(opened, groups, stft, train_frames, budget, launch)
    sequences = sequence_indexes(
        [(m.cfg, m.opts.batch_size) for m, _, _ in opened], prepared_dir, (train_frames, val_frames), budget
    )
    return _Plan(info, stft, opened, groups, budget, train_frames, val_frames, sequences)


def check_runs(prepared_dir: str | Path, specs: list[RunSpec], device: str | torch.device) -> None:
    """The checks :func:`train_runs` makes before it writes, without writing or claiming anything:
    for a caller that must know that every run will start before it changes a folder (the
    distributed sweep removes an earlier sweep only then)."""
    _plan(Path(prepared_dir), specs, resolve_device(device), writer=False)


def _write_configs(
    specs: list[RunSpec], opened: list[Opened], info: dict, stft: StftConfig, prepared_dir: Path, launch: Launch | None
) -> None:
    """Each run folder made ready (an overwritten run's files removed) and its config.json written."""
    extra = {"data_parallel_ranks": launch.world} if launch is not None else {}
    for s in specs:
        if not s.resume and s.overwrite:
            clear_run_dir(s.run_dir)
        elif not s.resume:
            clear_events(s.run_dir)  # a fresh run's events must not follow those of a run no longer there
    for m, _, _ in opened:
        m.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            m.run_dir / "config.json",
            run_config(m, stft)
            | {"prepared_dir": str(prepared_dir.resolve()), "data_fingerprint": info.get("fingerprint")}
            | extra,
        )


def _open_splits(prepared_dir: Path, stft: StftConfig) -> tuple[np.ndarray, np.ndarray]:
    """The train and validation frames (memory-mapped), checked: the STFT's bins, finite, non-negative."""
    train_frames, val_frames = open_frames(prepared_dir, "train"), open_frames(prepared_dir, "validation")
    for split, arr in (("train", train_frames), ("validation", val_frames)):
        if arr.shape[1] != stft.n_bins:
            raise SdmvaeError(f"{prepared_dir}/{split}/frames.npy has {arr.shape[1]} bins; its prepare.json says {stft.n_bins}")
        check_frames(arr, f"{prepared_dir}/{split}/frames.npy")
    return train_frames, val_frames


def _check_fit(
    opened: list[Opened],
    groups: dict[str, list[Opened]],
    stft: StftConfig,
    train_frames: np.ndarray,
    budget: int,
    launch: Launch | None = None,
) -> None:
    """Every member fits the data: its bins, at least one batch of frames, and a stack of several
    members needs the train split resident (within ``budget``); data-parallel, its batch splits
    evenly over the ranks."""
    for m, _, _ in opened:
        if m.cfg.n_bins != stft.n_bins:
            raise SdmvaeError(f"model expects {m.cfg.n_bins} bins but the prepared data has {stft.n_bins}")
        if len(train_frames) < m.opts.batch_size:
            raise SdmvaeError(f"the train split has {len(train_frames)} frames, fewer than one batch ({m.opts.batch_size})")
        if launch is not None:
            rank_rows(m.opts.batch_size, launch)
    if train_frames.nbytes > budget and any(sum(not it[0].done for it in items) > 1 for items in groups.values()):
        raise SdmvaeError(STREAMED_STACK)


def _train_stacks(
    groups: list[list[Opened]],
    opened: list[Opened],
    data: Callable[[ModelConfig], tuple[FrameSource | SequenceSource, torch.Tensor]],
    device: torch.device,
    cb: StackCallbacks,
    on_group: Callable[[list[Member]], None] | None,
    launch: Launch | None = None,
) -> None:
    """One stack per group of members still running, one after another (data-parallel over
    ``launch``'s ranks when given); ``data`` gives a configuration's training source and
    validation tensor (frames, or a sequence family's tiles)."""
    tf32_before = torch.backends.cuda.matmul.allow_tf32  # a stack sets it for its run; the caller's value comes back
    try:
        for items in groups:
            running = [it for it in items if not it[0].done]
            if not running:
                continue
            members = [it[0] for it in running]
            if on_group:
                on_group(members)
            o = members[0].opts
            train_src, val = data(members[0].cfg)
            epochs = [planned_epochs(m.opts, m.epoch) for m in members]
            compile_loss = compile_enabled(o.compile, device, epochs, len(train_src), REGISTRY[members[0].cfg.model].COMPILE_AUTO)
            use_graph = device.type == "cuda" and o.cuda_graph and launch is None
            make = Stack if launch is None else functools.partial(DataParallelStack, launch=launch)
            stack = make(
                members, [it[1] for it in running], [it[2] for it in running], train_src, val, device, use_graph, compile_loss
            )
            train_stack(stack, cb)
    except KeyboardInterrupt:  # train_stack marked its own members; these are the later stacks'
        for m, _, _ in opened:
            if m.status == "running":
                m.status, m.message = "interrupted", "interrupted before its stack started; --resume starts it"
        raise
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before


def _join_launch(opts: TrainOptions, launch: Launch, resume: bool, batch_per_rank: bool) -> TrainOptions:
    """A data-parallel run's options on this rank (its GPU: ``LOCAL_RANK``; the run's batch: the
    ranks x ``--batch-size``, which is per rank, unless it came from a config), the group joined."""
    opts = replace(opts, device=rank_device(opts.device, launch))
    if not resume and batch_per_rank:
        opts.batch_size *= launch.world
    init_group(launch, resolve_device(opts.device))
    return opts


def train(
    prepared_dir: str | Path,
    model_cfg: ModelConfig | None,
    opts: TrainOptions,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress_factory: Callable[[int, int], Any] | None = None,
    live: LiveOptions | None = None,
    batch_per_rank: bool = True,
) -> TrainResult:
    """Train (or resume) one model on a prepared directory; checkpoints go to ``run_dir``
    (default for a fresh run: ``runs/<default_run_name>``).

    The options of a fresh run are checked here (:func:`~sdmvae_cli.training.options.check_options`),
    before anything else.
    Raises :class:`TrainingDiverged` when the loss becomes NaN/inf (the last good checkpoint,
    if any, stays). ``progress_factory`` is accepted for API compatibility (epochs are reported
    through ``on_epoch``). ``live``: loss.png and TensorBoard events as the run goes (None: neither).
    Under torchrun (more than one process) the run is data-parallel over the ranks
    (:mod:`sdmvae_cli.training.data_parallel`): ``opts.batch_size`` is then per rank, unless
    ``batch_per_rank`` is False (it is the run's batch: a config.json reproduced with --config)."""
    if not resume:
        assert model_cfg is not None, "a fresh run needs its model config"
        check_options(model_cfg, opts)
    if run_dir is None:
        if resume:
            raise UsageError("resuming a run needs its folder")
        run_dir = Path("runs") / default_run_name(model_cfg, opts.seed)
    run_dir = Path(run_dir)
    launch = launch_from_env()
    if launch is not None:
        opts = _join_launch(opts, launch, resume, batch_per_rank)
    spec = RunSpec(run_dir.name, run_dir, model_cfg, opts, resume, overwrite)
    interrupted = False
    members: list[Member] = []
    try:
        train_runs(
            prepared_dir,
            [spec],
            opts.device,
            on_epoch=(lambda m, rec: on_epoch(rec)) if on_epoch else None,
            on_open=members.extend,
            live=live,
            launch=launch,
        )
    except KeyboardInterrupt:
        if not members:  # interrupted before the run was even opened: nothing to report
            raise
        interrupted = True
    except Exception as exc:
        if launch is None or not peer_stopped(exc):
            raise
        raise SdmvaeError(
            f"another rank of the launch stopped; {run_dir}/last.pt holds the last completed epoch: "
            f"continue with --resume {run_dir}"
        ) from None
    finally:
        if launch is not None:
            close_group()
    m = members[0]
    if m.status == "diverged":
        exc = TrainingDiverged(m.message.removeprefix(f"{m.name}: "))
        exc.echo = launch is None or launch.is_main  # data-parallel: every rank diverged alike; rank 0 says so
        raise exc
    return TrainResult(run_dir, m.history, m.best_epoch, m.best_val, m.status == "stopped", interrupted, m.advice)
