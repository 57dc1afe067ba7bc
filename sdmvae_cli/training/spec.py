"""A sweep's spec: reading it, expanding its grids, naming and checking its runs.

A spec (JSON, or TOML by suffix) names runs by any ModelConfig / TrainOptions field, or by the
`sdmvae train` flag's spelling of it (``arch``, ``dict``, ``batch-size``: :func:`spec_aliases`)::

    {"common": {"latent": 64, "epochs": 500},
     "runs": [{"name": "vae-s0", "model": "vae", "seed": 0},
              {"name": "sdm-s0", "model": "sdm", "dictionary": "dct", "k": 64, "seed": 0}],
     "grid": {"name": "vsc-a{alpha}-s{seed}", "model": "vsc", "alpha": [0.05, 0.5], "seed": [0, 1, 2]}}

``grid`` (one dict or a list of dicts) is the cartesian product of its list values (``hidden``,
itself a list, is given as a list of lists there); ``name`` is a format string over the run's
options. :func:`expand_spec` turns a spec into checked runs (what `sdmvae sweep` trains:
:mod:`sdmvae_cli.training.sweep`); :func:`split_by_stack` writes one spec per stack
(`sdmvae sweep-stacks`).
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from sdmvae_cli.core.atomic import write_json
from sdmvae_cli.core.errors import SdmvaeError, first_line
from sdmvae_cli.core.flags import FIELD_FLAGS
from sdmvae_cli.core.lock import LOCK_NAME
from sdmvae_cli.nets import REGISTRY, ModelConfig, foreign_options
from sdmvae_cli.nets.base import MODEL_FIELDS
from sdmvae_cli.training.options import TrainOptions, check_options
from sdmvae_cli.training.stack import group_key

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
    (``arch`` for ``model``, ``dict`` for ``dictionary``: core.flags.FIELD_FLAGS) and any field
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
    hints = [
        f"{b} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(b, [*OPTION_FIELDS, *aliases], 1)) else b
        for b in sorted(bad)
    ]
    flags = sorted(a for a in aliases if "-" not in a)
    return SdmvaeError(
        f"run {name!r}: unknown option(s) {', '.join(hints)}; valid options: {', '.join(sorted(OPTION_FIELDS))} "
        f"(or `sdmvae train`'s spelling: {', '.join(flags)}, and - for _)"
    )


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
        raise SdmvaeError(f"{path}: not a valid sweep spec ({first_line(exc, 120)})") from None


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
    """A run without a name: its own options in the spec's order (``vsc-alpha0.1-seed0``). Not
    `train`'s :func:`~sdmvae_cli.training.train.default_run_name` (from the whole config): the
    members of a sweep already started keep their folders (``--resume`` finds them by name)."""
    return "-".join(f"{k}{v}" if k != "model" else str(v) for k, v in run.items() if k != "name")


def run_name(template: Any, run: dict[str, Any]) -> str:
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
    if not plain_name(name):
        raise SdmvaeError(f"run name {name!r} is empty, too long or not a plain folder name"[:300])
    if name.casefold() in {f.casefold() for f in SWEEP_FILES}:  # casefold: a case-insensitive disk (macOS) collides too
        raise SdmvaeError(
            f"run name {name!r} is the name of a file the sweep writes beside its members "
            f"({', '.join(SWEEP_FILES)}); rename the run"
        )
    return name


def plain_name(name: str) -> bool:
    """One plain folder name (its path is printed one per line on stdout: no control characters)."""
    return (
        bool(name)
        and "/" not in name
        and not name.startswith(".")
        and len(name.encode()) <= 255
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)
    )


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
        arch = run.get("model", "vae")  # the family's training defaults under what the spec sets
        family = REGISTRY[arch].TRAIN_DEFAULTS if isinstance(arch, str) and arch in REGISTRY else {}
        template = run.pop("name", None)  # a default name shows what the spec sets; a template may use the defaults
        name = run_name(template, run if template is None else {**family, **run})
        run = {**family, **run}
        bad = set(run) - OPTION_FIELDS
        if bad:
            raise _unknown_options(name, bad)
        if name in seen:
            raise SdmvaeError(f"run name {name!r} is repeated")
        seen.add(name)
        try:
            cfg = ModelConfig.from_dict({k: v for k, v in run.items() if k in MODEL_FIELDS})
            opts = TrainOptions.from_dict({k: v for k, v in run.items() if k in TRAIN_FIELDS})
            check_options(cfg, opts)  # the model's own checks (ranges, dictionary and k, ...), then training's
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
    foreign = [
        f for f in foreign_options(cfg.model, [k for k in own if k in MODEL_FIELDS]) if getattr(cfg, f) != getattr(default, f)
    ]
    if foreign:
        raise SdmvaeError(
            f"run {name!r}: {', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to a "
            f"{cfg.model!r} model (it reads {', '.join(REGISTRY[cfg.model].OPTIONS)}; see `sdmvae models`)"
        )


def split_by_stack(spec_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """One spec per stack of ``spec_path`` (runs that would train stacked), written as
    ``OUT_DIR/<spec stem>.<k>.json`` with every option spelled out; returns their paths.

    Why: a sweep trains its stacks one after another, and a stack of a few members leaves a GPU
    mostly idle; specs split this way train side by side, one process each (under CUDA MPS the
    processes' kernels overlap), with the same numbers (a member's computation does not depend
    on the rest of its sweep). Existing files are refused unless ``overwrite``."""
    spec_path, out_dir = Path(spec_path), Path(out_dir)
    stacks: dict[str, list[dict[str, Any]]] = {}
    for name, cfg, opts in expand_spec(read_spec(spec_path)):
        run = {"name": name, **cfg.to_dict(), **{k: v for k, v in opts.to_dict().items() if k in TRAIN_FIELDS}}
        stacks.setdefault(group_key(cfg, opts, name), []).append(run)
    paths = [out_dir / f"{spec_path.stem}.{k}.json" for k in range(len(stacks))]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise SdmvaeError(f"{p} already exists; use --overwrite or another --out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, (p, runs) in enumerate(zip(paths, stacks.values())):
        write_json(p, {"_comment": f"stack {k} of {spec_path.name} (sdmvae sweep-stacks)", "runs": runs})
    return paths
