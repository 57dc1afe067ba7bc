"""The catalogue of released models (`sdmvae models --released`): each one's index entry and
its architecture, read from the checkpoint itself (the one source of both)."""

from __future__ import annotations

import json
from pathlib import Path

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets.checkpoint import read_checkpoint
from sdmvae_cli.nets.released import released_dir, released_names


def released_models() -> list[dict]:
    """One dict per released checkpoint: name, file, default flag, description, data, scores."""
    d = released_dir()
    try:
        index = json.loads((d / "released.json").read_text())
    except (OSError, ValueError):
        index = {}
    try:
        defaults = json.loads((d / "default.json").read_text())
        default = defaults["default"]
        enhance_default = defaults.get("enhance_default", default)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        default = enhance_default = None
    rows = []
    for name in released_names():
        meta = index.get("models", {}).get(name, {})
        arch, latent = _architecture(d / f"{name}.pt")
        rows.append(
            {
                "name": name,
                "file": str(d / f"{name}.pt"),
                "default": f"{name}.pt" == default,
                "enhance_default": f"{name}.pt" == enhance_default,
                "arch": arch,
                "latent": latent,
                "description": meta.get("description", ""),
                "best_epoch": meta.get("best_epoch"),
                "data": index.get("data", ""),
                "scores": meta.get("scores", {}),
            }
        )
    return rows


def _architecture(path: Path) -> tuple[str | None, int | None]:
    """(arch, m) from the checkpoint's own config, the one source of both (the index's
    descriptions are prose); a damaged file gives (None, None) and is still listed."""
    try:
        model = read_checkpoint(path)["config"]["model"]
    except SdmvaeError:
        return None, None
    return model.get("model"), model.get("latent")
