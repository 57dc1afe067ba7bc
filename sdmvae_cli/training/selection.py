"""Choosing a run's checkpoint by validation, and exporting it as a release copy.

Which of several seeds or settings to release is a training decision, made on the validation
split (never on test): :func:`best_by_validation` ranks checkpoints by the validation statistic
of the epoch whose weights each holds, :func:`export_checkpoint` writes the release copy (no
optimizer or RNG state) with the record of how it won, and :func:`validation_record` gives the
losses a run was selected by, for tables beside its test scores (`sdmvae evaluate`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.outputs import check_file_destination
from sdmvae_cli.data.prepared import current_fingerprint
from sdmvae_cli.nets import REGISTRY, ModelConfig
from sdmvae_cli.nets.checkpoint import checkpoint_file, load_model, read_checkpoint, save_checkpoint
from sdmvae_cli.training.options import STOP_COLUMNS, UNIT_WEIGHT_TERMS, stop_on_of

#: loss weights that change what a validation loss measures (not the model it is a bound for)
OBJECTIVE_WEIGHTS = ("beta", "beta2", "coherence")


@dataclass
class Choice:
    """The outcome of :func:`best_by_validation`: the winner, every candidate's loss, and the rule."""

    best: Path
    losses: dict[str, float]
    criterion: str
    #: chosen at a sparsity (evaluation.sparsity_choice): each candidate's validation Hoyer, the target
    sparsity: dict[str, float] | None = None
    target: float | None = None

    def record(self) -> dict[str, Any]:
        at = {} if self.sparsity is None else {"validation_hoyer": self.sparsity, "target_hoyer": self.target}
        return {"rule": f"lowest {self.criterion}", "validation_losses": self.losses, **at, "chosen": str(self.best)}


def best_by_validation(candidates: list[str | os.PathLike]) -> Choice:
    """The candidate of lowest validation loss (the release rule: seeds and settings are chosen
    on validation, never on test), among runs of the same prepared data.

    The loss is the one of the epoch whose weights the file holds (a last.pt is not ranked by
    its best epoch). When the candidates share their loss weights (beta, beta2, coherence) it is
    the training objective on validation; when they do not, a beta-weighted total is no common
    yardstick, so they are ranked by the unit-weight bound IS reconstruction + KL (the
    thresholded model stores its KL already weighted: refused). Other data: refused."""
    files = list(dict.fromkeys(checkpoint_file(c) for c in candidates))
    datas = [read_checkpoint(f) for f in files]
    if len({_current_fingerprint(d) for d in datas}) > 1:
        raise SdmvaeError(
            "the candidates were trained on different prepared data (data fingerprints differ): "
            "their validation losses are not comparable"
        )
    models = [d["config"].get("model", {}) for d in datas]
    _check_same_validation_set(models)
    unit = len({tuple(m.get(w) for w in OBJECTIVE_WEIGHTS) for m in models}) > 1
    if unit and any(getattr(REGISTRY.get(m.get("model")), "LOGS_WEIGHTED_KL", False) for m in models):
        raise SdmvaeError(
            "thresholded candidates with different loss weights (beta, beta2): their validation losses "
            "are not comparable; choose among runs of one weighting"
        )
    stops = {stop_on_of(d["config"].get("train")) for d in datas}
    stop = next(iter(stops))
    if len(stops) > 1 or (unit and stop not in UNIT_WEIGHT_TERMS):
        raise SdmvaeError(
            f"the candidates were stopped on different validation statistics ({', '.join(sorted(stops))}) or on the "
            "median with different loss weights: their validation losses are not comparable"
        )
    losses = {
        str(f): _validation_loss(f, d, UNIT_WEIGHT_TERMS[stop] if unit else (STOP_COLUMNS[stop],)) for f, d in zip(files, datas)
    }
    best = min(files, key=lambda f: losses[str(f)])
    crit = (
        f"validation IS reconstruction + KL at unit weights, {stop} statistic (the candidates' beta/coherence differ)"
        if unit
        else f"{stop} validation statistic (the runs' early-stopping statistic)"
    )
    return Choice(best, losses, crit)


def _check_same_validation_set(models: list[dict[str, Any]]) -> None:
    """A sequence model's validation figures average over whole tiles, a frame-wise model's over
    every frame: no common loss to rank them by (the family's ``validation_set`` hook)."""
    sets = set()
    for m in models:
        cls = REGISTRY.get(m.get("model")) if isinstance(m.get("model"), str) else None
        try:
            sets.add(cls.validation_set(ModelConfig.from_dict(m)) if cls is not None else str(m.get("model")))
        except SdmvaeError:  # a damaged config: load_model refuses it later, with its own line
            sets.add(str(m.get("model")))
    if len(sets) > 1:
        raise SdmvaeError(
            f"the candidates validate on different frames ({'; '.join(sorted(map(str, sets)))}): their validation "
            "losses are not comparable"
        )


def _current_fingerprint(data: dict[str, Any]) -> str | None:
    """The checkpoint's data fingerprint, mapped to its prepared folder's current one when the
    folder was re-keyed since (``previous_fingerprints``): runs stopped before a re-keying and
    runs resumed after it are runs on the same data."""
    return current_fingerprint(data.get("data_fingerprint"), data.get("prepared_dir"))


def validation_record(data: dict[str, Any]) -> dict[str, Any] | None:
    """The validation losses of the epoch whose weights a checkpoint holds (None when its
    history does not have them): what the run was selected by, for tables beside test scores."""
    rec = _epoch_record(data)
    if rec is None or "val_total" not in rec:
        return None
    stop_on = stop_on_of((data.get("config") or {}).get("train"))
    return {
        "epoch": rec["epoch"],
        "total": rec["val_total"],
        "median": rec.get("val_median"),
        "posterior_mean": rec.get("val_pm_total"),
        "stop_on": stop_on,
        "statistic": rec.get(STOP_COLUMNS.get(stop_on, "")),
    }


def _epoch_record(data: dict[str, Any]) -> dict[str, Any] | None:
    """The history line of the epoch whose weights the checkpoint holds."""
    return next((h for h in data.get("history") or [] if h.get("epoch") == data.get("epoch")), None)


def _validation_loss(f: Path, data: dict[str, Any], columns: tuple[str, ...]) -> float:
    """The sum of ``columns`` (one statistic, or a unit-weight recon + KL) of the checkpoint's epoch."""
    rec = _epoch_record(data)
    if rec is None or any(c not in rec for c in columns):
        raise SdmvaeError(f"{f}: no validation loss recorded for its epoch; cannot choose by validation")
    vals = [rec[c] for c in columns]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        raise SdmvaeError(f"{f}: its validation loss is {vals[0] if len(vals) == 1 else vals}; cannot choose by validation")
    return float(sum(vals))


def check_export_destination(dst: str | os.PathLike, inputs: list[Path], overwrite: bool) -> None:
    """Never an input, an existing file only with ``overwrite``, and never a training checkpoint
    (resumable), not even with it: `export s0 s1 s2` with the destination forgotten must not
    turn s2 into a release copy."""
    check_file_destination(dst, inputs=inputs, overwrite=overwrite)
    if Path(dst).is_file() and _is_training_checkpoint(Path(dst)):
        raise SdmvaeError(
            f"{dst} is a training checkpoint (resumable); export never replaces one "
            "(was the destination forgotten after several checkpoints?)"
        )


def _is_training_checkpoint(path: Path) -> bool:
    try:
        return "optimizer_state" in read_checkpoint(path)
    except SdmvaeError:
        return False  # not a checkpoint at all: the usual --overwrite rule decides


def export_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    overwrite: bool = False,
    choice: Choice | None = None,
    inputs: list[Path] | None = None,
) -> dict[str, Any]:
    """A release copy: model, config, history and data fingerprint, without optimizer/RNG state.

    About a third of the size of a training checkpoint; it still loads with :func:`load_model`
    (but cannot be resumed). ``dst`` is never the source (a resumable checkpoint would be lost)
    and an existing file is replaced only with ``overwrite``. The copy is checked to load
    before it is written.
    """
    src_file = checkpoint_file(src)
    check_export_destination(dst, [src_file, *(inputs or [])], overwrite)
    load_model(src_file)  # refuse to release a file that does not rebuild its model
    data = read_checkpoint(src_file)
    keep = {k: v for k, v in data.items() if k not in ("optimizer_state", "rng", "format", "format_version", "package_version")}
    # a release of a release keeps the record of where the weights came from and how they won
    keep["exported_from"] = str(src_file.name) + (
        f" (exported from {data['exported_from']})" if data.get("exported_from") else ""
    )
    if choice is not None:
        keep["chosen_by"] = choice.record() | ({"earlier": data["chosen_by"]} if data.get("chosen_by") else {})
    save_checkpoint(dst, keep)
    return keep
