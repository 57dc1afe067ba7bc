"""`sdmvae sweep`: many configurations and seeds trained at once, in one process.

A spec (JSON, or TOML by suffix) names runs by any ModelConfig / TrainOptions field::

    {"common": {"latent": 64, "epochs": 500},
     "runs": [{"name": "vae-s0", "model": "vae", "seed": 0},
              {"name": "sdm-s0", "model": "sdm", "dictionary": "dct", "k": 64, "seed": 0}],
     "grid": {"name": "vsc-a{alpha}-s{seed}", "model": "vsc", "alpha": [0.05, 0.5], "seed": [0, 1, 2]}}

``grid`` (one dict or a list of dicts) is the cartesian product of its list values (``hidden``,
itself a list, is given as a list of lists there); ``name`` is a format string over the run's
options. Runs that differ only in seed, lr, patience, epochs, stop_on or scalar hyper-parameters share
one stack (:mod:`sdmvae_cli.stack`); each writes ``OUT/<name>/`` exactly as `sdmvae train`.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from sdmvae_cli.atomic import write_json
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig, validate_config
from sdmvae_cli.stack import Member
from sdmvae_cli.trainopts import EpochRecord, TrainOptions

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainOptions)} - {"device"}


def read_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SdmvaeError(f"sweep spec {path} does not exist")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                raise SdmvaeError(f"{path}: TOML specs need Python 3.11 or newer; write the spec as JSON") from None

            return tomllib.loads(path.read_text())
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SdmvaeError(f"{path}: not a valid sweep spec ({str(exc).splitlines()[0][:120]})") from None


#: more runs than this in one spec is refused: a typo in a grid (a list too many) must not
#: exhaust memory expanding it, and no sweep of a tiny network needs more
MAX_RUNS = 10_000


def _expand_grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    keys = [k for k, v in grid.items() if isinstance(v, list) and k != "name"]
    fixed = {k: v for k, v in grid.items() if k not in keys}
    size = math.prod(len(grid[k]) for k in keys)
    if size > MAX_RUNS:  # refused before it is expanded
        raise SdmvaeError(f"a grid of {size:,} runs; a spec holds at most {MAX_RUNS:,}")
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        run = dict(fixed, **dict(zip(keys, combo)))
        out.append(run)
    return out


def _default_name(run: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" if k != "model" else str(v) for k, v in run.items() if k != "name")


def _run_name(template: Any, run: dict[str, Any]) -> str:
    """The run's folder name: ``template`` formatted with the run's options, checked to be one
    plain folder name (its path is printed one per line on stdout: no control characters)."""
    if template is None:
        name = _default_name(run)
    elif not isinstance(template, str):
        raise SdmvaeError(f"a run's name must be a string, got {template!r}"[:200])
    else:
        try:
            name = template.format(**run)
        except KeyError as exc:
            raise SdmvaeError(f"run name {template!r} uses {{{exc.args[0]}}}, which this run does not set") from None
        except (IndexError, ValueError, TypeError, AttributeError) as exc:  # "{}", "{", "{lr[0]}", "{lr.x}"
            raise SdmvaeError(f"run name {template!r} is not a valid format string ({exc})"[:300]) from None
    if (not name or "/" in name or name.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or len(name.encode()) > 255):
        raise SdmvaeError(f"run name {name!r} is empty, too long or not a plain folder name"[:300])
    return name


def _grids(value: Any) -> list[dict[str, Any]]:
    """The spec's ``grid``: one table of options or a list of them."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise SdmvaeError(f"the sweep spec's 'grid' must be a table of options or a list of them, got {value!r}"[:200])
    return items


def expand_spec(spec: dict[str, Any]) -> list[tuple[str, ModelConfig, TrainOptions]]:
    """The runs of a spec as (name, model config, training options), names unique; every
    option checked for its type and range (one clear line naming the run and the option)."""
    if not isinstance(spec, dict) or not ({"runs", "grid"} & set(spec)):
        raise SdmvaeError("a sweep spec needs 'runs' (a list) and/or 'grid' (a dict or list of dicts)")
    unknown_top = set(spec) - {"common", "runs", "grid", "_comment"}
    if unknown_top:
        raise SdmvaeError(f"unknown sweep spec key(s): {', '.join(sorted(unknown_top))}")
    common = spec.get("common", {})
    if not isinstance(common, dict):
        raise SdmvaeError(f"the sweep spec's 'common' must be a table of options, got {common!r}"[:200])
    runs = spec.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise SdmvaeError(f"the sweep spec's 'runs' must be a list of runs (tables of options), got {runs!r}"[:200])
    runs = list(runs)
    for g in _grids(spec.get("grid", [])):
        runs += _expand_grid(g)
        if len(runs) > MAX_RUNS:
            break
    if len(runs) > MAX_RUNS:
        raise SdmvaeError(f"the spec lists more than {MAX_RUNS:,} runs")
    out, seen = [], set()
    for raw in runs:
        run = {**common, **raw}
        name = _run_name(run.pop("name", None), run)
        bad = set(run) - MODEL_FIELDS - TRAIN_FIELDS
        if bad:
            raise SdmvaeError(f"run {name!r}: unknown option(s) {', '.join(sorted(bad))}")
        if name in seen:
            raise SdmvaeError(f"run name {name!r} is repeated")
        seen.add(name)
        try:
            cfg = ModelConfig.from_dict({k: v for k, v in run.items() if k in MODEL_FIELDS})
            opts = TrainOptions.from_dict({k: v for k, v in run.items() if k in TRAIN_FIELDS})
            validate_config(cfg)  # the model's own checks (ranges, dictionary and k, ...)
            opts.validate()
        except (SdmvaeError, TypeError) as exc:
            raise SdmvaeError(f"run {name!r}: {exc}") from None
        out.append((name, cfg, opts))
    if not out:
        raise SdmvaeError("the sweep spec lists no run")
    return out


def split_by_stack(spec_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """One spec per stack of ``spec_path`` (runs that would train stacked), written as
    ``OUT_DIR/<spec stem>.<k>.json`` with every option spelled out; returns their paths.

    Why: a sweep trains its stacks one after another, and a stack of a few members leaves a GPU
    mostly idle; specs split this way train side by side, one process each (under CUDA MPS the
    processes' kernels overlap), with the same numbers (a member's computation does not depend
    on the rest of its sweep). Existing files are refused unless ``overwrite``."""
    from sdmvae_cli.stack import group_key

    spec_path, out_dir = Path(spec_path), Path(out_dir)
    stacks: dict[str, list[dict[str, Any]]] = {}
    for name, cfg, opts in expand_spec(read_spec(spec_path)):
        run = {"name": name, **cfg.to_dict(), **{k: v for k, v in opts.to_dict().items() if k in TRAIN_FIELDS}}
        stacks.setdefault(group_key(cfg, opts), []).append(run)
    paths = [out_dir / f"{spec_path.stem}.{k}.json" for k in range(len(stacks))]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise SdmvaeError(f"{p} already exists; use --overwrite or another --out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, (p, runs) in enumerate(zip(paths, stacks.values())):
        write_json(p, {"_comment": f"stack {k} of {spec_path.name} (sdmvae sweep-stacks)", "runs": runs})
    return paths


def _never_started(run_dir: Path) -> bool:
    """A member folder holding only what is written for every member before the first stack
    trains (config.json): a sweep interrupted before this member's stack ran. --resume starts it."""
    return {p.name for p in run_dir.iterdir()} <= {"config.json"}


def run_sweep(
    prepared_dir: str | Path,
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    epochs: int | None = None,
    resume: bool = False,
    on_epoch: Callable[[Member, EpochRecord], None] | None = None,
    on_done: Callable[[Member], None] | None = None,
) -> dict[str, Any]:
    """Train every run of the spec; returns (and writes) the sweep summary ``OUT/sweep.json``.

    Without ``resume`` an existing run folder is an error (nothing is overwritten); with it,
    runs that have a last.pt continue and the others start. KeyboardInterrupt propagates after
    sweep.json is written (every member keeps its last completed epoch)."""
    from sdmvae_cli.outputs import check_dir_destination
    from sdmvae_cli.train import RunSpec, check_prepared, train_runs

    out_dir = Path(out_dir)
    runs = expand_spec(read_spec(spec_path))
    check_prepared(Path(prepared_dir))  # a wrong PREPARED_DIR must not leave an empty --out behind
    check_dir_destination(out_dir, inputs=[prepared_dir])
    if (out_dir / "sweep.json").is_dir():
        raise SdmvaeError(f"{out_dir / 'sweep.json'} is a directory; the sweep's summary cannot be written there")
    specs = []
    for name, cfg, opts in runs:
        opts.device = device
        if epochs is not None:
            opts.epochs = epochs
        run_dir = out_dir / name
        has_last = (run_dir / "last.pt").exists()
        if run_dir.exists() and not (resume and (has_last or _never_started(run_dir))) and any(run_dir.iterdir()):
            raise SdmvaeError(f"{run_dir} already exists; use --resume to continue the sweep, or another --out")
        if resume and has_last:
            _check_same_run(run_dir, cfg, opts)
        specs.append(RunSpec(name, run_dir, cfg, opts, resume=resume and has_last))
    t0 = time.perf_counter()
    members: list[Member] = []
    groups: list[int] = []

    def on_group(ms: list[Member]) -> None:
        groups.append(len(ms))

    def on_open(ms: list[Member]) -> None:  # so that a Ctrl-C still reports each member's own status
        members[:] = ms

    interrupted = completed = False
    try:
        members = train_runs(prepared_dir, specs, device, on_epoch=on_epoch, on_done=on_done, on_group=on_group, on_open=on_open)
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        summary = _summary(members, specs, time.perf_counter() - t0, groups, interrupted, prepared_dir, spec_path)
        if groups or completed:  # a sweep refused before any stack started leaves the earlier sweep.json (or none)
            write_json(out_dir / "sweep.json", summary)
    return summary


def _check_same_run(run_dir: Path, cfg: ModelConfig, opts: TrainOptions) -> None:
    """``--resume`` continues each member as it was started (the checkpoint's options): refuse a
    spec that now gives the member other model or training options, which would otherwise be
    silently ignored. Only ``epochs`` (and the device) may change."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        model, train = saved["model"], saved["train"]
        differs = [k for k, v in cfg.to_dict().items() if k in model and model[k] != v]
        differs += [k for k, v in opts.to_dict().items() if k in train and k not in ("epochs", "device") and train[k] != v]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no readable config.json: the checkpoint's own checks decide
    if differs:
        k = differs[0]
        was, now = (model[k], getattr(cfg, k)) if k in model else (train[k], getattr(opts, k))
        raise SdmvaeError(f"--resume: {run_dir.name} was started with {k}={was!r}, the spec now gives {now!r} "
                          f"({len(differs)} option(s) differ: {', '.join(differs)}); resume with the spec it was started with, "
                          "or train the new options into another --out")


def _summary(members: list[Member], specs, wall: float, groups: list[int], interrupted: bool, prepared_dir, spec_path) -> dict:
    by_name = {m.name: m for m in members}
    rows = []
    frames = 0.0
    for s in specs:
        m = by_name.get(s.name)
        if m is None:
            rows.append({"name": s.name, "run_dir": str(s.run_dir), "status": "interrupted" if interrupted else "not run"})
            continue
        frames += sum(h["frames_per_s"] * h["seconds"] for h in m.history)
        rows.append({"name": m.name, "run_dir": str(m.run_dir), "status": m.status, "message": m.message,
                     "epochs": len(m.history), "best_epoch": m.best_epoch, "best_val": m.best_val,
                     "engine": m.history[-1].get("engine") if m.history else None,
                     "checkpoint": str(m.run_dir / "best.pt") if m.best_epoch >= 0 else None})
    return {"prepared_dir": str(Path(prepared_dir).resolve()), "spec": str(Path(spec_path).resolve()), "members": rows,
            "stacks": groups, "wall_seconds": round(wall, 2), "interrupted": interrupted,
            "member_frames_per_s": round(frames / wall, 1) if wall > 0 else None}
