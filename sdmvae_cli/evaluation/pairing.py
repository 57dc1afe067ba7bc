"""What `evaluate --ref REF --est EST` pairs: two files, or two folders by relative path.

Kept apart from the scoring (:mod:`sdmvae_cli.evaluation.evaluate`) because `enhance --ref` checks
the same rules before it writes its outputs, and puts its scores where :func:`scores_beside` says.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdmvae_cli.audio.io import AUDIO_SUFFIXES
from sdmvae_cli.core.errors import SdmvaeError, UsageError


def check_ref_est(ref: Path, est: Path, est_is_dir: bool | None = None) -> bool:
    """Whether --ref and --est name two files (True) or two folders (False); a file with a
    folder is a :class:`UsageError`. ``est_is_dir``: what the estimate will be, for a caller
    that checks before writing it (`enhance --ref`); None: look at ``est``, which must exist."""
    if not ref.exists():
        raise SdmvaeError(f"--ref {ref}: no such file or directory")
    if est_is_dir is None:
        if not est.exists():
            raise SdmvaeError(f"--est {est}: no such file or directory")
        est_is_dir = est.is_dir()
    if ref.is_dir() != est_is_dir:
        kinds = ("a folder" if ref.is_dir() else "a file", "a folder" if est_is_dir else "a file")
        raise UsageError(f"--ref is {kinds[0]} but --est is {kinds[1]}: give two files, or two folders paired by relative path")
    return not est_is_dir


def pair_folders(ref_dir: Path, est_dir: Path) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Pairs by relative path (suffix ignored); missing estimates are failures. Two files: one
    pair, named by the reference's stem."""
    if check_ref_est(ref_dir, est_dir):
        return [(ref_dir.stem, str(ref_dir), str(est_dir))], []
    refs = sorted(p for p in ref_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not refs:
        raise SdmvaeError(f"--ref {ref_dir}: no audio files")
    ests = {
        p.relative_to(est_dir).with_suffix("").as_posix(): p
        for p in est_dir.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
    }
    pairs, missing = [], []
    for r in refs:
        rel = r.relative_to(ref_dir).with_suffix("").as_posix()
        if rel in ests:
            pairs.append((rel, str(r), str(ests[rel])))
        else:
            missing.append({"id": rel, "path": str(r), "error": f"no estimate for {rel} under {est_dir}"})
    return pairs, missing


def scores_beside(est: str | Path, is_dir: bool) -> Path:
    """Where `enhance --ref` scores its outputs: ``<OUT>-scores/`` beside the output folder, or
    ``<stem>-scores/`` beside the output file (never inside the outputs: a later run over that
    folder would read the scores' folder as part of it)."""
    p = Path(os.path.abspath(est))
    return p.with_name(f"{p.name if is_dir else p.stem}-scores")
