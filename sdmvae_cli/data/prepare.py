"""`sdmvae prepare`: corpus -> speaker-disjoint splits of power-spectrogram frames.

Output layout (OUT_DIR)::

    prepare.json                 StftConfig, options, package version, counts (written last)
    splits.json                  speaker lists per split
    <split>/manifest.jsonl       one line per utterance (id, speaker, path, [start, end], rates, frames)
    <split>/frames.npy           float32 (frames x 513), opened as a memmap by training
    <split>/speakers.txt
    <split>/.done.json           the split's keys: a re-run with the same inputs skips it

Two keys per split, for two jobs. The *skip key* (options, utterance ids, file sizes and
mtimes) is cheap to recompute and says whether a re-run has anything to do. The *content key*
(trimming and STFT options, utterance ids and speakers, whether each file was skipped, and
the SHA-256 of each audio file's bytes) is what the data fingerprint in ``prepare.json`` is
made of: no paths and no mtimes, so the same corpus prepared on two machines (say a laptop and
a GPU box) has one fingerprint, and runs trained on either can be compared by ``export``. A
preparation made before content keys existed gets them on its next run without recomputing
any frame and, if its files and their mtimes are unchanged (which is what proves that its old
fingerprint describes these frames), keeps the old fingerprint in ``previous_fingerprints``,
so that ``train --resume`` and ``export`` still accept its checkpoints.

The corpus is a folder in a known layout, or manifests that list the audio where it lies (a
Kaldi data directory, lhotse manifests): no audio is copied. An utterance that is a segment of a
longer recording (Kaldi ``segments``, a lhotse supervision or cut) is read alone from its file;
its span (``start``, ``end`` in seconds, end None: to the end of the file) is in its manifest
row and in both keys, so two segments of one file are two utterances and moving a boundary is
other data. A whole file adds nothing to either key: a corpus listed by a manifest has the
fingerprint of the same files prepared as a folder, with the same ids and speakers.

float32 because full-scale power exceeds float16's range (65504): a peak-normalised tone
reaches (sum of the window)^2 / 4 ~ 1e5 in its bin.

Manifest paths are absolute (the corpus root made absolute, symlinks kept), so every command
works from any folder; a preparation made by an older version with relative paths gets them
rewritten on its next (otherwise up-to-date) run. A run killed with -9 leaves temporary files
(``.frames.raw.*.tmp``, up to a split's size); the next run removes them first. One
``prepare`` per output folder at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sdmvae_cli.audio.levels import level_check, warn_levels
from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.atomic import atomic_path, write_json, write_text
from sdmvae_cli.core.errors import SdmvaeError, UsageError, check_interrupt
from sdmvae_cli.core.outputs import check_dir_destination, real, remove_stale_temporaries
from sdmvae_cli.core.version import __version__
from sdmvae_cli.data.corpus import (
    SPLITS,
    Utterance,
    builtin_tcd_timit_split,
    discover,
    fixed_split,
    load_split_file,
    random_split,
)
from sdmvae_cli.data.extract import Task, file_results
from sdmvae_cli.data.kaldi import read_data_dir
from sdmvae_cli.data.keys import content_key, file_sha256, legacy_fingerprint, previous_fingerprints, split_key
from sdmvae_cli.data.prepared import read_manifest

log = logging.getLogger("sdmvae")
FORMAT_VERSION = 2  # 2: content-based fingerprint, per-file sha256 in manifests
PREPARED = ("prepare.json", "splits.json")  # what makes OUT_DIR an earlier preparation, which a re-run may update


@dataclass
class PrepareOptions:
    layout: str = "folder"
    trim: bool = True
    top_db: float = 30.0
    val_speakers: str = "0.1"
    test_speakers: str = "0.1"
    seed: int = 0
    split_file: str | None = None
    include_lipspeakers: bool = False
    jobs: int = 1
    force: bool = False
    stft: StftConfig = field(default_factory=StftConfig)

    def key_dict(self) -> dict:
        """The options that change the output (jobs/force do not)."""
        d = asdict(self)
        for k in ("jobs", "force"):
            d.pop(k)
        d["stft"] = self.stft.to_dict()
        return d


def _write_npy_from_raw(raw: Path, n_rows: int, n_cols: int, target: Path) -> None:
    """Turn a raw float32 stream into a .npy (header + the same bytes), atomically."""
    with atomic_path(target, suffix=".npy") as tmp:
        with open(tmp, "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(
                out, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (n_rows, n_cols)}
            )
            shutil.copyfileobj(src, out, length=16 << 20)


def _absolute_manifest(split_dir: Path, utts: Sequence[Utterance]) -> None:
    """Rewrite a manifest written with paths relative to an old working folder (same frames,
    same key: only the paths change, so the data fingerprint stays)."""
    f = split_dir / "manifest.jsonl"
    if not f.exists():
        return
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if all(os.path.isabs(r.get("path", "")) for r in rows):
        return
    by_id = {u.utt_id: str(u.path) for u in utts}
    for r in rows:
        r["path"] = by_id.get(r["id"], os.path.abspath(r["path"]))
    write_text(f, "".join(json.dumps(r) + "\n" for r in rows))


def _looks_prepared(split_dir: Path) -> bool:
    return any((split_dir / n).exists() for n in (".done.json", "manifest.jsonl", "frames.npy"))


def prepare_split(
    name: str,
    utts: Sequence[Utterance],
    out_dir: Path,
    opts: PrepareOptions,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Compute and write one split; returns its summary (counts, skipped files)."""
    split_dir = out_dir / name
    split_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(split_dir)  # left by a run killed with -9
    (split_dir / "frames.raw").unlink(missing_ok=True)
    key = split_key(utts, opts)
    done_file = split_dir / ".done.json"
    if not opts.force and done_file.exists() and (split_dir / "frames.npy").exists():
        done = json.loads(done_file.read_text())
        if done.get("key") == key:
            _absolute_manifest(split_dir, utts)
            if "content_key" not in done:  # prepared before content keys: hash the files, keep the frames
                skipped = {s["id"] for s in done["summary"].get("skipped", [])}
                done["content_key"] = content_key(
                    [content_entry(u, file_sha256(u.path), u.utt_id in skipped) for u in utts], opts
                )
                write_json(done_file, done)
            if progress:
                progress(len(utts))
            return done["summary"] | {"skipped_run": True}
    done_file.unlink(missing_ok=True)
    got = extract_frames(name, utts, split_dir, opts, progress)
    write_text(split_dir / "manifest.jsonl", "\n".join(got.manifest_lines) + "\n")
    speakers = sorted({u.speaker for u in utts})
    write_text(split_dir / "speakers.txt", "\n".join(speakers) + "\n")
    summary = {"speakers": len(speakers), "utterances": len(got.manifest_lines), "frames": got.n_rows, "skipped": got.skipped}
    write_json(done_file, {"key": key, "content_key": content_key(got.files, opts), "summary": summary})
    return summary


@dataclass
class Extracted:
    """What :func:`extract_frames` wrote: manifest rows (offsets from 0), skips, content entries, rows."""

    manifest_lines: list[str]
    skipped: list[dict]
    files: list[tuple[str, str, str | None, bool]]
    n_rows: int


def extract_frames(
    name: str,
    utts: Sequence[Utterance],
    split_dir: Path,
    opts: PrepareOptions,
    progress: Callable[[int], None] | None = None,
    allow_empty: bool = False,
) -> Extracted:
    """The frames of ``utts``, in their order, into ``split_dir/frames.npy`` (atomically). No
    usable frame is an error unless ``allow_empty`` (a shard's block may hold none: the merged
    split decides)."""
    tasks = extraction_tasks(utts, opts)
    sha_of: dict[str, str | None] = {}  # each file is hashed once, however many segments it holds
    got = Extracted([], [], [], 0)
    check_interrupt()
    with atomic_path(split_dir / "frames.raw") as raw:
        with open(raw, "wb") as fh:
            for res in file_results(tasks, opts.jobs):
                check_interrupt()
                if progress:
                    progress(1)
                task = tasks[res.index]
                if task.hash_file:
                    sha_of[task.path] = res.meta["sha256"]
                res.meta["sha256"] = sha_of[task.path]
                got.files.append(content_entry(utts[res.index], res.meta["sha256"], res.error is not None))
                if res.error is not None:
                    log.warning("skipped: %s", res.error)
                    got.skipped.append({"id": res.meta["id"], "reason": res.error})
                    continue
                assert res.frames is not None and res.frames.shape[1] == opts.stft.n_bins
                res.meta["frame_offset"] = got.n_rows
                got.n_rows += res.frames.shape[0]
                fh.write(np.ascontiguousarray(res.frames, dtype="<f4").tobytes())
                got.manifest_lines.append(json.dumps(res.meta))
        if got.n_rows == 0 and not allow_empty:
            raise no_usable_audio(name, got.skipped)
        _write_npy_from_raw(raw, got.n_rows, opts.stft.n_bins, split_dir / "frames.npy")
    (split_dir / "frames.raw").unlink(missing_ok=True)
    return got


def no_usable_audio(name: str, skipped: Sequence[dict]) -> SdmvaeError:
    e = skipped[0]["reason"] if skipped else "-"
    return SdmvaeError(f"{name} split: no usable audio ({len(skipped)} file(s) skipped, e.g. {e})")


def extraction_tasks(utts: Sequence[Utterance], opts: PrepareOptions) -> list[Task]:
    """One task per utterance, in order; only the first utterance of each file hashes it."""
    first: set[str] = set()
    tasks = []
    for i, u in enumerate(utts):
        path = str(u.path)
        tasks.append(
            Task(i, u.utt_id, u.speaker, path, opts.stft.to_dict(), opts.trim, opts.top_db, u.start, u.end, path not in first)
        )
        first.add(path)
    return tasks


def content_entry(u: Utterance, sha256: str | None, skipped: bool) -> tuple[str, str, str | None, bool]:
    """An utterance as the content key sees it: the file's bytes and, for a segment, its span
    (two segments of one recording are two utterances; a whole file adds nothing, so a folder
    corpus keeps its fingerprint)."""
    return (u.utt_id, u.speaker, None if sha256 is None else sha256 + u.segment, skipped)


def check_split_options(layout: str, split_file: bool, test_only: bool, given: Sequence[str]) -> None:
    """Refuse options that would be ignored: ``given`` (the random split's options the user
    set: --val-speakers, --test-speakers, --seed) mean nothing where the speakers are chosen
    otherwise (a split file, --test-only, tcd-timit's built-in split). Why: they used to be
    dropped silently, so a user believed in a split that was not the one made."""
    if test_only and split_file:
        raise UsageError("--test-only and --split-file both choose the split: give one of them")
    chooser = (
        "--split-file"
        if split_file
        else "--test-only"
        if test_only
        else "the tcd-timit layout's built-in speaker split (--split-file chooses another)"
        if layout == "tcd-timit"
        else None
    )
    if chooser and given:
        raise UsageError(
            f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of a random speaker split, "
            f"which would be ignored: the speakers are chosen by {chooser}"
        )


def make_split(utts: Sequence[Utterance], opts: PrepareOptions) -> dict[str, list[str]]:
    if opts.split_file:
        return fixed_split(utts, load_split_file(opts.split_file), strict=True)
    if opts.layout == "tcd-timit" and str(opts.test_speakers).strip().lower() != "all":  # --test-only: every speaker
        builtin = builtin_tcd_timit_split()
        split = fixed_split(utts, {"validation": builtin["validation"], "test": builtin["test"], "train": None}, strict=True)
        for s, n in builtin["expected_counts"].items():
            if len(split[s]) != n:
                log.warning("TCD-TIMIT %s split has %d speakers, the paper's protocol has %d", s, len(split[s]), n)
        return split
    return random_split(utts, opts.val_speakers, opts.test_speakers, opts.seed)


def check_inputs(layout: str, n_paths: int) -> None:
    """The command line's paths (the inputs, then OUT_DIR) are as many as ``layout`` takes."""
    usages = LAYOUT_INPUTS.get(layout, ("CORPUS_DIR",))
    if n_paths - 1 not in {len(u.split()) for u in usages}:
        raise UsageError(
            f"prepare {layout} takes {' or '.join(f'{u} OUT_DIR' for u in usages)} ({n_paths} path{'s' * (n_paths != 1)} given)"
        )


#: what each manifest layout reads (the folder layouts read one CORPUS_DIR)
LAYOUT_INPUTS = {"kaldi": ("DATA_DIR",), "lhotse": ("CUTS", "RECORDINGS SUPERVISIONS")}


def corpus_utterances(inputs: Sequence[Path], opts: PrepareOptions) -> list[Utterance]:
    """The utterances of the corpus ``inputs`` name (a folder, a Kaldi data directory, or
    lhotse manifests): every layout ends here as one list, so all that follows is the same."""
    if opts.layout == "kaldi":
        return read_data_dir(inputs[0])
    if opts.layout == "lhotse":
        from sdmvae_cli.data.lhotse_manifests import read_manifests  # lhotse is an optional extra, imported only there

        return read_manifests(inputs)
    return discover(inputs[0], opts.layout, include_lipspeakers=opts.include_lipspeakers)


def prepare(
    corpus_dir: str | Path | Sequence[str | Path], out_dir: str | Path, opts: PrepareOptions, progress_factory=None
) -> dict:
    """Run the whole preparation; returns the content of ``prepare.json``.

    ``corpus_dir``: the corpus root, a Kaldi data directory, a lhotse CutSet manifest, or the
    pair (RecordingSet, SupervisionSet) of manifests. ``progress_factory(total)`` may return a
    callable advanced by one per file (a tqdm bar).
    """
    inputs, out_dir = checked_paths(corpus_dir, out_dir, opts)
    split, per_split = split_utterances(inputs, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    write_json(out_dir / "splits.json", split)
    bar = progress_factory(sum(len(v) for v in per_split.values())) if progress_factory else None
    summaries = {}
    try:
        for name in SPLITS:
            if not per_split[name]:
                drop_empty_split(name, per_split, out_dir)
            else:
                summaries[name] = prepare_split(name, per_split[name], out_dir, opts, progress=bar.update if bar else None)
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    return write_prepare_info(out_dir, inputs, opts, summaries)


def checked_paths(corpus_dir, out_dir: str | Path, opts: PrepareOptions, markers=PREPARED) -> tuple[list[Path], Path]:
    """The corpus inputs, absolute (not resolved: a symlinked corpus keeps its name) so that
    manifests work from anywhere, and OUT_DIR, checked before any work."""
    inputs = [corpus_dir] if isinstance(corpus_dir, (str, os.PathLike)) else list(corpus_dir)
    check_inputs(opts.layout, len(inputs) + 1)
    inputs, out_dir = [Path(os.path.abspath(p)) for p in inputs], Path(out_dir)
    for p in inputs:
        check_prepare_destination(p, out_dir, markers)
    return inputs, out_dir


def split_utterances(inputs: Sequence[Path], opts: PrepareOptions) -> tuple[dict, dict[str, list[Utterance]]]:
    """The speaker split and each split's utterances in corpus order: the one order that every
    preparation, whole or in shards, follows (so their frames line up byte for byte)."""
    utts = corpus_utterances(inputs, opts)
    split = make_split(utts, opts)
    by_speaker = {s: name for name, spk in split.items() for s in spk}
    return split, {name: [u for u in utts if by_speaker.get(u.speaker) == name] for name in SPLITS}


def drop_empty_split(name: str, per_split: dict[str, list[Utterance]], out_dir: Path) -> None:
    """A split without speakers: say so, and remove the one an earlier run left (not to be scored)."""
    if name != "test" and not per_split["train"] and not per_split["validation"]:
        log.info("evaluation-only preparation: no %s split", name)
    else:
        log.warning("the %s split is empty: only %s are prepared", name, " and ".join(s for s in SPLITS if per_split[s]))
    if (out_dir / name).is_dir() and _looks_prepared(out_dir / name):
        shutil.rmtree(out_dir / name)


def prepare_info(inputs: Sequence[Path], opts: PrepareOptions, summaries: dict, dones: Sequence[dict]) -> dict:
    """What prepare.json says of the data (THE fingerprint: the splits' content keys, in order)."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "corpus_dir": str(inputs[0].resolve()),
        **({"corpus_inputs": [str(p.resolve()) for p in inputs]} if len(inputs) > 1 else {}),
        "stft": opts.stft.to_dict(),
        "options": opts.key_dict(),
        "splits": {k: {kk: vv for kk, vv in v.items() if kk != "skipped_run"} for k, v in summaries.items()},
        "fingerprint": hashlib.sha256("".join(str(d.get("content_key")) for d in dones).encode()).hexdigest()[:16],
    }


def write_prepare_info(out_dir: Path, inputs: Sequence[Path], opts: PrepareOptions, summaries: dict, run=None) -> dict:
    """Write ``prepare.json`` (last: it says the folder is complete) from the splits' done
    markers, with ``run`` (fields that describe this run only) at its end; returns it."""
    dones = [json.loads((out_dir / s / ".done.json").read_text()) for s in summaries]
    info = prepare_info(inputs, opts, summaries, dones)
    info["level_check"] = level_check({name: read_manifest(out_dir, name) for name in summaries})
    warn_levels(info["level_check"])
    previous = previous_fingerprints(out_dir, info["fingerprint"], legacy_fingerprint([d["key"] for d in dones]))
    if previous:
        info["previous_fingerprints"] = previous
    info |= run or {}
    write_json(out_dir / "prepare.json", info)
    return info | {"up_to_date": all(v.get("skipped_run") for v in summaries.values())}


def check_prepare_destination(corpus_dir: Path, out_dir: Path, markers: Sequence[str] = PREPARED) -> None:
    """Before any work: OUT_DIR is not the corpus, is writable, and is empty (but for the probe of
    a shard's same check) or an earlier preparation, which a re-run updates (else: clobbered)."""
    if corpus_dir.exists() and real(corpus_dir) == real(out_dir):
        raise SdmvaeError(
            f"output directory {out_dir} is the corpus itself; choose a separate folder (inputs are never overwritten)"
        )
    check_dir_destination(out_dir)
    held = [p for p in out_dir.iterdir() if not p.name.startswith(".sdmvae-probe.")] if out_dir.is_dir() else []
    if held and not any((out_dir / n).exists() for n in markers):
        raise SdmvaeError(
            f"output directory {out_dir} is not empty and holds no earlier preparation; choose a new or empty folder"
        )
