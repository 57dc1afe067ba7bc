"""Self-describing checkpoints: one file holds everything needed to use or resume a model.

Contents (only JSON-able values and tensors, so ``torch.load(weights_only=True)`` works):
format version, package version, the full config (model hyper-parameters, StftConfig,
training options, seed), the model state (dictionary included), optimizer state, epoch,
best validation loss, per-epoch history, RNG states, and the prepared data's fingerprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdmvae_cli import __version__
from sdmvae_cli.atomic import atomic_path
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.stft import StftConfig

FORMAT = "sdmvae-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "config", "model_state")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` gets the format markers added."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **payload}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(data, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SdmvaeError(f"checkpoint {path} does not exist")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise SdmvaeError(f"{path}: a directory with no best.pt or last.pt")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdmvaeError(f"{path}: not a readable sdmvae checkpoint ({first[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or any(k not in data for k in REQUIRED):
        raise SdmvaeError(f"{path}: not an sdmvae checkpoint (missing format markers or model state)")
    if data["format_version"] > FORMAT_VERSION:
        raise SdmvaeError(f"{path}: checkpoint format {data['format_version']} is newer than this sdmvae supports ({FORMAT_VERSION})")
    return data


@dataclass
class LoadedModel:
    model: SpectrogramVAE
    model_config: ModelConfig
    stft: StftConfig
    checkpoint: dict[str, Any]
    path: str


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", expect_model: str | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint file alone (architecture from the stored config)."""
    data = read_checkpoint(path)
    cfg = ModelConfig.from_dict(data["config"]["model"])
    if expect_model is not None and cfg.model != expect_model:
        raise SdmvaeError(f"{path}: checkpoint is a {cfg.model!r} model, expected {expect_model!r}")
    model = build_model(cfg)
    try:
        model.load_state_dict(data["model_state"])
    except RuntimeError as exc:
        raise SdmvaeError(f"{path}: weights do not fit a {cfg.model!r} model with the stored config ({str(exc).splitlines()[0][:160]})") from None
    model.to(device).eval()
    stft = StftConfig.from_dict(data["config"]["stft"])
    return LoadedModel(model, cfg, stft, data, str(path))


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """A release copy: model, config, history and data fingerprint, without optimizer/RNG state.

    About a third of the size of a training checkpoint; it still loads with :func:`load_model`
    (but cannot be resumed).
    """
    data = read_checkpoint(src)
    keep = {k: v for k, v in data.items() if k not in ("optimizer_state", "rng", "format", "format_version", "package_version")}
    keep["exported_from"] = str(Path(src).name)
    save_checkpoint(dst, keep)
    return keep
