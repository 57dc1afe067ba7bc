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

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdmvae_cli import __version__
from sdmvae_cli.atomic import atomic_path
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.stft import StftConfig
from sdmvae_cli.trainopts import STOP_COLUMNS, UNIT_WEIGHT_TERMS, stop_on_of

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
    (else last.pt), or a released model's name (``vae-m64``, :mod:`sdmvae_cli.released`)."""
    from sdmvae_cli.released import resolve_model

    path = resolve_model(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise SdmvaeError(f"{path}: a directory with no best.pt or last.pt")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = checkpoint_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings: the error says it all
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).strip()
        if "GLOBAL" in text or "Unsupported global" in text:
            raise SdmvaeError(f"{path}: refused: the file holds Python objects that could run code when loaded "
                              "(an sdmvae checkpoint holds only tensors and plain values)") from None
        if "Weights only load failed" in text:
            raise SdmvaeError(f"{path}: not a readable sdmvae checkpoint (not a PyTorch tensor file, or damaged)") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise SdmvaeError(f"{path}: not a readable sdmvae checkpoint ({first[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or any(k not in data for k in REQUIRED):
        raise SdmvaeError(f"{path}: not an sdmvae checkpoint (missing format markers or model state)")
    if not isinstance(data["format_version"], int) or data["format_version"] > FORMAT_VERSION:
        raise SdmvaeError(f"{path}: checkpoint format {data['format_version']!r} is newer than this sdmvae supports ({FORMAT_VERSION})")
    cfg = data["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("stft"), dict):
        raise SdmvaeError(f"{path}: the checkpoint has no model or STFT config; it cannot rebuild its model")
    if not isinstance(data["model_state"], dict) or not all(isinstance(v, torch.Tensor) for v in data["model_state"].values()):
        raise SdmvaeError(f"{path}: the checkpoint's model state is not a dict of tensors")
    history = data.get("history") or []
    if not isinstance(cfg.get("train") or {}, dict) or not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
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
        return (f"LoadedModel({arch}, latent={c.latent}, hidden={c.hidden}, {n:,} parameters, "
                f"{self.stft.sample_rate} Hz, epoch={epoch}, device={dev}, path={self.path!r})")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", expect_model: str | None = None) -> LoadedModel:
    """Rebuild a model from a checkpoint file alone (architecture from the stored config).

    ``path``: a file, a run directory or a released model's name (``"vae-m64"``)."""
    path = checkpoint_file(path)
    data = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(data["config"]["model"])
        stft = StftConfig.from_dict(data["config"]["stft"])
    except SdmvaeError as exc:
        raise SdmvaeError(f"{path}: bad config in the checkpoint ({exc})") from None
    except (TypeError, ValueError) as exc:
        raise SdmvaeError(f"{path}: bad config in the checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if expect_model is not None and cfg.model != expect_model:
        raise SdmvaeError(f"{path}: checkpoint is a {cfg.model!r} model, expected {expect_model!r}")
    try:
        model = build_model(cfg)
    except SdmvaeError as exc:
        raise SdmvaeError(f"{path}: the stored model config is invalid ({exc})") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SdmvaeError(f"{path}: the stored model config is invalid ({str(exc).splitlines()[0][:160]})") from None
    if cfg.n_bins != stft.n_bins:
        raise SdmvaeError(f"{path}: the model expects {cfg.n_bins} frequency bins but its STFT config gives {stft.n_bins}")
    state = dict(data["model_state"])
    if cfg.model == "vsc":
        state.pop("c", None)  # format 1 stored VSC's c schedule as a buffer; it is computed from the epoch now
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SdmvaeError(f"{path}: weights do not fit a {cfg.model!r} model with the stored config ({str(exc).splitlines()[0][:160]})") from None
    if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
        raise SdmvaeError(f"{path}: the checkpoint's weights contain NaN or inf")
    model.to(device).eval()
    return LoadedModel(model, cfg, stft, data, str(path))


#: loss weights that change what a validation loss measures (not the model it is a bound for)
OBJECTIVE_WEIGHTS = ("beta", "beta2", "coherence")


@dataclass
class Choice:
    """The outcome of :func:`best_by_validation`: the winner, every candidate's loss, and the rule."""

    best: Path
    losses: dict[str, float]
    criterion: str

    def record(self) -> dict[str, Any]:
        return {"rule": f"lowest {self.criterion}", "validation_losses": self.losses, "chosen": str(self.best)}


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
        raise SdmvaeError("the candidates were trained on different prepared data (data fingerprints differ): "
                          "their validation losses are not comparable")
    models = [d["config"].get("model", {}) for d in datas]
    unit = len({tuple(m.get(w) for w in OBJECTIVE_WEIGHTS) for m in models}) > 1
    if unit and any(m.get("model") == "threshold" for m in models):
        raise SdmvaeError("thresholded candidates with different loss weights (beta, beta2): their validation losses "
                          "are not comparable; choose among runs of one weighting")
    stops = {stop_on_of(d["config"].get("train")) for d in datas}
    stop = next(iter(stops))
    if len(stops) > 1 or (unit and stop not in UNIT_WEIGHT_TERMS):
        raise SdmvaeError(f"the candidates were stopped on different validation statistics ({', '.join(sorted(stops))}) or on the "
                          "median with different loss weights: their validation losses are not comparable")
    losses = {str(f): _validation_loss(f, d, UNIT_WEIGHT_TERMS[stop] if unit else (STOP_COLUMNS[stop],)) for f, d in zip(files, datas)}
    best = min(files, key=lambda f: losses[str(f)])
    crit = (f"validation IS reconstruction + KL at unit weights, {stop} statistic (the candidates' beta/coherence differ)" if unit
            else f"{stop} validation statistic (the runs' early-stopping statistic)")
    return Choice(best, losses, crit)


def _current_fingerprint(data: dict[str, Any]) -> str | None:
    """The checkpoint's data fingerprint, mapped to its prepared folder's current one when the
    folder was re-keyed since (``previous_fingerprints``): runs stopped before a re-keying and
    runs resumed after it are runs on the same data."""
    from sdmvae_cli.prepare import current_fingerprint

    return current_fingerprint(data.get("data_fingerprint"), data.get("prepared_dir"))


def validation_record(data: dict[str, Any]) -> dict[str, Any] | None:
    """The validation losses of the epoch whose weights a checkpoint holds (None when its
    history does not have them): what the run was selected by, for tables beside test scores."""
    rec = _epoch_record(data)
    if rec is None or "val_total" not in rec:
        return None
    stop_on = stop_on_of((data.get("config") or {}).get("train"))
    return {"epoch": rec["epoch"], "total": rec["val_total"], "median": rec.get("val_median"),
            "posterior_mean": rec.get("val_pm_total"), "stop_on": stop_on, "statistic": rec.get(STOP_COLUMNS.get(stop_on, ""))}


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
    from sdmvae_cli.outputs import check_file_destination

    check_file_destination(dst, inputs=inputs, overwrite=overwrite)
    if Path(dst).is_file() and _is_training_checkpoint(Path(dst)):
        raise SdmvaeError(f"{dst} is a training checkpoint (resumable); export never replaces one "
                          "(was the destination forgotten after several checkpoints?)")


def _is_training_checkpoint(path: Path) -> bool:
    try:
        return "optimizer_state" in read_checkpoint(path)
    except SdmvaeError:
        return False  # not a checkpoint at all: the usual --overwrite rule decides


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False,
                      choice: Choice | None = None, inputs: list[Path] | None = None) -> dict[str, Any]:
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
    keep["exported_from"] = str(src_file.name) + (f" (exported from {data['exported_from']})" if data.get("exported_from") else "")
    if choice is not None:
        keep["chosen_by"] = choice.record() | ({"earlier": data["chosen_by"]} if data.get("chosen_by") else {})
    save_checkpoint(dst, keep)
    return keep
