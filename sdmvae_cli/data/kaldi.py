"""A Kaldi data directory as a corpus (``sdmvae prepare kaldi DATA_DIR OUT_DIR``).

Read: ``wav.scp`` (``<id> <path>``: a recording, or with no ``segments`` file an utterance),
``utt2spk`` (``<utt> <speaker>``) and the optional ``segments`` (``<utt> <recording> <start>
<end>`` in seconds, ``end`` -1 for the end of the recording: the utterance is that span of the
recording). The audio is read where it lies, never copied. Only plain files: a ``wav.scp``
entry that is a command (``sox ... |``, the way Kaldi recipes convert on the fly) is refused,
since sdmvae runs no shell commands from a data file; run them once to write files instead.
Relative paths are read from the current folder, as Kaldi reads them. The ids and speakers are
Kaldi's own, so ``--split-file`` and ``--val-speakers a,b`` take Kaldi speaker ids.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import Utterance, check_root, listed_file, listed_utterances

#: a table: key -> (the rest of its line, its line number)
Table = dict[str, tuple[str, int]]


def read_data_dir(data_dir: str | Path) -> list[Utterance]:
    """The utterances of a Kaldi data directory, sorted by id; one line (exit 1) for whatever
    is wrong with it: a missing table, a malformed or repeated line, a command in wav.scp, a
    listed file that does not exist, an utterance without a speaker."""
    d = Path(data_dir)
    check_root(d)
    for name in ("wav.scp", "utt2spk"):
        if not (d / name).is_file():
            raise SdmvaeError(f"{d}: no {name}; a Kaldi data directory has wav.scp and utt2spk (and optionally segments)")
    files = {key: _audio_path(d / "wav.scp", key, rest, n) for key, (rest, n) in _read_table(d / "wav.scp", None).items()}
    speakers = {utt: spk for utt, (spk, _) in _read_table(d / "utt2spk", 1).items()}
    if (d / "segments").is_file():
        spans = _segments(d / "segments", files)
    else:
        spans = {utt: (path, None, None) for utt, path in files.items()}
    _same_utterances(d, spans, speakers)
    return listed_utterances(
        [Utterance(utt, speakers[utt], path, start, end) for utt, (path, start, end) in spans.items()], str(d)
    )


def _read_table(f: Path, n_values: int | None) -> Table:
    """A Kaldi table: ``<key> <value...>`` per line. ``n_values`` fields after the key, or
    None: the whole rest of the line (a wav.scp path may hold spaces)."""
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SdmvaeError(f"{f}: not UTF-8 text") from None
    table: Table = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split() if n_values is not None else line.strip().split(maxsplit=1)
        if len(fields) != (n_values if n_values is not None else 1) + 1:
            want = f"{n_values + 1} fields" if n_values is not None else "an id and a path"
            raise SdmvaeError(f"{f}: line {n}: expected {want}, got {line.strip()[:80]!r}")
        key = fields[0]
        if key in table:
            raise SdmvaeError(f"{f}: line {n}: {key} is listed twice (first on line {table[key][1]})")
        table[key] = (" ".join(fields[1:]) if n_values is not None else fields[1], n)
    if not table:
        raise SdmvaeError(f"{f}: empty")
    return table


def _audio_path(wav_scp: Path, key: str, rxfile: str, n: int) -> Path:
    """A wav.scp entry's file; a command (an input pipe ``... |``) or stdin (``-``) is refused."""
    where = f"{wav_scp}: line {n} ({key})"
    if rxfile.endswith("|") or rxfile.startswith("|"):
        raise SdmvaeError(
            f"{where} is a command ({rxfile[:60]!r}): sdmvae reads plain audio files only; run the command once to write "
            "the audio to files and list their paths"
        )
    if rxfile == "-":
        raise SdmvaeError(f"{where} reads standard input: sdmvae reads plain audio files only")
    if re.search(r"\.ark:\d+$", rxfile) and not Path(rxfile).exists():
        raise SdmvaeError(f"{where} is an offset in a Kaldi archive ({rxfile!r}): sdmvae reads plain audio files only")
    return listed_file(rxfile, where)


def _segments(f: Path, files: dict[str, Path]) -> dict[str, tuple[Path, float, float | None]]:
    """utterance -> (its recording's file, start, end or None) from a segments file."""
    out = {}
    for utt, (rest, n) in _read_table(f, 3).items():
        rec, start_s, end_s = rest.split()
        if rec not in files:
            raise SdmvaeError(f"{f}: line {n}: recording {rec} of {utt} is not in wav.scp")
        try:
            start, end = float(start_s), float(end_s)
        except ValueError:
            raise SdmvaeError(f"{f}: line {n}: start and end must be seconds, got {start_s!r} {end_s!r}") from None
        if not start >= 0 or not (end == -1 or end > start):  # `not >=` also refuses nan
            raise SdmvaeError(f"{f}: line {n}: a segment from {start_s} to {end_s} s is empty or negative")
        out[utt] = (files[rec], start, None if end == -1 else end)
    return out


def _same_utterances(d: Path, spans: dict, speakers: dict) -> None:
    """utt2spk names a speaker for every utterance and no other (as Kaldi's validate_data_dir)."""
    listed_in = "segments" if (d / "segments").is_file() else "wav.scp"
    missing = sorted(set(spans) - set(speakers))
    if missing:
        raise SdmvaeError(
            f"{d / 'utt2spk'}: no speaker for {len(missing)} utterance(s) of {listed_in} (e.g. {', '.join(missing[:3])})"
        )
    extra = sorted(set(speakers) - set(spans))
    if extra:
        raise SdmvaeError(f"{d / 'utt2spk'}: {len(extra)} utterance(s) that are not in {listed_in} (e.g. {', '.join(extra[:3])})")
