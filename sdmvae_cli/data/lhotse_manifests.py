"""lhotse manifests as a corpus (``sdmvae prepare lhotse``): a RecordingSet and a SupervisionSet
(each supervision one utterance: its speaker, its recording's file, its span), or a CutSet
(each cut one utterance, its speaker that of its supervisions). JSON/JSONL, gzipped or not.

lhotse is an optional extra (``pip install sdmvae[lhotse]``) imported here only, and only when
such a manifest is read. The audio is read where the manifests say it lies, never copied; what
sdmvae cannot read as it stands is refused in one line rather than read differently from what
lhotse would give: audio from a command, a URL or memory, one file per channel, a recording
with transforms (speed or volume perturbation, resampling), a supervision on some of its
recording's channels (sdmvae mixes every channel down), mixed or padding cuts.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from sdmvae_cli.core.errors import SdmvaeError, first_line
from sdmvae_cli.data.corpus import Utterance, listed_file, listed_utterances


def read_manifests(paths: Sequence[Path]) -> list[Utterance]:
    """The utterances of ``[CUTS]`` or ``[RECORDINGS, SUPERVISIONS]``, sorted by id."""
    lhotse = _lhotse()
    if len(paths) == 1:
        cuts = _load(lhotse, paths[0], lhotse.CutSet, "CUTS")
        utts = [_cut_utterance(lhotse, c, f"{paths[0]}: cut {c.id}") for c in cuts]
    else:
        recordings = _load(lhotse, paths[0], lhotse.RecordingSet, "RECORDINGS")
        supervisions = _load(lhotse, paths[1], lhotse.SupervisionSet, "SUPERVISIONS")
        files = {r.id: (r, _recording_file(r, f"{paths[0]}: recording {r.id}")) for r in recordings}
        utts = [_supervision_utterance(s, files, f"{paths[1]}: supervision {s.id}") for s in supervisions]
    return listed_utterances(utts, str(paths[-1]))


def _lhotse() -> ModuleType:
    try:
        import lhotse
    except ImportError:
        raise SdmvaeError("reading lhotse manifests needs lhotse: pip install sdmvae[lhotse]") from None
    return lhotse


def _load(lhotse: ModuleType, path: Path, cls: type, role: str) -> Any:
    """One manifest of the expected kind, or one line saying what it is instead."""
    if not path.is_file():
        raise SdmvaeError(f"{role} manifest {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        manifest = lhotse.load_manifest(path)
    except Exception as exc:  # noqa: BLE001  (lhotse raises ValueError, JSON and gzip errors, ...)
        raise SdmvaeError(f"{path}: not a lhotse manifest, or an empty one ({first_line(exc, 100)})") from None
    if not isinstance(manifest, cls):
        usage = "prepare lhotse CUTS OUT_DIR or prepare lhotse RECORDINGS SUPERVISIONS OUT_DIR"
        raise SdmvaeError(f"{path}: a {type(manifest).__name__} where {role} (a {cls.__name__}) belongs ({usage})")
    return manifest


def _recording_file(rec: Any, where: str) -> Path:
    """The one plain file that holds every channel of a recording, as lhotse would read it."""
    if rec.transforms:
        raise SdmvaeError(f"{where} has transforms (speed, volume, resampling): sdmvae reads the source file as it is")
    if len(rec.sources) != 1:
        raise SdmvaeError(f"{where} has one file per channel ({len(rec.sources)} sources): sdmvae reads one file per recording")
    src = rec.sources[0]
    if src.type != "file":
        raise SdmvaeError(f"{where} is read from a {src.type} source: sdmvae reads plain audio files only")
    return listed_file(src.source, where)


def _span(rec: Any, start: float, end: float) -> tuple[float | None, float | None]:
    """A span of the recording, its end None when it reaches the recording's end (as a Kaldi
    segment ending at -1), or (None, None) when it is all of it: then the utterance is the whole
    file, exactly as in a folder corpus (same frames, same fingerprint)."""
    to_end = round(end * rec.sampling_rate) >= rec.num_samples
    if start <= 0 and to_end:
        return None, None
    return start, None if to_end else end


def _check_channels(rec: Any, channel: int | list[int], where: str) -> None:
    wanted = set(channel) if isinstance(channel, list) else {channel}
    if rec.num_channels > 1 and wanted != set(rec.channel_ids):
        raise SdmvaeError(
            f"{where} is on channel(s) {sorted(wanted)} of recording {rec.id}'s {rec.num_channels}: sdmvae mixes every "
            "channel down, so give it one recording per channel"
        )


def _supervision_utterance(sup: Any, files: dict[str, tuple[Any, Path]], where: str) -> Utterance:
    if sup.recording_id not in files:
        raise SdmvaeError(f"{where}: its recording {sup.recording_id} is not in the RecordingSet")
    if not sup.speaker:
        raise SdmvaeError(f"{where} has no speaker (speaker-disjoint splits need one per utterance)")
    rec, path = files[sup.recording_id]
    _check_channels(rec, sup.channel, where)
    return Utterance(sup.id, sup.speaker, path, *_span(rec, sup.start, sup.end))


def _cut_utterance(lhotse: ModuleType, cut: Any, where: str) -> Utterance:
    if not isinstance(cut, (lhotse.cut.MonoCut, lhotse.cut.MultiCut)) or not cut.has_recording:
        raise SdmvaeError(
            f"{where} is a {type(cut).__name__} without a recording of its own: sdmvae reads mono or multi-channel cuts"
        )
    speakers = sorted({s.speaker for s in cut.supervisions if s.speaker})
    if len(speakers) != 1:
        raise SdmvaeError(
            f"{where} has {'speakers ' + ', '.join(speakers[:3]) if speakers else 'no speaker'}: each cut must be one speaker's"
        )
    rec = cut.recording
    _check_channels(rec, cut.channel, where)
    return Utterance(cut.id, speakers[0], _recording_file(rec, where), *_span(rec, cut.start, cut.end))
