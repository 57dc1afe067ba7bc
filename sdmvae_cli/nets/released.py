"""Released checkpoints by name: the one place that turns ``vae-m64`` into a file.

The checkpoints live in ``models/`` of the repository and ship in the wheel as
``sdmvae_cli/released`` (a link to it in the source tree), so a pip-installed user never has to
look inside site-packages: every option that takes a checkpoint (``--model/-m``, evaluate's
CHECKPOINT, ``plot dictionary``, ``export``, the Python API) accepts a released name, resolved
here. ``default.json`` names the default; ``released.json`` describes each model (data, scores).

Names and paths never shadow each other silently (:func:`resolve_model`): a bare word that is a
released name (``vae-m64``) is the released model, even when a folder of that name sits in the
working directory (a warning then says how to reach the folder: ``./vae-m64``); anything that
looks like a path (a separator, a leading ``.`` or ``~``, a ``.pt`` file that exists) is a
path. Why: ``train``'s run folders used to be named like the releases, and "a path that exists
wins" loaded a user's 4-utterance run where the released model was asked for, without a word.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path

from sdmvae_cli.core.errors import SdmvaeError

log = logging.getLogger("sdmvae")


def released_dir() -> Path:
    """The folder of released checkpoints inside the installed package."""
    return Path(str(resources.files("sdmvae_cli").joinpath("released")))


def released_names() -> list[str]:
    d = released_dir()
    return sorted(p.stem for p in d.glob("*.pt")) if d.is_dir() else []


def default_model_path() -> Path:
    """The default released checkpoint, named in ``models/default.json`` (see models/README.md)."""
    index = released_dir() / "default.json"
    if not index.exists():
        raise SdmvaeError(
            "no released model is bundled with this installation; pass --model CKPT (a best.pt from `sdmvae train`)"
        )
    p = released_dir() / json.loads(index.read_text())["default"]
    if not p.exists():
        raise SdmvaeError(f"the default released model {p.name} is missing from this installation; pass --model CKPT")
    return p


def enhance_default_path() -> Path:
    """The default prior of `sdmvae enhance`: ``enhance_default`` in ``default.json``. Why a key of
    its own: the best resynthesis model is not the best enhancement prior, so each default is
    chosen on validation data for its own task (models/README.md). Without the key: the default."""
    try:
        name = json.loads((released_dir() / "default.json").read_text()).get("enhance_default")
    except (OSError, ValueError, AttributeError):
        name = None
    if name is None:
        return default_model_path()
    p = released_dir() / name
    if not p.exists():
        raise SdmvaeError(f"the default enhancement prior {p.name} is missing from this installation; pass --model CKPT")
    return p


def released_path(name: str) -> Path | None:
    """The file of a released model named ``name`` (with or without ``.pt``), else None."""
    if not name or os.sep in name or "/" in name:
        return None
    for cand in (released_dir() / name, released_dir() / f"{name}.pt"):
        if cand.suffix == ".pt" and cand.is_file():
            return cand
    return None


def looks_like_path(name: str) -> bool:
    """A separator, a leading ``.`` or ``~``: the user wrote a path, never a released name."""
    return any(c in name for c in ("/", "\\", os.sep)) or name.startswith((".", "~"))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """One warning per process, however often a command resolves the same argument."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def resolve_model(name: str | os.PathLike | None) -> Path:
    """A checkpoint argument -> the file or run directory to load (see the module docstring).

    None: the default released model. A released name: that model (a warning when a path of
    the same spelling exists too). Otherwise an existing path. Anything else is one error line
    that lists the released names."""
    if name is None:
        return default_model_path()
    raw = os.fspath(name)
    p = Path(os.path.expanduser(raw))  # never raises (Path.expanduser does for an unknown ~user)
    # a Path object is a path (what this function returns is resolved again downstream, and
    # Path("./vae-m64") forgets its "./"); only a string can be a released name
    hit = None if looks_like_path(raw) or not isinstance(name, str) else released_path(raw)
    if hit is not None and p.exists():
        if p.suffix == ".pt" and p.is_file():  # a checkpoint file by its file name: the file
            _warn_once(f"{raw}: using the file in this folder, not the released model {hit.stem}")
            return p
        _warn_once(
            f"{raw} is the released model; the {'folder' if p.is_dir() else 'file'} in this folder is not used "
            f"(write ./{raw} for it)"
        )
        return hit
    if hit is not None:
        return hit
    if p.exists():
        return p
    names = released_names()
    raise SdmvaeError(
        f"checkpoint {raw} does not exist: no such checkpoint or released model "
        f"(released: {', '.join(names) or 'none'}; see `sdmvae models --released`)"
    )


def is_released(path: str | os.PathLike) -> bool:
    """True for a file inside the installed package's released folder (never a place to write)."""
    try:
        return Path(path).resolve().parent == released_dir().resolve()
    except OSError:
        return False
