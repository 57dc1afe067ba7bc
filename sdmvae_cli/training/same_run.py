"""``--resume`` continues a run as it was started: the options in its ``config.json`` decide,
not the command line or the spec of today. A resume that gives other model or training options
is refused rather than silently ignored (the run would be labelled with options it never used).
Only ``epochs`` (raise the cap of a run that reached it while still improving) and how to run
(the device, compile, CUDA graphs) may change. Shared by ``train --resume`` and ``sweep --resume``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.core.flags import flag_of
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.training.options import CHANGED_DEFAULTS, RESUME_FALLBACKS, TrainOptions

#: what a resume may change: how long it runs, and where and how (not what it computes)
MAY_CHANGE = ("epochs", "device", "cuda_graph", "compile")


def resumed_values(saved: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and training options a resume of ``saved`` (a config.json) continues with:
    the model rebuilt as the checkpoint is (defaults for fields an older sdmvae did not write),
    the training options with :data:`RESUME_FALLBACKS` for those it predates."""
    return ModelConfig.from_dict(saved["model"]).to_dict(), {**RESUME_FALLBACKS, **saved["train"]}


def changed_options(
    model: dict, train: dict, cfg: ModelConfig, opts: TrainOptions, fields: Collection[str] | None = None
) -> list[str]:
    """The fields of ``cfg``/``opts`` whose values differ from those a resume uses (``model`` and
    ``train``: :func:`resumed_values` of the run's config.json). ``fields`` None (a spec, every
    option of it): an option whose default changed since the run started
    (training.options.CHANGED_DEFAULTS), left at today's default, keeps the run's value.
    ``fields`` given (options the user typed): each is compared, without that allowance."""
    default = TrainOptions()

    def differs(k: str, v: Any, run: dict) -> bool:
        if fields is not None:
            return k in fields and k in run and run[k] != v
        legacy = k in CHANGED_DEFAULTS and run.get(k) == CHANGED_DEFAULTS[k] and v == getattr(default, k)
        return k in run and run[k] != v and not legacy

    out = [k for k, v in cfg.to_dict().items() if differs(k, v, model)]
    return out + [k for k, v in opts.to_dict().items() if k not in MAY_CHANGE and differs(k, v, train)]


def check_same_run(
    run_dir: Path, cfg: ModelConfig, opts: TrainOptions, fields: Collection[str] | None = None, source: str = "the spec"
) -> None:
    """Refuse a resume of ``run_dir`` whose options (``fields`` of them when given: those the
    user set) differ from the run's; ``source`` names where they came from in the message.
    Without a readable config.json the checkpoint's own checks decide."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        model, train = resumed_values(saved)
        diff = changed_options(model, train, cfg, opts, fields)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SdmvaeError):
        return
    if diff:
        k = diff[0]
        was, now = (model[k], getattr(cfg, k)) if k in model else (train[k], getattr(opts, k))
        started = f"{flag_of(k)} {was!r}" if fields is not None else f"{k}={was!r}"  # as the user spelled it
        raise SdmvaeError(
            f"--resume: {run_dir} was started with {started}, {source} now gives {now!r} "
            f"({len(diff)} option(s) differ: {', '.join(map(flag_of if fields is not None else str, diff))}); "
            f"resume with the options it was started with (only {', '.join(flag_of(f) for f in MAY_CHANGE)} "
            "may change), or train the new options into another --out"
        )
