"""`sdmvae prepare kaldi` and `sdmvae prepare lhotse` (issue 25): corpora listed by manifests
give exactly what `prepare folder` gives on the same files (splits, frames, fingerprint), a
segment is that span of its recording, and broken manifests stop in one line."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli, needs_shared, one_line, write_wav

from sdmvae_cli.audio.io import prepare_samples, read_raw, trim_silence
from sdmvae_cli.audio.stft import StftConfig, power_spectrogram
from sdmvae_cli.data.prepare import PrepareOptions, prepare

SPLITS = ("train", "validation", "test")
OPTS = dict(val_speakers="1", test_speakers="1", seed=5)


@pytest.fixture(scope="module")
def corpus(small_corpus, tmp_path_factory) -> dict:
    """4 speakers x 2 real utterances as a folder corpus, prepared by `prepare folder`; the
    utterances as (id, speaker, file) in the folder layout's ids."""
    utts = [(f"{d.name}/{f.stem}", d.name, f) for d in sorted(small_corpus.iterdir())[:4] for f in sorted(d.iterdir())]
    root = tmp_path_factory.mktemp("four")
    for uid, _, f in utts:
        (root / uid).parent.mkdir(exist_ok=True)
        (root / f"{uid}.flac").symlink_to(f)
    out = root.parent / f"{root.name}-prep"
    info = prepare(root, out, PrepareOptions(**OPTS))
    return {"utts": [(uid, spk, root / f"{uid}.flac") for uid, spk, _ in utts], "out": out, "info": info}


def same_as_folder(out: Path, info: dict, folder: dict) -> None:
    assert json.loads((out / "splits.json").read_text()) == json.loads((folder["out"] / "splits.json").read_text())
    for s in SPLITS:
        np.testing.assert_array_equal(np.load(out / s / "frames.npy"), np.load(folder["out"] / s / "frames.npy"))
    assert info["splits"] == folder["info"]["splits"]
    assert info["fingerprint"] == folder["info"]["fingerprint"]  # the content, not where it was listed


def kaldi_dir(d: Path, wav_scp: list[str], utt2spk: list[str], segments: list[str] | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("".join(f"{line}\n" for line in wav_scp))
    (d / "utt2spk").write_text("".join(f"{line}\n" for line in utt2spk))
    if segments is not None:
        (d / "segments").write_text("".join(f"{line}\n" for line in segments))
    return d


@needs_shared
def test_a_kaldi_dir_prepares_like_the_folder(corpus, tmp_path, capsys):
    d = kaldi_dir(tmp_path / "data", [f"{u} {f}" for u, _, f in corpus["utts"]], [f"{u} {s}" for u, s, _ in corpus["utts"]])
    code, out, err = cli(
        capsys, "prepare", "kaldi", d, tmp_path / "p", "--val-speakers", "1", "--test-speakers", "1", "--seed", "5"
    )
    assert code == 0, err
    assert out == f"{(tmp_path / 'p').resolve()}\n"
    info = json.loads((tmp_path / "p" / "prepare.json").read_text())
    assert info["options"]["layout"] == "kaldi" and info["corpus_dir"] == str(d.resolve())
    same_as_folder(tmp_path / "p", info, corpus)


@needs_shared
def test_lhotse_recordings_and_supervisions_or_cuts_prepare_like_the_folder(corpus, tmp_path):
    from lhotse import CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recs = [Recording.from_file(f, recording_id=u) for u, _, f in corpus["utts"]]
    sups = [SupervisionSegment(u, u, 0.0, r.duration, speaker=s) for (u, s, _), r in zip(corpus["utts"], recs)]
    RecordingSet.from_recordings(recs).to_file(tmp_path / "recordings.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(tmp_path / "supervisions.jsonl.gz")
    info = prepare(
        [tmp_path / "recordings.jsonl.gz", tmp_path / "supervisions.jsonl.gz"],
        tmp_path / "p",
        PrepareOptions(layout="lhotse", **OPTS),
    )
    same_as_folder(tmp_path / "p", info, corpus)
    assert info["corpus_inputs"] == [str(tmp_path / n) for n in ("recordings.jsonl.gz", "supervisions.jsonl.gz")]

    cuts = CutSet.from_cuts(MonoCut(s.id, 0.0, r.duration, 0, supervisions=[s], recording=r) for s, r in zip(sups, recs))
    cuts.to_file(tmp_path / "cuts.jsonl")
    same_as_folder(
        tmp_path / "c", prepare(tmp_path / "cuts.jsonl", tmp_path / "c", PrepareOptions(layout="lhotse", **OPTS)), corpus
    )


def expected_frames(path: Path, a: int, b: int) -> np.ndarray:
    """Samples a:b of a file through the front-end, trimming and the STFT, independently."""
    data, rate = read_raw(path)
    x, _, _ = trim_silence(prepare_samples(data[a:b], rate, StftConfig()).samples, 30.0)
    return power_spectrogram(torch.from_numpy(x), StftConfig()).numpy()


@needs_shared
def test_segments_cut_one_recording_in_two(corpus, tmp_path):
    """Two segments of one file are two utterances with the frames of their spans (each
    normalised by its own peak); their fingerprint follows the spans, and so does a re-run."""
    uid, spk, f = corpus["utts"][0]
    rate, n = sf.info(str(f)).samplerate, sf.info(str(f)).frames
    cut = round(n / rate / 2, 2)
    d = kaldi_dir(tmp_path / "d", [f"rec {f}"], [f"u1 {spk}", f"u2 {spk}"], [f"u1 rec 0 {cut}", f"u2 rec {cut} -1"])
    opts = PrepareOptions(layout="kaldi", test_speakers="all", val_speakers="0")
    info = prepare(d, tmp_path / "p", opts)
    rows = [json.loads(line) for line in (tmp_path / "p" / "test" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["start"], r["end"]) for r in rows] == [("u1", 0.0, cut), ("u2", cut, None)]
    a = round(cut * rate)
    want = np.concatenate([expected_frames(f, 0, a), expected_frames(f, a, n)])
    np.testing.assert_allclose(np.load(tmp_path / "p" / "test" / "frames.npy"), want, rtol=1e-6, atol=1e-6 * want.max())

    # the same spans as lhotse supervisions: the same frames and fingerprint
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    rec = Recording.from_file(f, recording_id="rec")
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "r.jsonl")
    sups = [
        SupervisionSegment("u1", "rec", 0.0, cut, speaker=spk),
        SupervisionSegment("u2", "rec", cut, rec.duration - cut, speaker=spk),
    ]
    SupervisionSet.from_segments(sups).to_file(tmp_path / "s.jsonl")
    lh = prepare(
        [tmp_path / "r.jsonl", tmp_path / "s.jsonl"],
        tmp_path / "l",
        PrepareOptions(layout="lhotse", test_speakers="all", val_speakers="0"),
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "l" / "test" / "frames.npy"), np.load(tmp_path / "p" / "test" / "frames.npy")
    )
    assert lh["fingerprint"] == info["fingerprint"]

    # moving the boundary (same ids, same file) is other data: recomputed, another fingerprint
    (d / "segments").write_text(f"u1 rec 0 {cut + 0.5}\nu2 rec {cut + 0.5} -1\n")
    moved = prepare(d, tmp_path / "p", opts)
    assert not moved["up_to_date"] and moved["fingerprint"] != info["fingerprint"]


# -- broken inputs: one line, exit 1 (a data problem) or 2 (a command-line one) -------------------
@pytest.fixture
def wav(tmp_path) -> Path:
    t = np.arange(16000) / 16000
    return write_wav(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


@pytest.mark.parametrize(
    "wav_scp, utt2spk, needle",
    [
        (["u1 {wav}", "u2 {tmp}/gone.wav"], ["u1 s1", "u2 s2"], "gone.wav does not exist"),
        (["u1 {wav}", "u2 sox {wav} -t wav - remix 1 |"], ["u1 s1", "u2 s2"], "wav.scp: line 2 (u2) is a command"),
        (["u1 {wav}", "u2 {wav}"], ["u1 s1"], "no speaker for 1 utterance(s) of wav.scp (e.g. u2)"),
        (["u1 {wav}", "u1 {wav}"], ["u1 s1"], "line 2: u1 is listed twice"),
        (["u1 {wav}"], ["u1 s1", "u9 s2"], "utterance(s) that are not in wav.scp (e.g. u9)"),
    ],
)
def test_a_broken_kaldi_dir_is_one_line_and_exit_1(tmp_path, capsys, wav, wav_scp, utt2spk, needle):
    d = kaldi_dir(tmp_path / "d", [w.format(wav=wav, tmp=tmp_path) for w in wav_scp], utt2spk)
    code, _, err = cli(capsys, "prepare", "kaldi", d, tmp_path / "o")
    assert code == 1 and needle in one_line(err), err
    assert not (tmp_path / "o").exists()


def test_a_segment_past_its_recording_is_skipped_like_an_unreadable_file(tmp_path, wav):
    d = kaldi_dir(tmp_path / "d", [f"rec {wav}"], ["u1 s1", "u2 s1"], ["u1 rec 0 0.9", "u2 rec 0.5 3.0"])
    info = prepare(d, tmp_path / "o", PrepareOptions(layout="kaldi", test_speakers="all", val_speakers="0", trim=False))
    assert info["splits"]["test"]["utterances"] == 1
    assert "ends past the end of the file" in info["splits"]["test"]["skipped"][0]["reason"]


def lhotse_files(tmp_path: Path, source: str, speaker: str | None = "s1") -> tuple[Path, Path]:
    from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    rec = Recording("r1", [AudioSource("file", [0], source)], 16000, 16000, 1.0)
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "rec.jsonl.gz")
    SupervisionSet.from_segments([SupervisionSegment("u1", "r1", 0.0, 1.0, speaker=speaker)]).to_file(tmp_path / "sup.jsonl.gz")
    return tmp_path / "rec.jsonl.gz", tmp_path / "sup.jsonl.gz"


def test_broken_lhotse_manifests_are_one_line_and_exit_1(tmp_path, capsys, wav):
    rec, sup = lhotse_files(tmp_path, str(tmp_path / "gone.flac"))
    code, _, err = cli(capsys, "prepare", "lhotse", rec, sup, tmp_path / "o")
    assert code == 1 and "recording r1: audio file" in one_line(err) and "gone.flac does not exist" in err
    code, _, err = cli(capsys, "prepare", "lhotse", rec, tmp_path / "o")  # a RecordingSet where the cuts belong
    assert code == 1 and "a RecordingSet where CUTS (a CutSet) belongs" in one_line(err)
    rec, sup = lhotse_files(tmp_path, str(wav), speaker=None)
    code, _, err = cli(capsys, "prepare", "lhotse", rec, sup, tmp_path / "o")
    assert code == 1 and "supervision u1 has no speaker" in one_line(err)
    assert not (tmp_path / "o").exists()


def test_without_lhotse_one_line_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lhotse", None)  # `import lhotse` raises ImportError
    (tmp_path / "cuts.jsonl").write_text("{}\n")
    code, _, err = cli(capsys, "prepare", "lhotse", tmp_path / "cuts.jsonl", tmp_path / "o")
    assert code == 1 and "pip install sdmvae[lhotse]" in one_line(err)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["kaldi", "{tmp}/d"], "prepare kaldi takes DATA_DIR OUT_DIR (1 path given)"),
        (["folder", "{tmp}/a", "{tmp}/b", "{tmp}/c"], "prepare folder takes CORPUS_DIR OUT_DIR (3 paths given)"),
        (["lhotse", "a", "b", "c", "d"], "prepare lhotse takes CUTS OUT_DIR or RECORDINGS SUPERVISIONS OUT_DIR"),
    ],
)
def test_the_wrong_number_of_paths_is_a_usage_error(tmp_path, capsys, args, needle):
    code, _, err = cli(capsys, "prepare", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and needle in one_line(err), err


@needs_shared
def test_evaluate_scores_each_segment_alone(corpus, tmp_path):
    """`evaluate` on a split of segments resynthesises and scores each span, not the whole
    recording: the two halves of one file get their own scores."""
    from sdmvae_cli.evaluation.evaluate import evaluate_checkpoint

    uid, spk, f = corpus["utts"][0]
    rate, n = sf.info(str(f)).samplerate, sf.info(str(f)).frames
    cut = round(n / rate / 2, 2)
    d = kaldi_dir(tmp_path / "d", [f"rec {f}"], [f"u1 {spk}", f"u2 {spk}"], [f"u1 rec 0 {cut}", f"u2 rec {cut} -1"])
    prepare(d, tmp_path / "p", PrepareOptions(layout="kaldi", test_speakers="all", val_speakers="0"))
    out = evaluate_checkpoint("vae-m64", tmp_path / "p", split="test", out_dir=tmp_path / "ev")
    rows = {r["id"]: r for r in csv.DictReader(open(Path(out.out_dir) / "per_file.csv", newline=""))}
    assert set(rows) == {"u1", "u2"} and not any(rows[u]["error"] for u in rows)
    # read as whole recordings (the old reading) both rows would be the same audio, same scores
    assert all(rows["u1"][k] != rows["u2"][k] for k in ("si_sdr", "estoi", "hoyer"))
