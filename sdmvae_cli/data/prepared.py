"""THE reader of a prepared folder (``prepare.json``, the split manifests, the data
fingerprint), for everything downstream of ``sdmvae prepare``: training, checkpoints, tables,
reports and evaluation read prepared data through here, never through the prepare stage."""

from __future__ import annotations

import json
from pathlib import Path

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import SPLITS


def load_prepare_info(prepared_dir: str | Path) -> dict:
    """Read ``prepare.json``, with one-line errors when the directory is not a prepared set."""
    p = Path(prepared_dir)
    if not p.is_dir():
        raise SdmvaeError(f"prepared directory {p} does not exist (run `sdmvae prepare` first)")
    f = p / "prepare.json"
    if not f.exists():
        raise SdmvaeError(
            f"{p}: no prepare.json; not a prepared directory or preparation was interrupted (re-run `sdmvae prepare`)"
        )
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SdmvaeError(f"{f}: corrupt ({type(exc).__name__}); re-run `sdmvae prepare`") from None
    if not isinstance(info, dict) or not isinstance(info.get("stft"), dict):
        raise SdmvaeError(f"{f}: not a prepare.json written by `sdmvae prepare` (no STFT config); re-run it")
    try:
        StftConfig.from_dict(info["stft"])
    except (TypeError, ValueError, SdmvaeError) as exc:
        raise SdmvaeError(f"{f}: bad STFT config ({exc})") from None
    return info


def read_manifest(prepared_dir: str | Path, split: str) -> list[dict]:
    f = Path(prepared_dir) / split / "manifest.jsonl"
    if not f.exists():
        raise SdmvaeError(f"{prepared_dir}: split {split!r} has no manifest (expected one of {', '.join(SPLITS)})")
    rows = []
    for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SdmvaeError(
                f"{f}: line {n} is not JSON; the preparation is corrupt (re-run `sdmvae prepare --force`)"
            ) from None
        if not isinstance(row, dict) or not {"id", "path", "frame_offset", "n_frames"} <= set(row):
            raise SdmvaeError(f"{f}: line {n} lacks id/path/frame_offset/n_frames; re-run `sdmvae prepare --force`")
        rows.append(row)
    return rows


def current_fingerprint(fingerprint: str | None, prepared_dir: str | Path | None) -> str | None:
    """``fingerprint`` as its prepared folder calls it now: the folder's current fingerprint if
    ``fingerprint`` is one of its aliases (re-keyed since), else unchanged (also when the folder
    is gone or on another machine). Lets checkpoints and summaries made before and after a
    re-keying count as the same data."""
    if not prepared_dir:
        return fingerprint
    try:
        info = json.loads((Path(prepared_dir) / "prepare.json").read_text())
    except (OSError, ValueError):
        return fingerprint
    if not isinstance(info, dict) or "fingerprint" not in info:
        return fingerprint
    return info["fingerprint"] if fingerprint in fingerprint_aliases(info) else fingerprint


def fingerprint_aliases(info: dict) -> set:
    """Every fingerprint the frames of a ``prepare.json`` (its content, ``info``) have had: the
    current one and its ``previous_fingerprints``."""
    return {info.get("fingerprint"), *(f for f in info.get("previous_fingerprints", []) if isinstance(f, str))}
