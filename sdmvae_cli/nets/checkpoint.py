"""Self-describing checkpoints: one file holds everything needed to use or resume a model.

Contents (only JSON-able values and tensors, so ``torch.load(weights_only=True)`` works):
format version, package version, the full config (model hyper-parameters, StftConfig,
training options, seed), the model state (dictionary included), optimizer state, epoch,
best validation loss, per-epoch history, RNG states, and the prepared data's fingerprint.

Safety: files are read with ``weights_only=True``, so a pickle that would run code is refused,
not executed; anything that is not a complete sdmvae checkpoint (truncated, another program's
dict, a config that does not rebuild the stored weights) is one :class:`SdmvaeError` line.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import SdmvaeError, first_line
from sdmvae_cli.core.version import __version__
from sdmvae_cli.nets import ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.nets.released import resolve_model

FORMAT = "sdmvae-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "config", "model_state")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` gets the format markers added."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **payload}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(data, tmp)


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The file a checkpoint argument names: the file itself, a run directory's best.pt
    (else last.pt), or a released model's name (``vae-m64``, :mod:`sdmvae_cli.nets.released`)."""
    path = resolve_model(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise SdmvaeError(f"{path}: a directory with no best.pt or last.pt")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint a file, run directory or released name names, checked (one line if not)."""
    return read_checkpoint_file(checkpoint_file(path))


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint file already resolved (by :func:`checkpoint_file`): a name is resolved once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings: the error says it all
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).strip()
        if "GLOBAL" in text or "Unsupported global" in text:
            raise SdmvaeError(
                f"{path}: refused: the file holds Python objects that could run code when loaded "
                "(an sdmvae checkpoint holds only tensors and plain values)"
            ) from None
        if "Weights only load failed" in text:
            raise SdmvaeError(f"{path}: not a readable sdmvae checkpoint (not a PyTorch tensor file, or damaged)") from None
        raise SdmvaeError(f"{path}: not a readable sdmvae checkpoint ({first_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or any(k not in data for k in REQUIRED):
        raise SdmvaeError(f"{path}: not an sdmvae checkpoint (missing format markers or model state)")
    if not isinstance(data["format_version"], int) or data["format_version"] > FORMAT_VERSION:
        raise SdmvaeError(
            f"{path}: checkpoint format {data['format_version']!r} is newer than this sdmvae supports ({FORMAT_VERSION})"
        )
    cfg = data["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("stft"), dict):
        raise SdmvaeError(f"{path}: the checkpoint has no model or STFT config; it cannot rebuild its model")
    if not isinstance(data["model_state"], dict) or not all(isinstance(v, torch.Tensor) for v in data["model_state"].values()):
        raise SdmvaeError(f"{path}: the checkpoint's model state is not a dict of tensors")
    history = data.get("history") or []
    if (
        not isinstance(cfg.get("train") or {}, dict)
        or not isinstance(history, list)
        or not all(isinstance(h, dict) for h in history)
    ):
        raise SdmvaeError(f"{path}: the checkpoint's training options or history are damaged (not what sdmvae writes)")
    return data


@dataclass
class LoadedModel:
    model: SpectrogramVAE
    model_config: ModelConfig
    stft: StftConfig
    checkpoint: dict[str, Any]
    path: str

    def __repr__(self) -> str:
        """One line (the default dataclass repr would print every weight tensor)."""
        c = self.model_config
        arch = c.model + (f" {c.dictionary} dictionary k={c.k}" if c.model == "sdm" else "")
        n = sum(p.numel() for p in self.model.parameters())
        dev = next(self.model.parameters()).device
        epoch = self.checkpoint.get("epoch")
        return (
            f"LoadedModel({arch}, latent={c.latent}, hidden={c.hidden}, {n:,} parameters, "
            f"{self.stft.sample_rate} Hz, epoch={epoch}, device={dev}, path={self.path!r})"
        )


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", expect_model: str | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint file alone (architecture from the stored config).

    ``path``: a file, a run directory or a released model's name (``"vae-m64"``)."""
    path = checkpoint_file(path)
    data = read_checkpoint_file(path)
    try:
        cfg = ModelConfig.from_dict(data["config"]["model"])
        stft = StftConfig.from_dict(data["config"]["stft"])
    except SdmvaeError as exc:
        raise SdmvaeError(f"{path}: bad config in the checkpoint ({exc})") from None
    except (TypeError, ValueError) as exc:
        raise SdmvaeError(f"{path}: bad config in the checkpoint ({first_line(exc)})") from None
    if expect_model is not None and cfg.model != expect_model:
        raise SdmvaeError(f"{path}: checkpoint is a {cfg.model!r} model, expected {expect_model!r}")
    try:
        model = build_model(cfg)
    except SdmvaeError as exc:
        raise SdmvaeError(f"{path}: the stored model config is invalid ({exc})") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SdmvaeError(f"{path}: the stored model config is invalid ({first_line(exc)})") from None
    if cfg.n_bins != stft.n_bins:
        raise SdmvaeError(f"{path}: the model expects {cfg.n_bins} frequency bins but its STFT config gives {stft.n_bins}")
    state = type(model).upgrade_state(dict(data["model_state"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SdmvaeError(
            f"{path}: weights do not fit a {cfg.model!r} model with the stored config ({first_line(exc)})"
        ) from None
    if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
        raise SdmvaeError(f"{path}: the checkpoint's weights contain NaN or inf")
    model.to(device).eval()
    return LoadedModel(model, cfg, stft, data, str(path))
