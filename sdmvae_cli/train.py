"""`sdmvae train`: Adam, early stopping on the validation loss, self-describing checkpoints.

A single run is a stack of one member (:mod:`sdmvae_cli.stack`): `sdmvae sweep` trains many
at once with exactly the same computation per member. This module turns prepared data and
options into members (fresh or resumed from ``last.pt``), runs their stacks, and writes each
member's run directory: ``best.pt``, ``last.pt``, ``history.csv``, ``config.json``.

Reproducibility: each run has a permutation generator (seed) and a noise generator (derived
from the seed, on the training device); their states are stored in ``last.pt`` so ``--resume``
continues bit-identically on the same device. Validation uses fixed noise (seed + 1).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdmvae_cli.atomic import write_json, write_text
from sdmvae_cli.checkpoint import read_checkpoint, save_checkpoint
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.frames import FrameSource, device_budget, open_frames
from sdmvae_cli.lock import claim_folder, lock_scope
from sdmvae_cli.nets import ModelConfig, validate_config
from sdmvae_cli.prepare import fingerprint_aliases, load_prepare_info
from sdmvae_cli.stack import OPTIMIZER_KIND, STREAMED_STACK, Member, Stack, StackCallbacks, group_key, init_state, train_stack
from sdmvae_cli.stft import StftConfig
from sdmvae_cli.trainopts import LEGACY_STOP_ON, EpochRecord, TrainOptions, compile_enabled, planned_epochs, resolve_device

__all__ = ["EpochRecord", "TrainOptions", "TrainResult", "TrainingDiverged", "RunSpec", "train", "train_runs", "resolve_device"]

log = logging.getLogger("sdmvae")

#: the noise generator's seed is derived from the run's seed so it is not the permutation's stream
NOISE_SEED_XOR = 0x5DEECE66D


class TrainingDiverged(SdmvaeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_val: float
    stopped_early: bool
    interrupted: bool = False
    advice: str = ""  # stopped on the mean while the median per-frame loss still improved (stack.Member.advice)


@dataclass
class RunSpec:
    """What to train: a fresh run (model config + options) or a resumed one (run_dir/last.pt)."""

    name: str
    run_dir: Path
    model: ModelConfig | None = None
    opts: TrainOptions = field(default_factory=TrainOptions)
    resume: bool = False
    overwrite: bool = False  # replace an earlier run in run_dir (its files are removed once every check passed)


#: a folder holding any of these holds an earlier run (never replaced silently); config.json
#: and loss.png alone are what a run stopped before its first epoch leaves: nothing to lose
RUN_FILES = ("best.pt", "last.pt", "history.csv")
RUN_EXTRAS = ("config.json", "loss.png")


def check_run_dir(run_dir: Path, overwrite: bool, prepared_dir: Path | None = None) -> None:
    """Refuse to train into a folder holding an earlier run, unless ``overwrite``, or into the
    prepared data (its input)."""
    from sdmvae_cli.outputs import check_dir_destination

    check_dir_destination(run_dir, inputs=[prepared_dir] if prepared_dir is not None else [])
    claim_folder(run_dir)  # one writer per run folder, until train_runs returns (sdmvae_cli.lock)
    old = [n for n in RUN_FILES if (run_dir / n).exists()]
    if old and not overwrite:
        raise SdmvaeError(f"{run_dir} already holds a run ({', '.join(old)}); continue it with --resume {run_dir}, "
                          "replace it with --overwrite, or choose another --out")


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files (``--overwrite``, once every check has passed), and the
    evaluations of its checkpoints inside the folder (``eval-<split>/``, evaluate's default):
    left beside the new run they would describe the replaced model (a report read them as the
    new one's scores). A folder of the user's stays."""
    from sdmvae_cli.outputs import remove_stale_temporaries

    for n in RUN_FILES + RUN_EXTRAS:
        (run_dir / n).unlink(missing_ok=True)
    if run_dir.exists():
        remove_stale_temporaries(run_dir)
        for ev in _own_evaluations(run_dir):
            shutil.rmtree(ev)


def _own_evaluations(run_dir: Path) -> list[Path]:
    """``eval-*`` folders in ``run_dir`` whose summary.json scored a checkpoint of this folder."""
    found = []
    for d in sorted(run_dir.glob("eval-*")):
        try:
            ck = json.loads((d / "summary.json").read_text()).get("checkpoint")
            if d.is_dir() and not d.is_symlink() and isinstance(ck, str) and Path(ck).parent == run_dir.resolve():
                found.append(d)
        except (OSError, ValueError, AttributeError):
            continue
    return found


def check_frames(frames, where: str, chunk: int = 65536) -> None:
    """Power frames must be finite and non-negative: a NaN in the data would surface epochs
    later as a diverged loss and be blamed on the learning rate. One vectorised pass."""
    for s in range(0, frames.shape[0], chunk):
        block = np.asarray(frames[s : s + chunk])
        ok = np.isfinite(block).all(axis=1) & (block >= 0).all(axis=1)
        if not ok.all():
            bad = s + int(np.argmin(ok))
            kind = "NaN or inf" if not np.isfinite(block[bad - s]).all() else "negative power"
            raise SdmvaeError(f"{where}: the prepared frames hold {kind} (frame {bad}); the data is corrupt, "
                              "not the training: re-run `sdmvae prepare --force`")


def check_prepared(prepared_dir: Path) -> tuple[dict, StftConfig]:
    info = load_prepare_info(prepared_dir)
    stft = StftConfig.from_dict(info["stft"])
    if stft != StftConfig():
        log.warning("%s was prepared with a non-default STFT config %s", prepared_dir, stft.to_dict())
    return info, stft


def write_history(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for h in history for k in h))  # a resumed older run lacks the newer columns
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(history)
    write_text(run_dir / "history.csv", buf.getvalue())


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed ^ NOISE_SEED_XOR)


def _open_member(spec: RunSpec, info: dict, stft: StftConfig, prepared_dir: Path, device: torch.device):
    """A Member with its initial (or resumed) weights and optimizer state."""
    if not spec.resume:
        cfg, opts = spec.model, spec.opts
        assert cfg is not None
        validate_config(cfg)  # before any work
        opts.validate()
        check_run_dir(spec.run_dir, spec.overwrite, prepared_dir)
        m = Member(spec.name, cfg, opts, spec.run_dir)
        m.perm_gen, m.noise_gen = _generators(opts.seed, device)
        return m, init_state(cfg, opts.seed), None
    claim_folder(spec.run_dir)  # one writer per run folder, until train_runs returns (sdmvae_cli.lock)
    last = spec.run_dir / "last.pt"
    if not last.exists():
        raise SdmvaeError(f"--resume: {last} does not exist")
    state = read_checkpoint(last)
    if state.get("data_fingerprint") not in fingerprint_aliases(info):
        raise SdmvaeError(f"--resume: {prepared_dir} is not the prepared data {spec.run_dir} was trained on (fingerprint differs)")
    if StftConfig.from_dict(state["config"]["stft"]) != stft:
        raise SdmvaeError("--resume: the prepared data uses another STFT config than the checkpoint")
    optim = state.get("optimizer_state")
    if not isinstance(optim, dict) or optim.get("kind") != OPTIMIZER_KIND:
        raise SdmvaeError(f"--resume: {last} has no optimizer state of this sdmvae version (an exported or older checkpoint)")
    from sdmvae_cli.outputs import remove_stale_temporaries

    remove_stale_temporaries(spec.run_dir)  # a checkpoint write cut by kill -9 (one process per run folder)
    cfg = ModelConfig.from_dict(state["config"]["model"])
    saved = {k: v for k, v in state["config"]["train"].items() if k in TrainOptions.__dataclass_fields__}
    saved.setdefault("tf32", False)  # checkpoints from before the option trained in full fp32: resume as they ran
    saved.setdefault("stop_on", LEGACY_STOP_ON)  # and before stop_on, on the mean
    opts = TrainOptions(**{**saved, "device": spec.opts.device, "epochs": spec.opts.epochs})
    m = Member(spec.name, cfg, opts, spec.run_dir, history=list(state["history"]), epoch=int(state["epoch"]) + 1,
               best_val=float(state["best_val"]), best_epoch=int(state["best_epoch"]), since_best=int(state["since_best"]),
               wrote_checkpoint=True)
    m.perm_gen, m.noise_gen = _generators(opts.seed, device)
    m.perm_gen.set_state(state["rng"]["perm"])
    if state["rng"].get("noise_device") == device.type:
        m.noise_gen.set_state(state["rng"]["noise"])
    else:
        log.warning("%s: resumed on %s but trained on %s: sampling noise continues from a fresh stream",
                    spec.name, device.type, state["rng"].get("noise_device"))
    if m.since_best >= opts.patience:
        m.status, m.message = "stopped", "had already stopped early"
    elif m.epoch >= opts.epochs:
        m.status, m.message = "finished", f"already at the epoch cap ({opts.epochs})"
    return m, state["model_state"], optim


def _run_config(m: Member, stft: StftConfig) -> dict[str, Any]:
    return {"model": m.cfg.to_dict(), "stft": stft.to_dict(), "train": m.opts.to_dict(), "seed": m.opts.seed}


def _saver(info: dict, stft: StftConfig, prepared_dir: Path, device: torch.device):
    def save(stack: Stack, i: int, m: Member, improved: bool) -> None:
        payload = {
            "config": _run_config(m, stft),
            "model_state": stack.member_state(i),
            "optimizer_state": stack.optimizer_state(i),
            "epoch": m.epoch - 1,
            "best_val": m.best_val,
            "best_epoch": m.best_epoch,
            "since_best": m.since_best,
            "history": m.history,
            "data_fingerprint": info.get("fingerprint"),
            "prepared_dir": str(prepared_dir.resolve()),
            "rng": {"perm": m.perm_gen.get_state(), "noise": m.noise_gen.get_state(), "noise_device": device.type},
        }
        if improved:
            save_checkpoint(m.run_dir / "best.pt", payload)
        save_checkpoint(m.run_dir / "last.pt", payload)
        write_history(m.run_dir, m.history)

    return save


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
) -> list[Member]:
    """Train (or resume) every run: runs that differ only in seed, lr, patience, epochs, stop_on or scalar
    hyper-parameters share a stack; stacks run one after another. Returns the members in order
    (also given to ``on_open`` as soon as they exist, for callers that must see them after a
    Ctrl-C). Ctrl-C: every running member keeps its last completed epoch in last.pt;
    KeyboardInterrupt propagates after the statuses are set."""
    prepared_dir = Path(prepared_dir)
    info, stft = check_prepared(prepared_dir)
    device = resolve_device(device_name)
    opened = [_open_member(s, info, stft, prepared_dir, device) for s in specs]
    if on_open:
        on_open([it[0] for it in opened])
    train_frames, val_frames = open_frames(prepared_dir, "train"), open_frames(prepared_dir, "validation")
    for split, arr in (("train", train_frames), ("validation", val_frames)):
        if arr.shape[1] != stft.n_bins:
            raise SdmvaeError(f"{prepared_dir}/{split}/frames.npy has {arr.shape[1]} bins; its prepare.json says {stft.n_bins}")
        check_frames(arr, f"{prepared_dir}/{split}/frames.npy")
    first = opened[0][0].opts
    budget = first.max_device_bytes if first.max_device_bytes is not None else device_budget(device, first.max_device_fraction)
    groups: dict[str, list] = {}
    for item in opened:
        m = item[0]
        key = group_key(m.cfg, m.opts) + f"|{m.epoch}"
        groups.setdefault(key, []).append(item)
    for m, _, _ in opened:  # every check before the first write: a refused run leaves nothing behind
        if m.cfg.n_bins != stft.n_bins:
            raise SdmvaeError(f"model expects {m.cfg.n_bins} bins but the prepared data has {stft.n_bins}")
        if len(train_frames) < m.opts.batch_size:
            raise SdmvaeError(f"the train split has {len(train_frames)} frames, fewer than one batch ({m.opts.batch_size})")
    if train_frames.nbytes > budget and any(sum(not it[0].done for it in items) > 1 for items in groups.values()):
        raise SdmvaeError(STREAMED_STACK)
    for s in specs:
        if not s.resume and s.overwrite:
            clear_run_dir(s.run_dir)
    for m, _, _ in opened:
        m.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(m.run_dir / "config.json", _run_config(m, stft) | {"prepared_dir": str(prepared_dir.resolve()),
                                                                      "data_fingerprint": info.get("fingerprint")})
    # a streamed chunk holds at least one batch of the largest batch size (else every batch would be dropped)
    train_src = FrameSource.create(train_frames, device, budget, min_rows=max(m.opts.batch_size for m, _, _ in opened))
    val = FrameSource.create(val_frames, device, max(budget, val_frames.nbytes)).buffer
    cb = StackCallbacks(on_epoch=on_epoch, save=_saver(info, stft, prepared_dir, device), on_done=on_done)
    tf32_before = torch.backends.cuda.matmul.allow_tf32  # a stack sets it for its run; the caller's value comes back
    try:
        for items in groups.values():
            running = [it for it in items if not it[0].done]
            if not running:
                continue
            members = [it[0] for it in running]
            if on_group:
                on_group(members)
            o = members[0].opts
            compile_loss = compile_enabled(o.compile, device, [planned_epochs(m.opts, m.epoch) for m in members], len(train_src))
            use_graph = device.type == "cuda" and o.cuda_graph
            stack = Stack(members, [it[1] for it in running], [it[2] for it in running], train_src, val, device, use_graph, compile_loss)
            train_stack(stack, cb)
    except KeyboardInterrupt:  # train_stack marked its own members; these are the later stacks'
        for m, _, _ in opened:
            if m.status == "running":
                m.status, m.message = "interrupted", "interrupted before its stack started; --resume starts it"
        raise
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    return [it[0] for it in opened]


def train(
    prepared_dir: str | Path,
    model_cfg: ModelConfig | None,
    opts: TrainOptions,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress_factory: Callable[[int, int], Any] | None = None,
) -> TrainResult:
    """Train (or resume) one model on a prepared directory; checkpoints go to ``run_dir``.

    Raises :class:`TrainingDiverged` when the loss becomes NaN/inf (the last good checkpoint,
    if any, stays). ``progress_factory`` is accepted for API compatibility (epochs are reported
    through ``on_epoch``)."""
    run_dir = Path(run_dir)
    spec = RunSpec(run_dir.name, run_dir, model_cfg, opts, resume, overwrite)
    interrupted = False
    members: list[Member] = []
    try:
        train_runs(prepared_dir, [spec], opts.device, on_epoch=(lambda m, rec: on_epoch(rec)) if on_epoch else None,
                   on_open=members.extend)
    except KeyboardInterrupt:
        if not members:  # interrupted before the run was even opened: nothing to report
            raise
        interrupted = True
    m = members[0]
    if m.status == "diverged":
        raise TrainingDiverged(m.message.removeprefix(f"{m.name}: "))
    return TrainResult(run_dir, m.history, m.best_epoch, m.best_val, m.status == "stopped", interrupted, m.advice)


def plot_history(run_dir: str | Path, history: list[dict]) -> Path | None:
    """loss.png: total, IS and KL losses per epoch, titled with the run (see plots.plot_loss)."""
    if not history:
        return None
    from sdmvae_cli.plots import plot_loss

    return plot_loss(history, Path(run_dir) / "loss.png", title=Path(run_dir).resolve().name)
