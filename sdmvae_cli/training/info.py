"""What a checkpoint holds, in one document (`sdmvae info`), so nobody has to call torch.load.

Why here (training): a checkpoint is the record of a training run. Its configs, options, history
and data fingerprint are read as stored (:func:`~sdmvae_cli.nets.checkpoint.read_checkpoint`,
which also resolves run folders and released names); the validation losses are the ones
model selection reads (:func:`~sdmvae_cli.training.selection.validation_record`); the prepared
folder it was trained on is read through :mod:`sdmvae_cli.data.prepared`, only to say what it
holds now (it may be gone, or re-prepared since: ``matches`` says whether it is still the data).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import SPLITS
from sdmvae_cli.data.frames import open_frames
from sdmvae_cli.data.prepared import fingerprint_aliases, load_prepare_info
from sdmvae_cli.nets import REGISTRY, ModelConfig
from sdmvae_cli.nets.checkpoint import checkpoint_file, read_checkpoint_file
from sdmvae_cli.nets.released import is_released
from sdmvae_cli.training.selection import validation_record


def checkpoint_info(name: str | os.PathLike) -> dict[str, Any]:
    """The description of the checkpoint a file, run folder or released name names (JSON-able).

    ``epoch`` is the epoch whose weights the file holds; ``epochs_trained`` counts the run's
    epochs, from the ``last.pt`` beside a ``best.pt`` when there is one (a best.pt is written at
    its best epoch and knows nothing of the epochs after it); ``best_validation`` is the
    validation record of ``best_epoch``."""
    path = checkpoint_file(name)
    data = read_checkpoint_file(path)
    cfg = data["config"]
    history = data.get("history") or []
    best_epoch = data.get("best_epoch", data.get("epoch"))
    run_history = _run_history(path, data) or history
    return {
        "path": str(path.resolve()),
        "released": path.stem if is_released(path) else None,
        "format": data["format"],
        "format_version": data["format_version"],
        "package_version": data.get("package_version"),
        "model": cfg["model"],
        **_family(cfg["model"]),
        "parameters": sum(int(v.numel()) for v in data["model_state"].values()),
        "stft": cfg["stft"],
        "train": cfg.get("train") or {},
        "seed": cfg.get("seed"),
        "resumable": "optimizer_state" in data,
        "epoch": data.get("epoch"),
        "epochs_trained": len(run_history),
        "best_epoch": best_epoch,
        "best_val": data.get("best_val"),
        "best_validation": validation_record({**data, "epoch": best_epoch}),
        "engine": next((h["engine"] for h in reversed(run_history) if h.get("engine")), None),
        "exported_from": data.get("exported_from"),
        "chosen_by": data.get("chosen_by"),
        "data": data_info(data.get("data_fingerprint"), data.get("prepared_dir")),
    }


def _family(model: dict[str, Any]) -> dict[str, Any]:
    """The family's label (``SDM-VAE (DCT)``) and the options it reads (``OPTIONS``; the
    config stores every field, most at defaults the family ignores)."""
    cls = REGISTRY.get(model.get("model"))
    if cls is None:
        return {"family": None, "model_options": model}
    try:
        cfg = ModelConfig.from_dict(model)
        label, reads = cls.family_label(cfg), cls.reads(cfg)
    except (SdmvaeError, TypeError, ValueError):
        label, reads = cls.LABEL or model.get("model"), cls.OPTIONS
    return {"family": label, "model_options": {k: model[k] for k in reads if k in model}}


def _run_history(path: Path, data: dict[str, Any]) -> list[dict] | None:
    """The history of the ``last.pt`` beside a ``best.pt`` of the same run (same config), else None."""
    last = path.with_name("last.pt")
    if path.name != "best.pt" or not last.is_file():
        return None
    try:
        other = read_checkpoint_file(last)
    except SdmvaeError:
        return None
    return other.get("history") if other["config"] == data["config"] else None


def data_info(fingerprint: str | None, prepared_dir: str | None) -> dict[str, Any]:
    """The checkpoint's data identity, and what its prepared folder holds now, when it exists:
    ``matches`` (the folder still holds these frames, possibly re-keyed since), per split its
    sizes from prepare.json (speakers, utterances, frames, skipped files), or the frame counts
    of its frames.npy where prepare.json has none (a synthetic preparation)."""
    out: dict[str, Any] = {"fingerprint": fingerprint, "prepared_dir": prepared_dir, "prepared_exists": False}
    if not prepared_dir or not Path(prepared_dir).is_dir():
        return out
    try:
        info = load_prepare_info(prepared_dir)
    except SdmvaeError as exc:
        return out | {"prepared_error": str(exc)}
    out.update(
        prepared_exists=True,
        matches=fingerprint in fingerprint_aliases(info),
        prepared_fingerprint=info.get("fingerprint"),
        corpus_dir=info.get("corpus_dir"),
        splits=_split_sizes(Path(prepared_dir), info),
    )
    return out


def _split_sizes(prepared_dir: Path, info: dict[str, Any]) -> dict[str, dict[str, int]]:
    recorded = info.get("splits")
    if isinstance(recorded, dict):
        return {
            name: {
                k: (len(v) if isinstance(v, list) else v)
                for k, v in s.items()
                if k in ("speakers", "utterances", "frames", "skipped")
            }
            for name, s in recorded.items()
            if isinstance(s, dict)
        }
    sizes = {}
    for name in SPLITS:
        try:
            sizes[name] = {"frames": int(open_frames(prepared_dir, name).shape[0])}
        except SdmvaeError:
            continue
    return sizes
