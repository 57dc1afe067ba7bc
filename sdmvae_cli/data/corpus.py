"""Corpus discovery and speaker-disjoint splits.

Every layout reduces to a list of :class:`Utterance` (id, speaker, path, and for a manifest
layout possibly a time span of that file); splits are made by speaker so that no voice is heard
in two splits (the paper's protocol). The folder layouts are discovered here; the manifest
layouts (``kaldi``, ``lhotse``) are read by :mod:`sdmvae_cli.data.kaldi` and
:mod:`sdmvae_cli.data.lhotse_manifests`, which list the audio where it lies (nothing is copied).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from sdmvae_cli.audio.io import AUDIO_SUFFIXES
from sdmvae_cli.core.errors import SdmvaeError, UsageError

SPLITS = ("train", "validation", "test")
LAYOUTS = ("folder", "librispeech", "vctk", "tcd-timit")
#: layouts read from manifests that list utterances (their ids, speakers, files and spans)
MANIFEST_LAYOUTS = ("kaldi", "lhotse")


@dataclass(frozen=True)
class Utterance:
    utt_id: str  # folder layouts: relative path without suffix, '/'-separated; unique within the corpus
    speaker: str
    path: Path
    start: float | None = None  # seconds into the file; None (with end None): the whole file
    end: float | None = None  # seconds; None: to the end of the file

    @property
    def segment(self) -> str:
        """The span as it enters the keys: '' for a whole file (so a folder corpus keeps its
        keys and fingerprint), else '@start-end' (two segments of one file differ)."""
        if self.start is None and self.end is None:
            return ""
        return f"@{float(self.start or 0.0)!r}-{'' if self.end is None else repr(float(self.end))}"


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def check_root(root: Path) -> None:
    if not root.exists():
        raise SdmvaeError(f"corpus directory {root} does not exist")
    if not root.is_dir():
        raise SdmvaeError(f"corpus path {root} is not a directory")


def discover(root: str | Path, layout: str, *, include_lipspeakers: bool = False) -> list[Utterance]:
    """All utterances of a corpus in a known layout, sorted by id.

    - ``folder``: ``<root>/**/<speaker>/<utt>.wav|flac``; the speaker is the file's parent
      directory relative to the root (``librispeech/ls1688`` in ``../shared/data/dev``), so
      equal folder names under different sub-corpora stay different speakers.
    - ``librispeech``: ``<root>/<speaker>/<chapter>/<utt>.flac``; the speaker is the first
      component (also right for a flat ``<root>/<speaker>/<utt>.flac``).
    - ``vctk``: ``<root>/**/<speaker>/<utt>.wav|flac``; for VCTK 0.92 only ``*_mic1`` files are
      kept (mic2 is the same utterance on another microphone).
    - ``tcd-timit``: ``<root>/volunteers/<ID>/**/<utt>.wav``; lipspeakers
      (``<root>/lipspeakers/<ID>/...``) only with ``include_lipspeakers``.
    """
    root = Path(root)
    check_root(root)
    if layout not in LAYOUTS:
        raise SdmvaeError(f"unknown corpus layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    utts: list[Utterance] = []
    if layout == "tcd-timit":
        groups = ["volunteers"] + (["lipspeakers"] if include_lipspeakers else [])
        if not (root / "volunteers").is_dir():
            raise SdmvaeError(
                f"{root}: no 'volunteers' directory; expected the TCD-TIMIT layout <root>/volunteers/<ID>/... (see data/README.md)"
            )
        for group in groups:
            gdir = root / group
            if not gdir.is_dir():
                continue
            for spk_dir in sorted(p for p in gdir.iterdir() if p.is_dir()):
                for f in _audio_files(spk_dir):
                    rel = f.relative_to(root).with_suffix("").as_posix()
                    utts.append(Utterance(rel, spk_dir.name, f))
    else:
        for f in _audio_files(root):
            rel = f.relative_to(root)
            parts = rel.parts
            if len(parts) < 2:
                continue  # a file directly under the root belongs to no speaker
            if layout == "librispeech":
                speaker = parts[0]
            elif layout == "vctk":
                if "_mic2" in f.stem:
                    continue
                speaker = parts[-2]
            else:
                speaker = Path(*parts[:-1]).as_posix()
            utts.append(Utterance(rel.with_suffix("").as_posix(), speaker, f))
    if not utts:
        raise SdmvaeError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found in the {layout} layout")
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise SdmvaeError(f"{root}: utterance ids are not unique (e.g. {dup}); two files differ only by extension")
    return sorted(utts, key=lambda u: u.utt_id)


def listed_file(raw: str, where: str) -> Path:
    """A file a manifest lists, made absolute (a relative path is read from the current folder,
    as Kaldi and lhotse do; symlinks kept). Missing: one line naming the file and where it is
    listed, exit 1. Why not skip it like an unreadable file: a manifest pointing at nothing is a
    wrong root or an unmounted disk, and skipping would quietly prepare part of the corpus."""
    path = Path(os.path.abspath(raw))
    if not path.exists():
        raise SdmvaeError(f"{where}: audio file {path} does not exist")
    if path.is_dir():
        raise SdmvaeError(f"{where}: {path} is a directory, expected an audio file")
    return path


def listed_utterances(utts: list[Utterance], where: str) -> list[Utterance]:
    """The utterances a manifest lists, sorted by id as :func:`discover` sorts them (so equal ids
    give equal splits and frames); ids must be unique and there must be some."""
    if not utts:
        raise SdmvaeError(f"{where}: lists no utterances")
    twice = sorted(i for i, n in Counter(u.utt_id for u in utts).items() if n > 1)
    if twice:
        raise SdmvaeError(f"{where}: utterance ids are not unique (e.g. {twice[:3]})")
    return sorted(utts, key=lambda u: u.utt_id)


def speakers_of(utts: Iterable[Utterance]) -> list[str]:
    return sorted({u.speaker for u in utts})


def _resolve_count(spec: str, n_speakers: int, name: str) -> int | list[str]:
    """'3' -> 3 speakers, '0.1' -> 10 % (at least 1), 'a,b' -> explicit list, '' -> none."""
    spec = spec.strip()
    if spec in ("", "0", "none"):
        return 0
    if re.fullmatch(r"\d+", spec):
        return int(spec)
    if re.fullmatch(r"0?\.\d+", spec):
        frac = float(spec)
        return max(1, round(frac * n_speakers))
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise SdmvaeError(f"--{name}: expected a count, a fraction in (0, 1) or a comma-separated speaker list, got {spec!r}")
    return names


def random_split(utts: Sequence[Utterance], val: str, test: str, seed: int) -> dict[str, list[str]]:
    """Seeded speaker-disjoint split; explicit lists are honoured, counts drawn at random."""
    speakers = speakers_of(utts)
    n = len(speakers)
    if str(test).strip().lower() == "all":  # evaluation only: every speaker is a test speaker
        return check_split({"train": [], "validation": [], "test": sorted(speakers)})
    val_spec = _resolve_count(val, n, "val-speakers")
    test_spec = _resolve_count(test, n, "test-speakers")
    chosen: dict[str, list[str]] = {}
    for split, spec in (("validation", val_spec), ("test", test_spec)):
        if isinstance(spec, list):
            unknown = [s for s in spec if s not in speakers]
            if unknown:
                raise SdmvaeError(f"{split} speakers not in the corpus: {', '.join(unknown[:5])}")
            chosen[split] = sorted(spec)
    remaining = [s for s in speakers if not any(s in v for v in chosen.values())]
    random.Random(seed).shuffle(remaining)
    for split, spec in (("validation", val_spec), ("test", test_spec)):
        if isinstance(spec, int):
            if spec < 1 and split == "validation":
                raise SdmvaeError("--val-speakers must select at least one speaker")
            if spec >= len(remaining):
                raise SdmvaeError(
                    f"cannot take {spec} {split} speakers: only {len(remaining)} speakers left of {n} "
                    "(at least one must remain for training)"
                )
            chosen[split], remaining = sorted(remaining[:spec]), remaining[spec:]
    chosen["train"] = sorted(remaining)
    return check_split({s: chosen[s] for s in SPLITS})


def load_split_file(path: str | Path) -> dict[str, list[str]]:
    """JSON ``{"train": [...], "validation": [...], "test": [...]}`` (train may be omitted: all
    the others); ``{"test": [...]}`` alone is an evaluation-only split (other speakers unused).
    Keys starting with ``_`` are comments.

    Strict on purpose (:class:`UsageError`, exit 2): a split file says which voices are held
    out, so a typo (``"valid"``) or a string where a list belongs must not quietly turn into a
    different split (it used to give an evaluation-only preparation)."""
    path = Path(path)
    d = _read_split_json(path)
    if not isinstance(d, dict):
        raise UsageError(
            f"split file {path}: a JSON {_json_kind(d)}, expected an object "
            '{"train": [...], "validation": [...], "test": [...]}'
        )
    unknown = sorted(k for k in d if k not in SPLITS and not k.startswith("_"))
    if unknown:
        raise UsageError(
            f"split file {path}: unknown key(s) {', '.join(map(repr, unknown))[:120]}; "
            f"valid keys: {', '.join(SPLITS)} (keys starting with _ are comments)"
        )
    out: dict[str, list[str] | None] = {s: None for s in SPLITS}
    for s in SPLITS:
        if s in d:
            v = d[s]
            bad = [x for x in v if not (isinstance(x, str) and x and x == x.strip())] if isinstance(v, list) else [v]
            if not isinstance(v, list) or bad:
                what = (
                    f"a {_json_kind(v)}"
                    if not isinstance(v, list)
                    else f"an entry {json.dumps(bad[0])[:40]} ({_json_kind(bad[0])})"
                )
                raise UsageError(
                    f"split file {path}: {s!r} must be a list of speaker ids (non-empty strings without "
                    f"surrounding spaces), got {what}"
                )
            twice = sorted({x for x in v if v.count(x) > 1})
            if twice:
                raise UsageError(f"split file {path}: {s!r} lists {', '.join(map(repr, twice))[:80]} twice")
            out[s] = v
    if out["test"] and not out["validation"] and not out["train"]:  # evaluation only (train/validation absent or [])
        return {"train": [], "validation": [], "test": out["test"]}
    if out["validation"] is None or out["test"] is None:
        raise UsageError(
            f"split file {path}: needs 'validation' and 'test' speaker lists (or only 'test': an evaluation-only preparation)"
        )
    return out  # type: ignore[return-value]


def _read_split_json(path: Path):
    """The parsed JSON of a split file, or one clear line saying why there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SdmvaeError(f"split file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"split file {path} is a directory, expected a JSON file") from None
    try:
        return json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_unique_keys(path))
    except UnicodeDecodeError:
        raise UsageError(f"split file {path}: not UTF-8 text (expected a JSON file)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"split file {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise UsageError(f"split file {path}: nested too deeply to be a split file") from None


def _unique_keys(path: Path):
    """A JSON object hook that refuses a key given twice (json keeps the last one silently)."""

    def hook(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UsageError(f"split file {path}: key(s) {', '.join(map(repr, twice))[:80]} given twice")
        return dict(pairs)

    return hook


def _json_kind(v) -> str:
    """How JSON names the type of ``v`` (for messages: 'list', not Python's 'list')."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(type(v), type(v).__name__)


def builtin_tcd_timit_split() -> dict:
    return json.loads(resources.files("sdmvae_cli.data").joinpath("splits/tcd_timit.json").read_text())


def fixed_split(utts: Sequence[Utterance], lists: dict[str, list[str] | None], *, strict: bool) -> dict[str, list[str]]:
    """Apply given validation/test lists; train = the listed train speakers or all the others.

    With ``strict`` every listed validation/test speaker must be present in the corpus.
    """
    speakers = set(speakers_of(utts))
    out: dict[str, list[str]] = {}
    for s in ("validation", "test"):
        listed = lists[s] or []
        missing = [x for x in listed if x not in speakers]
        if missing and strict:
            raise SdmvaeError(f"{s} speakers missing from the corpus: {', '.join(missing)}")
        out[s] = sorted(x for x in listed if x in speakers)
    held = set(out["validation"]) | set(out["test"])
    if lists.get("train") is not None and not lists["train"] and not out["validation"]:
        out["train"] = []  # evaluation only: the speakers not listed are not used
    elif lists.get("train"):
        unknown = [x for x in lists["train"] if x not in speakers]  # type: ignore[union-attr]
        if unknown and strict:
            raise SdmvaeError(f"train speakers missing from the corpus: {', '.join(unknown[:5])}")
        out["train"] = sorted(x for x in lists["train"] if x in speakers)  # type: ignore[union-attr]
    else:
        out["train"] = sorted(speakers - held)
    return check_split({s: out[s] for s in SPLITS})


def check_split(split: dict[str, list[str]]) -> dict[str, list[str]]:
    """Train and validation non-empty (test may be empty: a training-only preparation), or
    both empty with a test split (an evaluation-only preparation, to score a model on one's own
    speech); no speaker in two splits."""
    if not split["train"] and not split["validation"]:  # an evaluation-only preparation
        if not split["test"]:
            raise SdmvaeError("no speakers in any split")
        return split
    for a in SPLITS:
        if not split[a] and a != "test":
            raise SdmvaeError(f"the {a} split has no speakers")
        for b in SPLITS:
            if a < b:
                both = set(split[a]) & set(split[b])
                if both:
                    raise SdmvaeError(f"speaker(s) in both {a} and {b}: {', '.join(sorted(both)[:5])}")
    return split
