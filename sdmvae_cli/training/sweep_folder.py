"""What a sweep folder holds and may become: the checks made before a sweep writes ``OUT``
(an earlier sweep, member folders, ``--resume`` of the same spec), and the sweep's record
``OUT/sweep.json``. Shared by the one-process sweep (:mod:`sdmvae_cli.training.sweep`) and the
distributed one (:mod:`sdmvae_cli.training.distributed_sweep`), which makes these checks once, on rank 0.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.lock import LOCK_NAME, claim_folder, folder_lock
from sdmvae_cli.core.outputs import check_dir_destination
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.nets.checkpoint import read_checkpoint
from sdmvae_cli.training.options import TrainOptions
from sdmvae_cli.training.run_folder import clear_run_dir
from sdmvae_cli.training.same_run import check_same_run
from sdmvae_cli.training.spec import SUMMARY, SWEEP_FILES, expand_spec, plain_name, read_spec
from sdmvae_cli.training.stack import Member
from sdmvae_cli.training.train import RunSpec, check_prepared


def _contents(run_dir: Path) -> set[str]:
    """What a member folder holds (a stale lock file left by a killed process aside); a file
    in its place counts as holding something."""
    if not run_dir.is_dir():
        return {run_dir.name} if run_dir.exists() else set()
    return {p.name for p in run_dir.iterdir()} - {LOCK_NAME}


def _never_started(run_dir: Path, held: set[str]) -> bool:
    """A member folder without last.pt that kept no epoch: config.json alone (a sweep stopped
    before this member's stack ran), or with the best.pt of epoch 0 and a checkpoint's temporary
    (killed during its first save, between best.pt and last.pt: a torchrun rank killed then;
    history.csv is written after last.pt). --resume starts it afresh, these files replaced; a
    folder holding anything else (a finished run whose last.pt was removed, a file of yours)
    is refused."""
    if not all(n in ("config.json", "best.pt") or (n.startswith(".") and n.endswith(".tmp")) for n in held):
        return False
    if "best.pt" not in held:
        return True
    try:
        return int(read_checkpoint(run_dir / "best.pt")["epoch"]) == 0
    except (SdmvaeError, KeyError, TypeError, ValueError):
        return False


def plan_sweep(
    prepared_dir, spec_path, out_dir: Path, device: str, epochs: int | None, resume: bool, overwrite: bool, held: ExitStack
) -> tuple[list[RunSpec], list[str]]:
    """Every check a sweep makes before it writes, in one place for the one-process and the
    distributed sweep: the spec, the prepared data (a wrong PREPARED_DIR must not leave an empty
    --out behind), the destination, then, under the folder's lock (entered into ``held``, so
    it lasts as long as the caller's sweep), what the folder holds. Returns the members to train
    and the earlier sweep's members that ``overwrite`` removes."""
    runs = expand_spec(read_spec(spec_path))
    check_prepared(Path(prepared_dir))
    check_dir_destination(out_dir, inputs=[prepared_dir])
    held.enter_context(folder_lock(out_dir))
    replaced = earlier_sweep(out_dir, [name for name, _, _ in runs], resume, overwrite)
    return member_specs(out_dir, runs, device, epochs, resume, overwrite), replaced


def member_specs(
    out_dir: Path,
    runs: list[tuple[str, ModelConfig, TrainOptions]],
    device: str,
    epochs: int | None,
    resume: bool,
    overwrite: bool,
) -> list[RunSpec]:
    """What train_runs trains: each run in ``OUT/<name>``, an existing member folder refused
    unless ``resume`` (it continues, or starts if its stack never ran) or ``overwrite``."""
    specs = []
    for name, cfg, opts in runs:
        opts.device = device
        if epochs is not None:
            opts.epochs = epochs
        run_dir = out_dir / name
        has_last = (run_dir / "last.pt").exists()
        held = _contents(run_dir)
        if held and not overwrite and not (resume and (has_last or _never_started(run_dir, held))):
            raise SdmvaeError(
                f"{run_dir} already exists; use --resume to continue the sweep, --overwrite to replace it, or another --out"
            )
        if resume and has_last:
            check_same_run(run_dir, cfg, opts)
        fresh_again = resume and not has_last and bool(held)  # _never_started: its own files are replaced
        specs.append(RunSpec(name, run_dir, cfg, opts, resume=resume and has_last, overwrite=overwrite or fresh_again))
    return specs


def _recorded_members(summary: Path) -> list[str] | None:
    """The member names an earlier sweep.json lists (None when it is not one)."""
    try:
        names = [m["name"] for m in json.loads(summary.read_text(encoding="utf-8"))["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return names if all(isinstance(n, str) for n in names) else None


def earlier_sweep(out_dir: Path, names: list[str], resume: bool, overwrite: bool) -> list[str]:
    """Check the sweep already in ``out_dir`` (its sweep.json) against this one; returns the
    earlier members this sweep does not list, whose run files ``overwrite`` removes. Why: a
    second sweep of another spec into the folder once replaced sweep.json, and the earlier
    sweep's record was lost."""
    summary = out_dir / SUMMARY
    if summary.is_dir():
        raise SdmvaeError(f"{summary} is a directory; the sweep's summary cannot be written there")
    if not summary.exists():
        return []
    if not (resume or overwrite):
        raise SdmvaeError(
            f"{summary} already exists: {out_dir} holds a sweep; continue it with --resume (the same spec), "
            "replace it with --overwrite, or choose another --out"
        )
    earlier = _recorded_members(summary)
    if overwrite:
        return [n for n in earlier or [] if n not in set(names) and plain_name(n) and n not in SWEEP_FILES]
    if earlier is None:
        raise SdmvaeError(
            f"--resume: {summary} is not a sweep summary; replace the sweep with --overwrite, "
            "or move the file away to resume from the member folders"
        )
    added, gone = [n for n in names if n not in set(earlier)], [n for n in earlier if n not in set(names)]
    if added or gone:
        what = "; ".join(
            f"{verb} {len(ns)} member(s) ({', '.join(map(repr, ns[:3]))}{', ...' if len(ns) > 3 else ''})"
            for verb, ns in (("adds", added), ("lacks", gone))
            if ns
        )
        raise SdmvaeError(
            f"--resume: {out_dir} holds another sweep: this spec {what}; resume with the spec it was started with, "
            "replace the sweep with --overwrite, or choose another --out"
        )
    return []


def remove_members(out_dir: Path, names: list[str]) -> None:
    """``overwrite``: the earlier sweep's members this sweep does not train lose their run files
    (as `train --overwrite` removes them); a folder left empty goes, anything else stays."""
    for name in names:
        run_dir = out_dir / name
        if run_dir.is_dir() and not run_dir.is_symlink():
            claim_folder(run_dir)  # a `train --resume` of that member in another process: refused, not emptied
            clear_run_dir(run_dir)
            try:
                run_dir.rmdir()
            except OSError:  # it holds files of the user's: kept
                pass


def sweep_summary(
    members: list[Member], specs: list[RunSpec], wall: float, groups: list[int], interrupted: bool, prepared_dir, spec_path
) -> dict:
    by_name = {m.name: m for m in members}
    rows = []
    frames = 0.0
    for s in specs:
        m = by_name.get(s.name)
        if m is None:
            rows.append({"name": s.name, "run_dir": str(s.run_dir), "status": "interrupted" if interrupted else "not run"})
            continue
        frames += sum(h["frames_per_s"] * h["seconds"] for h in m.history if h["epoch"] >= m.first_epoch)  # this process's
        rows.append(
            {
                "name": m.name,
                "run_dir": str(m.run_dir),
                "status": m.status,
                "message": m.message,
                "epochs": len(m.history),
                "best_epoch": m.best_epoch,
                "best_val": m.best_val,
                "engine": m.history[-1].get("engine") if m.history else None,
                "checkpoint": str(m.run_dir / "best.pt") if m.best_epoch >= 0 else None,
            }
        )
    return {
        "prepared_dir": str(Path(prepared_dir).resolve()),
        "spec": str(Path(spec_path).resolve()),
        "members": rows,
        "stacks": groups,
        "wall_seconds": round(wall, 2),
        "interrupted": interrupted,
        "member_frames_per_s": round(frames / wall, 1) if wall > 0 else None,
    }
