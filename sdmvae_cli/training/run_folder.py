"""A run's folder: what it holds, the checks before one is written or replaced, and its saves.

A run folder (``sdmvae train --out``, or ``OUT/<name>/`` of a sweep) holds ``config.json``
(written before the first epoch), then after every epoch ``last.pt`` (the epoch just trained,
resumable), ``best.pt`` (the epoch of the best validation statistic) and ``history.csv``, and
``loss.png`` (redrawn as the run goes: :mod:`sdmvae_cli.training.live_logs`) and the TensorBoard
events in ``tb/``. A folder holding an earlier run is never replaced silently.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import write_text
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import claim_folder
from sdmvae_cli.core.outputs import check_dir_destination, remove_stale_temporaries
from sdmvae_cli.nets.checkpoint import save_checkpoint
from sdmvae_cli.training.stack import Member, Stack

#: a folder holding any of these holds an earlier run (never replaced silently); config.json
#: and loss.png alone are what a run stopped before its first epoch leaves: nothing to lose
RUN_FILES = ("best.pt", "last.pt", "history.csv")
RUN_EXTRAS = ("config.json", "loss.png")
#: the run's TensorBoard event files (:mod:`sdmvae_cli.training.tensorboard_log`), and their names
TB_FOLDER = "tb"
TB_EVENTS = "events.out.tfevents.*"


def check_run_dir(run_dir: Path, overwrite: bool, prepared_dir: Path | None = None) -> None:
    """Refuse to train into a folder holding an earlier run, unless ``overwrite``, or into the
    prepared data (its input)."""
    check_dir_destination(run_dir, inputs=[prepared_dir] if prepared_dir is not None else [])
    claim_folder(run_dir)  # one writer per run folder, until train_runs returns (sdmvae_cli.core.lock)
    old = [n for n in RUN_FILES if (run_dir / n).exists()]
    if old and not overwrite:
        raise SdmvaeError(
            f"{run_dir} already holds a run ({', '.join(old)}); continue it with --resume {run_dir}, "
            "replace it with --overwrite, or choose another --out"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files (``--overwrite``, once every check has passed), and the
    evaluations of its checkpoints inside the folder (``eval-<split>/``, evaluate's default):
    left beside the new run they would describe the replaced model (a report read them as the
    new one's scores). A folder of the user's stays."""
    for n in RUN_FILES + RUN_EXTRAS:
        (run_dir / n).unlink(missing_ok=True)
    clear_events(run_dir)
    if run_dir.exists():
        remove_stale_temporaries(run_dir)
        for ev in _own_evaluations(run_dir):
            shutil.rmtree(ev)


def clear_events(run_dir: Path) -> None:
    """Remove an earlier run's TensorBoard events (a fresh run in the folder, or ``--overwrite``):
    appended to, they would show two runs as one. ``tb/`` goes when that leaves it empty; a file
    of the user's there stays."""
    tb = run_dir / TB_FOLDER
    if not tb.is_dir() or tb.is_symlink():
        return
    for f in tb.glob(TB_EVENTS):
        if f.is_file():
            f.unlink(missing_ok=True)
    try:
        tb.rmdir()
    except OSError:  # not empty: the user's files
        pass


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


def write_history(run_dir: Path, history: list[dict]) -> None:
    """history.csv: one row per epoch (:class:`~sdmvae_cli.training.options.EpochRecord`)."""
    if not history:
        return
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for h in history for k in h))  # a resumed older run lacks the newer columns
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(history)
    write_text(run_dir / "history.csv", buf.getvalue())


def run_config(m: Member, stft: StftConfig) -> dict[str, Any]:
    """The run's configuration, as config.json and every checkpoint store it."""
    return {"model": m.cfg.to_dict(), "stft": stft.to_dict(), "train": m.opts.to_dict(), "seed": m.opts.seed}


def saver(info: dict, stft: StftConfig, prepared_dir: Path, device: torch.device) -> Callable[[Stack, int, Member, bool], None]:
    """What a member's epoch writes: last.pt (everything ``--resume`` needs: weights, Adam state,
    early-stopping state, history, generator states, the data's fingerprint), best.pt too when
    the epoch improved, and history.csv."""

    def save(stack: Stack, i: int, m: Member, improved: bool) -> None:
        payload = {
            "config": run_config(m, stft),
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
