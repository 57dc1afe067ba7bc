"""`sdmvae sweep`: many configurations and seeds trained at once, in one process.

A spec (JSON, or TOML by suffix) names runs by any ModelConfig / TrainOptions field, or by the
`sdmvae train` flag's spelling of it (``arch``, ``dict``, ``batch-size``: :func:`spec_aliases`)::

    {"common": {"latent": 64, "epochs": 500},
     "runs": [{"name": "vae-s0", "model": "vae", "seed": 0},
              {"name": "sdm-s0", "model": "sdm", "dictionary": "dct", "k": 64, "seed": 0}],
     "grid": {"name": "vsc-a{alpha}-s{seed}", "model": "vsc", "alpha": [0.05, 0.5], "seed": [0, 1, 2]}}

``grid`` (one dict or a list of dicts) is the cartesian product of its list values (``hidden``,
itself a list, is given as a list of lists there); ``name`` is a format string over the run's
options. Runs that differ only in seed, lr, patience, epochs, stop_on or scalar hyper-parameters share
one stack (:mod:`sdmvae_cli.stack`); each writes ``OUT/<name>/`` exactly as `sdmvae train`.
The sweep folder is locked while a sweep writes it (:mod:`sdmvae_cli.lock`), holds one sweep
(``sweep.json``, replaced only with ``overwrite``), and no member may be named like its own files.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from sdmvae_cli.atomic import write_json
from sdmvae_cli.errors import SdmvaeError, UsageError
from sdmvae_cli.lock import LOCK_NAME, claim_folder, folder_lock
from sdmvae_cli.nets import REGISTRY, ModelConfig, foreign_options, validate_config
from sdmvae_cli.stack import Member
from sdmvae_cli.trainopts import CHANGED_DEFAULTS, FIELD_FLAGS, EpochRecord, TrainOptions

MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainOptions)} - {"device"}
OPTION_FIELDS = MODEL_FIELDS | TRAIN_FIELDS

#: the sweep's summary, at the top of its folder
SUMMARY = "sweep.json"
#: everything a sweep writes at the top of its folder (its atomic writes' temporaries start with
#: a dot, which a run name may not): a member named like one of these would collide with it
SWEEP_FILES = (SUMMARY, LOCK_NAME)


@functools.cache
def spec_aliases() -> dict[str, str]:
    """The other spellings of a spec's option keys -> the field: each `sdmvae train` flag's name
    (``arch`` for ``model``, ``dict`` for ``dictionary``: trainopts.FIELD_FLAGS) and any field
    with ``-`` for ``_`` (``batch-size``), so a spec reads like the command line."""
    out = {f.replace("_", "-"): f for f in OPTION_FIELDS if "_" in f}
    out.update({flag: f for f, flag in FIELD_FLAGS.items()})
    return out


def _canonical(options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` with every key spelt as its field; a key given in two spellings is refused
    (which one would win is not obvious from the spec)."""
    aliases, out, spelt = spec_aliases(), {}, {}
    for key, value in options.items():
        field = aliases.get(key, key)
        if field in out:
            raise SdmvaeError(f"{where}: {spelt[field]!r} and {key!r} are two spellings of one option; give one of them"[-300:])
        out[field], spelt[field] = value, key
    return out


def _unknown_options(name: str, bad: set[str]) -> SdmvaeError:
    """The error for option keys that are no field: the nearest valid key per typo, then every
    valid key (the spec has no other documentation at hand)."""
    aliases = spec_aliases()
    hints = [f"{b} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(b, [*OPTION_FIELDS, *aliases], 1)) else b
             for b in sorted(bad)]
    flags = sorted(a for a in aliases if "-" not in a)
    return SdmvaeError(f"run {name!r}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(sorted(OPTION_FIELDS))} "
                       f"(or `sdmvae train`'s spelling: {', '.join(flags)}, and - for _)")


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
    grid = _canonical(grid, "the sweep spec's 'grid'")
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
        try:  # the flags' spellings of the options too: "{dict}" as well as "{dictionary}"
            name = template.format(**{a: run[f] for a, f in spec_aliases().items() if f in run}, **run)
        except KeyError as exc:
            raise SdmvaeError(f"run name {template!r} uses {{{exc.args[0]}}}, which this run does not set") from None
        except (IndexError, ValueError, TypeError, AttributeError) as exc:  # "{}", "{", "{lr[0]}", "{lr.x}"
            raise SdmvaeError(f"run name {template!r} is not a valid format string ({exc})"[:300]) from None
    if not _plain_name(name):
        raise SdmvaeError(f"run name {name!r} is empty, too long or not a plain folder name"[:300])
    if name.casefold() in {f.casefold() for f in SWEEP_FILES}:  # casefold: a case-insensitive disk (macOS) collides too
        raise SdmvaeError(f"run name {name!r} is the name of a file the sweep writes beside its members "
                          f"({', '.join(SWEEP_FILES)}); rename the run")
    return name


def _plain_name(name: str) -> bool:
    """One plain folder name (its path is printed one per line on stdout: no control characters)."""
    return bool(name) and "/" not in name and not name.startswith(".") and len(name.encode()) <= 255 \
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)


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
        raise SdmvaeError(f"unknown sweep spec key(s): {', '.join(sorted(unknown_top))}; valid: common, runs, grid, _comment")
    common = spec.get("common", {})
    if not isinstance(common, dict):
        raise SdmvaeError(f"the sweep spec's 'common' must be a table of options, got {common!r}"[:200])
    common = _canonical(common, "the sweep spec's 'common'")
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
    for i, raw in enumerate(runs):
        own = _canonical(raw, f"run {raw.get('name', f'#{i + 1}')!r}")
        run = {**common, **own}
        name = _run_name(run.pop("name", None), run)
        bad = set(run) - OPTION_FIELDS
        if bad:
            raise _unknown_options(name, bad)
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
        _refuse_foreign(name, cfg, own)
        out.append((name, cfg, opts))
    if not out:
        raise SdmvaeError("the sweep spec lists no run")
    return out


def _refuse_foreign(name: str, cfg: ModelConfig, own: dict[str, Any]) -> None:
    """A run's own option (not 'common', which may serve several architectures) that its
    architecture does not read, set to something else than its default: refused, as `train`
    refuses the flag (a spec written out by sweep-stacks spells every option at its default)."""
    default = ModelConfig()
    foreign = [f for f in foreign_options(cfg.model, [k for k in own if k in MODEL_FIELDS]) if getattr(cfg, f) != getattr(default, f)]
    if foreign:
        raise SdmvaeError(f"run {name!r}: {', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to a "
                          f"{cfg.model!r} model (it reads {', '.join(REGISTRY[cfg.model].OPTIONS)}; see `sdmvae models`)")


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


def _contents(run_dir: Path) -> set[str]:
    """What a member folder holds (a stale lock file left by a killed process aside); a file
    in its place counts as holding something."""
    if not run_dir.is_dir():
        return {run_dir.name} if run_dir.exists() else set()
    return {p.name for p in run_dir.iterdir()} - {LOCK_NAME}


def _never_started(held: set[str]) -> bool:
    """A member folder holding only what is written for every member before the first stack
    trains (config.json): a sweep interrupted before this member's stack ran. --resume starts it."""
    return held <= {"config.json"}


def run_sweep(
    prepared_dir: str | Path,
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[Member, EpochRecord], None] | None = None,
    on_done: Callable[[Member], None] | None = None,
) -> dict[str, Any]:
    """Train every run of the spec; returns (and writes) the sweep summary ``OUT/sweep.json``.

    A folder holding a sweep (its sweep.json) or a member's folder is refused unless ``resume``
    (the same members: those with a last.pt continue, the others start) or ``overwrite`` (the
    earlier sweep is replaced, as `train --overwrite` replaces a run: its members' run files are
    removed once every check has passed). The folder is locked while the sweep writes it: a
    second process (a second torchrun rank) is refused. KeyboardInterrupt propagates after
    sweep.json is written (every member keeps its last completed epoch)."""
    from sdmvae_cli.outputs import check_dir_destination
    from sdmvae_cli.train import check_prepared

    if resume and overwrite:
        raise UsageError("--resume continues a sweep and --overwrite replaces it: give one of them")
    out_dir = Path(out_dir)
    runs = expand_spec(read_spec(spec_path))
    check_prepared(Path(prepared_dir))  # a wrong PREPARED_DIR must not leave an empty --out behind
    check_dir_destination(out_dir, inputs=[prepared_dir])
    with folder_lock(out_dir):  # every check of what the folder holds is made under the lock
        replaced = _earlier_sweep(out_dir, [name for name, _, _ in runs], resume, overwrite)
        specs = _member_specs(out_dir, runs, device, epochs, resume, overwrite)
        return _train(prepared_dir, spec_path, out_dir, specs, replaced, device, on_epoch, on_done)


def _member_specs(out_dir: Path, runs: list[tuple[str, ModelConfig, TrainOptions]], device: str, epochs: int | None,
                  resume: bool, overwrite: bool) -> list:
    """What train_runs trains: each run in ``OUT/<name>``, an existing member folder refused
    unless ``resume`` (it continues, or starts if its stack never ran) or ``overwrite``."""
    from sdmvae_cli.train import RunSpec

    specs = []
    for name, cfg, opts in runs:
        opts.device = device
        if epochs is not None:
            opts.epochs = epochs
        run_dir = out_dir / name
        has_last = (run_dir / "last.pt").exists()
        held = _contents(run_dir)
        if held and not overwrite and not (resume and (has_last or _never_started(held))):
            raise SdmvaeError(f"{run_dir} already exists; use --resume to continue the sweep, --overwrite to replace it, "
                              "or another --out")
        if resume and has_last:
            _check_same_run(run_dir, cfg, opts)
        specs.append(RunSpec(name, run_dir, cfg, opts, resume=resume and has_last, overwrite=overwrite))
    return specs


def _recorded_members(summary: Path) -> list[str] | None:
    """The member names an earlier sweep.json lists (None when it is not one)."""
    try:
        names = [m["name"] for m in json.loads(summary.read_text(encoding="utf-8"))["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return names if all(isinstance(n, str) for n in names) else None


def _earlier_sweep(out_dir: Path, names: list[str], resume: bool, overwrite: bool) -> list[str]:
    """Check the sweep already in ``out_dir`` (its sweep.json) against this one; returns the
    earlier members this sweep does not list, whose run files ``overwrite`` removes. Why: a
    second sweep of another spec into the folder once replaced sweep.json, and the earlier
    sweep's record was lost."""
    summary = out_dir / SUMMARY
    if summary.is_dir():
        raise SdmvaeError(f"{summary} is a directory; the sweep's summary cannot be written there")
    if not summary.exists():
        return []
    if not (resume or overwrite):
        raise SdmvaeError(f"{summary} already exists: {out_dir} holds a sweep; continue it with --resume (the same spec), "
                          "replace it with --overwrite, or choose another --out")
    earlier = _recorded_members(summary)
    if overwrite:
        return [n for n in earlier or [] if n not in set(names) and _plain_name(n) and n not in SWEEP_FILES]
    if earlier is None:
        raise SdmvaeError(f"--resume: {summary} is not a sweep summary; replace the sweep with --overwrite, "
                          "or move the file away to resume from the member folders")
    added, gone = [n for n in names if n not in set(earlier)], [n for n in earlier if n not in set(names)]
    if added or gone:
        what = "; ".join(f"{verb} {len(ns)} member(s) ({', '.join(map(repr, ns[:3]))}{', ...' if len(ns) > 3 else ''})"
                         for verb, ns in (("adds", added), ("lacks", gone)) if ns)
        raise SdmvaeError(f"--resume: {out_dir} holds another sweep: this spec {what}; resume with the spec it was started with, "
                          "replace the sweep with --overwrite, or choose another --out")
    return []


def _remove_members(out_dir: Path, names: list[str]) -> None:
    """``overwrite``: the earlier sweep's members this sweep does not train lose their run files
    (as `train --overwrite` removes them); a folder left empty goes, anything else stays."""
    from sdmvae_cli.train import clear_run_dir

    for name in names:
        run_dir = out_dir / name
        if run_dir.is_dir() and not run_dir.is_symlink():
            claim_folder(run_dir)  # a `train --resume` of that member in another process: refused, not emptied
            clear_run_dir(run_dir)
            try:
                run_dir.rmdir()
            except OSError:  # it holds files of the user's: kept
                pass


def _train(prepared_dir, spec_path, out_dir: Path, specs: list, replaced: list[str], device: str,
           on_epoch: Callable[[Member, EpochRecord], None] | None, on_done: Callable[[Member], None] | None) -> dict[str, Any]:
    """Train the members; sweep.json is written as each stack starts (after every check: a
    sweep killed mid-way still has its record, so another spec is refused and --resume knows
    its members) and once more at the end."""
    from sdmvae_cli.train import train_runs

    t0 = time.perf_counter()
    members: list[Member] = []
    groups: list[int] = []

    def write(interrupted: bool) -> dict[str, Any]:
        summary = _summary(members, specs, time.perf_counter() - t0, groups, interrupted, prepared_dir, spec_path)
        write_json(out_dir / SUMMARY, summary)
        return summary

    def on_group(ms: list[Member]) -> None:
        if not groups:  # every check passed, the first stack starts: the earlier sweep goes now (--overwrite)
            _remove_members(out_dir, replaced)
        groups.append(len(ms))
        write(False)

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
        if groups or completed:  # a sweep refused before any stack started leaves the earlier sweep.json (or none)
            summary = write(interrupted)
    return summary


def _check_same_run(run_dir: Path, cfg: ModelConfig, opts: TrainOptions) -> None:
    """``--resume`` continues each member as it was started (the checkpoint's options): refuse a
    spec that now gives the member other model or training options, which would otherwise be
    silently ignored. Only ``epochs`` (and the device) may change; an option whose default
    changed since the member started (trainopts.CHANGED_DEFAULTS) keeps the member's value."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        model, train = saved["model"], saved["train"]
        differs = [k for k, v in cfg.to_dict().items() if k in model and model[k] != v]
        default = TrainOptions()
        differs += [k for k, v in opts.to_dict().items() if k in train and k not in ("epochs", "device") and train[k] != v
                    and not (k in CHANGED_DEFAULTS and train[k] == CHANGED_DEFAULTS[k] and v == getattr(default, k))]
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
