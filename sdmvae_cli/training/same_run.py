"""``--resume`` continues a run as it was started: the options in its ``config.json`` decide,
not the command line or the spec of today. A resume that gives other model or training options
is refused rather than silently ignored (the run would be labelled with options it never used).
Only ``epochs`` (raise the cap of a run that reached it while still improving) and the device
may change. Shared by ``train --resume`` and ``sweep --resume``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.training.options import CHANGED_DEFAULTS, TrainOptions

#: what a resume may change: how long it runs, and where
MAY_CHANGE = ("epochs", "device")


def changed_options(saved: dict, cfg: ModelConfig, opts: TrainOptions, fields: Collection[str] | None = None) -> list[str]:
    """The fields of ``cfg``/``opts`` (only those in ``fields`` when given) whose values differ
    from the run's ``config.json`` (``saved``). An option whose default changed since the run
    started (training.options.CHANGED_DEFAULTS), left at today's default, keeps the run's value."""
    model, train = saved["model"], saved["train"]
    default = TrainOptions()

    def asked(k: str) -> bool:
        return fields is None or k in fields

    differs = [k for k, v in cfg.to_dict().items() if asked(k) and k in model and model[k] != v]
    differs += [
        k
        for k, v in opts.to_dict().items()
        if asked(k)
        and k in train
        and k not in MAY_CHANGE
        and train[k] != v
        and not (k in CHANGED_DEFAULTS and train[k] == CHANGED_DEFAULTS[k] and v == getattr(default, k))
    ]
    return differs


def check_same_run(
    run_dir: Path, cfg: ModelConfig, opts: TrainOptions, fields: Collection[str] | None = None, source: str = "the spec"
) -> None:
    """Refuse a resume of ``run_dir`` whose options (``fields`` of them when given: those the
    user set) differ from the run's; ``source`` names where they came from in the message.
    Without a readable config.json the checkpoint's own checks decide."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        differs = changed_options(saved, cfg, opts, fields)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if differs:
        k = differs[0]
        was = saved["model"][k] if k in saved["model"] else saved["train"][k]
        now = getattr(cfg, k) if k in saved["model"] else getattr(opts, k)
        raise SdmvaeError(
            f"--resume: {run_dir.name} was started with {k}={was!r}, {source} now gives {now!r} "
            f"({len(differs)} option(s) differ: {', '.join(differs)}); resume with the options it was started with "
            f"(only {' and '.join(MAY_CHANGE)} may change), or train the new options into another --out"
        )
