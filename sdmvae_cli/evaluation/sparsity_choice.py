"""Choosing a sparse setting at a sparsity: the rule for a hyper-parameter that trades quality
for sparsity (the thresholded model's lambda), where the validation loss alone is degenerate.

Why the plain release rule fails there: the validation loss of the thresholded model falls as
lambda falls (-1556 / -1485 / -1359 / -996 nats per frame for lambda 0.05 / 0.1 / 0.2 / 0.5): its
base KL does not depend on lambda and a smaller threshold loses less of the signal, so the
lowest loss always picks the smallest lambda, the least sparse model. A sparse baseline is judged
by its quality **at a sparsity** (the paper's Table 1 reports PESQ beside Hoyer), so the rule is:

    among the candidates whose code reaches a validation Hoyer of at least T, the lowest
    validation loss (the release rule of :func:`sdmvae_cli.training.selection.best_by_validation`),

with T a number or another model's own validation Hoyer (the SDM-VAE the baseline is compared
with: the baseline is then chosen at that model's sparsity). Because the loss falls and the
Hoyer falls with lambda, this picks the smallest lambda that is as sparse as T: the best
quality the family offers at that sparsity. Everything is measured on the validation split.

Validation Hoyer (eq. 12): of the code each model resynthesises from (its ``code_of``), per frame
over every prepared validation frame of an utterance, mean per utterance, then over utterances
(the paper's aggregation, on the frames as prepared).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.data.frames import open_frames
from sdmvae_cli.data.prepared import current_fingerprint, load_prepare_info, read_manifest
from sdmvae_cli.evaluation.metrics import hoyer
from sdmvae_cli.nets.checkpoint import checkpoint_file, load_model, read_checkpoint
from sdmvae_cli.training.selection import Choice, best_by_validation


def validation_hoyer(model: str | os.PathLike, prepared_dir: str | os.PathLike | None = None) -> float:
    """The mean per-utterance Hoyer of ``model``'s code on the validation split of
    ``prepared_dir`` (default: the preparation the checkpoint records), which must be the data
    it was trained on (same fingerprint): a target model's Hoyer is measured on its own
    validation split, so it must share the candidates' data to be their yardstick."""
    lm = load_model(model)  # the file read once: its weights and its record
    f, data = lm.path, lm.checkpoint
    prepared = Path(prepared_dir or data.get("prepared_dir") or "")
    if prepared_dir is not None and not (prepared / "prepare.json").exists():
        raise SdmvaeError(f"--data {prepared}: not a prepared folder (no prepare.json)")
    if not (prepared / "prepare.json").exists():
        raise SdmvaeError(f"{f}: its prepared data ({prepared or 'not recorded'}) is not here; give it with --data")
    info = load_prepare_info(prepared)
    if current_fingerprint(data.get("data_fingerprint"), prepared) != info.get("fingerprint"):
        raise SdmvaeError(f"{f} was not trained on {prepared} (data fingerprints differ): its validation split is not theirs")
    model_ = lm.model.eval()
    frames = open_frames(prepared, "validation")
    per_file = []
    with torch.no_grad():
        for row in read_manifest(prepared, "validation"):
            lo, n = int(row["frame_offset"]), int(row["n_frames"])
            if n > 0:
                code = model_.code_of(torch.from_numpy(np.ascontiguousarray(frames[lo : lo + n])))
                per_file.append(float(hoyer(code.numpy()).mean()))
    if not per_file:
        raise SdmvaeError(f"{prepared}: the validation split lists no utterance")
    return float(np.mean(per_file))


def target_hoyer(target: str, prepared_dir: str | os.PathLike | None = None) -> tuple[float, str]:
    """``--at-hoyer``: a number in [0, 1], or a model (file, run folder, released name) whose own
    validation Hoyer is the target; returns the value and how it was obtained."""
    if not target.strip():
        raise UsageError("--at-hoyer must be a number in [0, 1] or a model, got ''")
    try:
        value = float(target)
    except ValueError:
        try:
            return validation_hoyer(target, prepared_dir), f"the validation Hoyer of {target}"
        except SdmvaeError as exc:
            raise SdmvaeError(f"--at-hoyer {target}: {exc}") from None
    if not 0.0 <= value <= 1.0:  # NaN too
        raise UsageError(f"--at-hoyer must be a number in [0, 1] or a model, got {target}")
    return value, "given"


def candidates_data(candidates: list[str | os.PathLike]) -> Path | None:
    """The prepared data the first candidate records: where a target model's Hoyer is measured,
    so that a model trained on other data is refused as the yardstick (fingerprints differ)."""
    recorded = read_checkpoint(checkpoint_file(candidates[0])).get("prepared_dir")
    return Path(recorded) if recorded else None


def best_at_sparsity(
    candidates: list[str | os.PathLike], target: float, source: str = "given", prepared_dir: str | os.PathLike | None = None
) -> Choice:
    """The candidate of lowest validation loss among those with a validation Hoyer >= ``target``
    (module docstring); every candidate's loss and Hoyer go into the record. None reaching it:
    an error listing theirs (lower the target, or train sparser settings)."""
    files = list(dict.fromkeys(checkpoint_file(c) for c in candidates))
    ranked = best_by_validation(files)  # comparable losses, or its one-line refusal
    sparsity = {str(f): validation_hoyer(f, prepared_dir) for f in files}
    eligible = [f for f in files if sparsity[str(f)] >= target]
    if not eligible:
        have = ", ".join(f"{Path(p).parent.name or p} {h:.3f}" for p, h in sparsity.items())
        raise SdmvaeError(f"no candidate reaches a validation Hoyer of {target:.3f} (theirs: {have})")
    best = min(eligible, key=lambda f: ranked.losses[str(f)])
    return Choice(
        best,
        ranked.losses,
        f"{ranked.criterion}, among the candidates with a validation Hoyer >= {target:.3f} ({source})",
        sparsity=sparsity,
        target=target,
    )
