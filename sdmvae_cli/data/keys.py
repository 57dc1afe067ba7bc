"""The keys of a prepared split: the *skip key* (cheap, with mtimes: is there anything to
redo?) and the *content key* (the frames' identity, no paths and no mtimes: the data
fingerprint in ``prepare.json``), and the fingerprints older formats wrote. See
:mod:`sdmvae_cli.data.prepare` for why there are two."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from sdmvae_cli.data.corpus import Utterance

if TYPE_CHECKING:
    from sdmvae_cli.data.prepare import PrepareOptions


def split_key(utts: Sequence[Utterance], opts: PrepareOptions) -> str:
    """The skip key: cheap (stat only), so it may use mtimes; never used as the fingerprint."""
    h = hashlib.sha256(json.dumps(opts.key_dict(), sort_keys=True).encode())
    for u in utts:
        st = u.path.stat()
        h.update(f"{u.utt_id}{u.segment}|{u.speaker}|{st.st_size}|{st.st_mtime_ns}\n".encode())  # segment: '' for a whole file
    return h.hexdigest()[:16]


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (None when it cannot be read: the decoder says why)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


#: options that decide which utterances land in which split, not what their frames are: the
#: content key leaves them out (the utterance list it hashes already says where each one went)
SPLIT_CHOICE_OPTIONS = ("layout", "val_speakers", "test_speakers", "seed", "split_file", "include_lipspeakers")


def content_key(files: Sequence[tuple[str, str, str | None, bool]], opts: PrepareOptions) -> str:
    """A split's identity from what shapes its frames: the frame options (trimming, STFT) and
    each (utterance id, speaker, file sha256, skipped), in any order. No paths, no mtimes and
    no split-choosing options (a split file's path differs between machines)."""
    d = {k: v for k, v in opts.key_dict().items() if k not in SPLIT_CHOICE_OPTIONS}
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    for uid, spk, digest, skipped in sorted(files, key=lambda t: (t[0], t[1], t[2] or "", t[3])):
        h.update(f"{uid}|{spk}|{digest}|{int(skipped)}\n".encode())
    return h.hexdigest()[:16]


def legacy_fingerprint(keys: Sequence[str]) -> str:
    """The fingerprint format 1 wrote (from the skip keys, so with mtimes): only used to prove
    that an old prepare.json describes exactly the frames on disk."""
    return hashlib.sha256("".join(keys).encode()).hexdigest()[:16]


def previous_fingerprints(out_dir: Path, fingerprint: str, legacy: str) -> list[str]:
    """Earlier fingerprints of these very frames, so that checkpoints trained before a re-keying
    still resume. Kept only with proof that the old prepare.json described the frames on disk:
    its fingerprint is the format-1 one of the current skip keys (so of these files, with these
    mtimes), or it is already this content fingerprint (its own aliases carry over). A stale
    prepare.json (a run killed after a split was recomputed) proves neither."""
    try:
        old = json.loads((out_dir / "prepare.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or not isinstance(old.get("fingerprint"), str):
        return []
    if old["fingerprint"] == fingerprint:
        return [f for f in old.get("previous_fingerprints", []) if isinstance(f, str) and f != fingerprint]
    return [old["fingerprint"]] if old["fingerprint"] == legacy else []
