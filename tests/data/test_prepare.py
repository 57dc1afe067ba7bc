import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, dev_files, needs_shared, write_wav

from sdmvae_cli.audio.io import load_audio, trim_silence
from sdmvae_cli.audio.stft import StftConfig, power_spectrogram
from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import builtin_tcd_timit_split
from sdmvae_cli.data.prepare import PrepareOptions, prepare

CLI = [sys.executable, "-m", "sdmvae_cli"]


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def manifests(out):
    return {
        s: [json.loads(l) for l in (out / s / "manifest.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")
    }


@needs_shared
def test_prepare_folder_splits_frames_and_resume(small_corpus, tmp_path):
    out = tmp_path / "prep"
    opts = PrepareOptions(val_speakers="2", test_speakers="0.25", seed=3)
    info = prepare(small_corpus, out, opts)
    splits = json.loads((out / "splits.json").read_text())
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [4, 2, 2]
    assert not set(splits["train"]) & set(splits["validation"]) and not set(splits["test"]) & (
        set(splits["train"]) | set(splits["validation"])
    )
    m = manifests(out)
    for s, entries in m.items():
        frames = np.load(out / s / "frames.npy", mmap_mode="r")
        assert frames.dtype == np.float32 and frames.shape[1] == 513
        assert sum(e["n_frames"] for e in entries) == frames.shape[0] == info["splits"][s]["frames"]
        assert {e["speaker"] for e in entries} == set(splits[s])
    # the stored frames equal an independent computation for one utterance
    e = m["train"][1]
    a = load_audio(e["path"], StftConfig())
    x, start, stop = trim_silence(a.samples, 30.0)
    assert (start, stop) == (e["trim_start"], e["trim_stop"])
    ref = power_spectrogram(torch.from_numpy(x), StftConfig()).numpy()
    got = np.load(out / "train" / "frames.npy")[e["frame_offset"] : e["frame_offset"] + e["n_frames"]]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * ref.max())
    p = json.loads((out / "prepare.json").read_text())
    assert p["stft"] == StftConfig().to_dict() and p["options"]["seed"] == 3

    # idempotent: same options -> nothing recomputed
    mtime = (out / "train" / "frames.npy").stat().st_mtime_ns
    again = prepare(small_corpus, out, opts)
    assert again["up_to_date"] and (out / "train" / "frames.npy").stat().st_mtime_ns == mtime
    # an interrupted run (one split not marked done) redoes that split only
    (out / "test" / ".done.json").unlink()
    test_mtime = (out / "test" / "frames.npy").stat().st_mtime_ns
    again = prepare(small_corpus, out, opts)
    assert not again["up_to_date"] and (out / "train" / "frames.npy").stat().st_mtime_ns == mtime
    assert (out / "test" / "frames.npy").stat().st_mtime_ns != test_mtime
    # --force redoes all; parallel workers give identical frames
    prepare(small_corpus, out, PrepareOptions(val_speakers="2", test_speakers="0.25", seed=3, force=True, jobs=2))
    assert (out / "train" / "frames.npy").stat().st_mtime_ns != mtime
    np.testing.assert_array_equal(np.load(out / "train" / "frames.npy"), np.load(out / "train" / "frames.npy"))
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("frames.raw"))


@needs_shared
def test_prepare_parallel_matches_serial(small_corpus, tmp_path):
    a = prepare(small_corpus, tmp_path / "a", PrepareOptions(jobs=1))
    b = prepare(small_corpus, tmp_path / "b", PrepareOptions(jobs=2))
    assert a["splits"] == b["splits"]
    for s in ("train", "validation", "test"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / s / "frames.npy"), np.load(tmp_path / "b" / s / "frames.npy"))


@needs_shared
def test_prepare_cli_on_shared_dev_layout(tmp_path):
    """`sdmvae prepare folder ../shared/data/dev OUT` on a copy of its nested layout (2 sub-corpora)."""
    root = tmp_path / "dev"
    for f in dev_files(30, 1):
        d = root / f.parent.parent.name / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        (d / f.name).symlink_to(f)
    r = run_cli("prepare", "folder", root, tmp_path / "out", "--val-speakers", "3", "--test-speakers", "3", "-j", "2")
    assert r.returncode == 0, r.stderr
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert sum(len(v) for v in splits.values()) == 26
    assert any(s.startswith("speechocean762/") for v in splits.values() for s in v)
    assert "frames" in r.stderr and r.stdout == f"{(tmp_path / 'out').resolve()}\n"  # the table for people, the path for scripts


@needs_shared
def test_tcd_timit_layout_and_official_split(tmp_path):
    """A fake TCD-TIMIT tree (volunteers/<ID>/straightcam/*.wav) built from shared audio."""
    split = builtin_tcd_timit_split()
    train_ids = ["01M", "02M", "03F"]
    ids = split["test"] + split["validation"] + train_ids
    files = dev_files(26, 3)
    root = tmp_path / "tcd"
    for i, spk in enumerate(ids):
        for j in range(2):
            x, r = sf.read(str(files[(2 * i + j) % len(files)]), frames=16000 * 2)
            write_wav(root / "volunteers" / spk / "straightcam" / f"sx{j}.wav", x, r)
    write_wav(root / "lipspeakers" / "Lipspkr1" / "straightcam" / "sa1.wav", x, r)
    r = run_cli("prepare", "tcd-timit", root, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert got["test"] == sorted(split["test"]) and got["validation"] == sorted(split["validation"])
    assert got["train"] == train_ids  # lipspeakers excluded by default
    assert "paper's protocol has 39" in r.stderr  # 3 train volunteers, not 39: warned
    # a listed test volunteer missing -> clear error
    import shutil

    shutil.rmtree(root / "volunteers" / split["test"][0])
    r = run_cli("prepare", "tcd-timit", root, tmp_path / "out2")
    assert r.returncode == 1 and split["test"][0] in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _tiny_tree(root, n_spk=4):
    for s in range(n_spk):
        for u in range(2):
            write_wav(root / f"spk{s}" / f"u{u}.wav", source_filter_speech(1.0, seed=10 * s + u))
    return root


def test_bad_files_are_skipped_and_summarised(tmp_path):
    root = _tiny_tree(tmp_path / "c")
    (root / "spk0" / "corrupt.wav").write_bytes(b"garbage")
    sf.write(str(root / "spk1" / "silent.wav"), np.zeros(16000, dtype=np.float32), 16000)
    sf.write(str(root / "spk2" / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    info = prepare(root, tmp_path / "o", PrepareOptions(val_speakers="spk1", test_speakers="spk2"))
    reasons = [s["reason"] for v in info["splits"].values() for s in v["skipped"]]
    assert len(reasons) == 3
    assert any("cannot read" in r for r in reasons) and any("silent" in r for r in reasons) and any("empty" in r for r in reasons)


@pytest.mark.parametrize(
    "setup,args,needle",
    [
        (lambda r: None, ["folder", "{root}/missing", "{out}"], "does not exist"),
        (lambda r: r.mkdir(), ["folder", "{root}", "{out}"], "no audio files"),
        (lambda r: _tiny_tree(r), ["folder", "{root}", "{out}", "--split-file", "{root}/split.json"], "in both"),
        (lambda r: _tiny_tree(r), ["folder", "{root}", "{out}", "--val-speakers", "4"], "cannot take 4"),
        (lambda r: _tiny_tree(r), ["nonsense", "{root}", "{out}"], "is not one of"),  # a usage error (exit 2), checked by typer
        (lambda r: _tiny_tree(r), ["tcd-timit", "{root}", "{out}"], "no 'volunteers' directory"),
    ],
)
def test_prepare_cli_errors_one_line(tmp_path, setup, args, needle):
    root = tmp_path / "c"
    setup(root)
    if root.exists():
        (root / "split.json").write_text(json.dumps({"train": ["spk0", "spk1"], "validation": ["spk1"], "test": ["spk2"]}))
    r = run_cli("prepare", *[a.format(root=root, out=tmp_path / "o") for a in args])
    assert r.returncode != 0
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_all_files_bad_fails_the_split(tmp_path):
    root = tmp_path / "c"
    for s in range(3):
        sf.write(str(write_wav(root / f"s{s}" / "x.wav", np.zeros(10))), np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(SdmvaeError, match="no usable audio"):
        prepare(root, tmp_path / "o", PrepareOptions(val_speakers="1", test_speakers="1"))
    assert not (tmp_path / "o" / "prepare.json").exists()
    assert not list((tmp_path / "o").rglob("frames.npy"))


def _tiny_corpus(d, seeds=(30, 31, 32)):
    for s, seed in enumerate(seeds):
        write_wav(d / f"s{s}" / "u.wav", source_filter_speech(1.5, seed=seed))
    return d


def test_fingerprint_is_the_content_not_the_place_or_the_time(tmp_path):
    """Two copies of one corpus (another folder, other mtimes: a GPU box) share a fingerprint;
    changing one file's samples changes it; manifests record each file's sha256."""
    import hashlib
    import shutil

    opts = PrepareOptions(val_speakers="1", test_speakers="1")
    a = _tiny_corpus(tmp_path / "a")
    fa = prepare(a, tmp_path / "pa", opts)["fingerprint"]
    b = Path(shutil.copytree(a, tmp_path / "elsewhere" / "b"))
    for f in b.rglob("*.wav"):
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert prepare(b, tmp_path / "pb", opts)["fingerprint"] == fa
    rows = [r for rs in manifests(tmp_path / "pb").values() for r in rs]
    assert rows and all(r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() for r in rows)
    write_wav(b / "s1" / "u.wav", source_filter_speech(1.5, seed=99))
    assert prepare(b, tmp_path / "pb", opts)["fingerprint"] != fa
    assert prepare(a, tmp_path / "pa", PrepareOptions(val_speakers="1", test_speakers="1", top_db=20))["fingerprint"] != fa


def _as_format_1(out):
    """Make a preparation look like one by sdmvae before content keys: no content_key in the
    done-markers, and the format-1 fingerprint (sha256 of the split keys, which hold mtimes)."""
    import hashlib

    keys = []
    for s in ("train", "validation", "test"):
        done = json.loads((out / s / ".done.json").read_text())
        del done["content_key"]
        (out / s / ".done.json").write_text(json.dumps(done))
        keys.append(done["key"])
    old = json.loads((out / "prepare.json").read_text()) | {
        "fingerprint": hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
    }
    (out / "prepare.json").write_text(json.dumps(old))
    return old


def test_an_older_preparation_is_rekeyed_without_recomputing_and_its_runs_still_resume(tmp_path):
    """A preparation keyed the old way (mtimes in its fingerprint) gets a content fingerprint on
    its next run, frames untouched; a run trained on the old fingerprint still resumes."""
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.nets.checkpoint import read_checkpoint, save_checkpoint
    from sdmvae_cli.training.selection import best_by_validation
    from sdmvae_cli.training.train import TrainOptions, train

    opts = PrepareOptions(val_speakers="1", test_speakers="1")
    corpus, out = _tiny_corpus(tmp_path / "c"), tmp_path / "p"
    content = prepare(corpus, out, opts)["fingerprint"]
    old = _as_format_1(out)["fingerprint"]
    assert old != content
    topts = TrainOptions(epochs=1, lr=1e-3, batch_size=16, device="cpu")
    train(out, ModelConfig(model="vae", latent=4, hidden=[16]), topts, tmp_path / "run")
    train(out, ModelConfig(model="vae", latent=4, hidden=[16]), topts, tmp_path / "before")  # never resumed
    last = tmp_path / "run" / "last.pt"
    assert read_checkpoint(last)["data_fingerprint"] == old

    mtime = (out / "train" / "frames.npy").stat().st_mtime_ns
    again = prepare(corpus, out, opts)
    assert again["up_to_date"] and (out / "train" / "frames.npy").stat().st_mtime_ns == mtime
    assert again["fingerprint"] == content and again["previous_fingerprints"] == [old]
    assert prepare(corpus, out, opts)["previous_fingerprints"] == [old]  # kept over re-runs
    res = train(
        out,
        ModelConfig(model="vae", latent=4, hidden=[16]),
        TrainOptions(epochs=2, lr=1e-3, batch_size=16, device="cpu"),
        tmp_path / "run",
        resume=True,
    )
    assert len(res.history) == 2
    train(out, ModelConfig(model="vae", latent=4, hidden=[16]), topts, tmp_path / "after")
    assert read_checkpoint(tmp_path / "after" / "best.pt")["data_fingerprint"] == content
    choice = best_by_validation([tmp_path / "before" / "best.pt", tmp_path / "after" / "best.pt"])  # same data
    assert set(choice.losses) == {str(tmp_path / "before" / "best.pt"), str(tmp_path / "after" / "best.pt")}
    ck = read_checkpoint(last)
    save_checkpoint(last, ck | {"data_fingerprint": "something else"})
    with pytest.raises(SdmvaeError, match="fingerprint differs"):
        train(
            out,
            ModelConfig(model="vae", latent=4, hidden=[16]),
            TrainOptions(epochs=3, lr=1e-3, batch_size=16, device="cpu"),
            tmp_path / "run",
            resume=True,
        )
    prepare(corpus, out, PrepareOptions(val_speakers="1", test_speakers="1", force=True))
    # recomputed from the same audio: the same content fingerprint, so its aliases stay valid
    assert json.loads((out / "prepare.json").read_text())["previous_fingerprints"] == [old]


def test_a_stale_prepare_json_earns_no_fingerprint_alias(tmp_path):
    """A run killed after a split was recomputed but before prepare.json was rewritten leaves
    the old fingerprint on disk: the next (up-to-date) run must not adopt it as an alias of
    the new frames, or runs trained on the old audio would resume on the new."""
    from sdmvae_cli.data.keys import content_key

    opts = PrepareOptions(val_speakers="1", test_speakers="1")
    corpus, out = _tiny_corpus(tmp_path / "c"), tmp_path / "p"
    prepare(corpus, out, opts)
    legacy = _as_format_1(out)
    train_speaker = json.loads((out / "splits.json").read_text())["train"][0]
    write_wav(corpus / train_speaker / "u.wav", source_filter_speech(1.5, seed=77))  # new audio
    info = prepare(corpus, out, opts)
    assert not info["up_to_date"] and "previous_fingerprints" not in info
    (out / "prepare.json").write_text(json.dumps(legacy))  # as if killed before the last write
    again = prepare(corpus, out, opts)
    assert again["up_to_date"] and again["fingerprint"] == info["fingerprint"] and "previous_fingerprints" not in again
    # a file that fails to decode is part of the identity, not only its bytes
    assert content_key([("u", "s", "ab", False)], opts) != content_key([("u", "s", "ab", True)], opts)
    assert content_key([("u", "s", "ab", False)], opts) == content_key([("u", "s", "ab", False)], PrepareOptions(seed=5))


# -- issue 23 (11): a split file that is not a split, and options the split would ignore ----
@pytest.mark.parametrize(
    "content,needle",
    [
        (b'["spk1", "spk2"]', "a JSON list, expected an object"),
        (b"3", "a JSON number, expected an object"),
        (b'\xff\xfe{"test": ["spk1"]}', "not UTF-8 text"),
        (b"{not json", "not valid JSON"),
        (b'{"valid": ["spk1"], "test": ["spk2"]}', "unknown key(s) 'valid'; valid keys: train, validation, test"),
        (
            b'{"validation": "spk1", "test": ["spk2"]}',
            "'validation' must be a list of speaker ids (non-empty strings without surrounding spaces), got a string",
        ),
        (b'{"validation": ["spk1"], "test": [2]}', "got an entry 2 (number)"),
        (
            b'{"validation": ["spk1"], "test": null}',
            "'test' must be a list of speaker ids (non-empty strings without surrounding spaces), got a null",
        ),
        (b'{"validation": ["spk1"], "test": [null]}', "got an entry null (null)"),
        (b'{"validation": [" spk1"], "test": ["spk2"]}', 'got an entry " spk1" (string)'),
        (b'{"validation": ["spk1", "spk1"], "test": ["spk2"]}', "'validation' lists 'spk1' twice"),
        (b'{"validation": ["spk1"], "test": ["spk2"], "test": ["spk3"]}', "key(s) 'test' given twice"),
    ],
)
def test_a_malformed_split_file_is_one_line_and_exit_2(tmp_path, capsys, content, needle):
    from sdmvae_cli.cli.app import run

    root = _tiny_tree(tmp_path / "c")
    (tmp_path / "split.json").write_bytes(content)
    code = run(["prepare", "folder", str(root), str(tmp_path / "o"), "--split-file", str(tmp_path / "split.json")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_split_file_comments_are_allowed_and_a_string_is_not_an_evaluation_only_split(tmp_path):
    from sdmvae_cli.data.corpus import load_split_file

    f = tmp_path / "split.json"
    f.write_text(json.dumps({"_comment": "why these speakers", "validation": ["a"], "test": ["b"]}))
    assert load_split_file(f) == {"train": None, "validation": ["a"], "test": ["b"]}
    f.write_text(json.dumps({"test": ["b"]}))
    assert load_split_file(f) == {"train": [], "validation": [], "test": ["b"]}  # evaluation only, as documented
    f.write_text(json.dumps({"validation": "a", "test": ["b"]}))  # was silently an evaluation-only preparation
    with pytest.raises(SdmvaeError, match="must be a list"):
        load_split_file(f)


@pytest.mark.parametrize(
    "layout,extra,needle",
    [
        ("folder", ["--split-file", "{split}", "--val-speakers", "3"], "--val-speakers is an option of a random speaker split"),
        ("folder", ["--split-file", "{split}", "--seed", "4", "--test-speakers", "1"], "--test-speakers, --seed are options"),
        ("folder", ["--test-only", "--val-speakers", "1"], "chosen by --test-only"),
        ("folder", ["--test-only", "--split-file", "{split}"], "give one of them"),
        ("tcd-timit", ["--val-speakers", "2"], "tcd-timit layout's built-in speaker split"),
    ],
)
def test_options_the_split_would_ignore_are_refused(tmp_path, capsys, layout, extra, needle):
    from sdmvae_cli.cli.app import run

    root = _tiny_tree(tmp_path / "c")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": ["spk1"], "test": ["spk2"]}))
    code = run(["prepare", layout, str(root), str(tmp_path / "o"), *[a.format(split=split) for a in extra]])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_test_only_is_honoured_for_tcd_timit(tmp_path):
    """--test-only with tcd-timit used to give the built-in train/validation/test split silently."""
    from sdmvae_cli.cli.app import run

    for spk in ("01M", "09F"):
        write_wav(tmp_path / "c" / "volunteers" / spk / "straightcam" / "sa1.wav", source_filter_speech(1.0, seed=1))
    assert run(["prepare", "tcd-timit", str(tmp_path / "c"), str(tmp_path / "o"), "--test-only"]) == 0
    assert json.loads((tmp_path / "o" / "splits.json").read_text()) == {"train": [], "validation": [], "test": ["01M", "09F"]}


@needs_shared
def test_near_full_scale_utterances_are_reported_not_dropped(tmp_path, caplog):
    """Issue 24: the utterance whose loud onset made the one-sample validation loss heavy-tailed
    (LibriSpeech 1963-142393-0000, peak >= 0.99 of full scale) is listed per split in
    prepare.json and named in one warning line; it is kept. The peaks are those soundfile reads."""
    import soundfile as sf

    from sdmvae_cli.audio.levels import NEAR_FULL_SCALE

    root = REPO.parent / "shared" / "data" / "librispeech-clean-251"
    picks = [root / "ls1963" / "1963-142393-0000.flac"] + sorted(root.glob("ls1*/*.flac"))[:5]
    corpus = tmp_path / "c"
    for f in picks:
        (corpus / f.parent.name).mkdir(parents=True, exist_ok=True)
        (corpus / f.parent.name / f.name).symlink_to(f)
    peaks = {f.stem: float(abs(sf.read(str(f))[0]).max()) for f in picks}
    loud = {k for k, v in peaks.items() if v >= NEAR_FULL_SCALE}
    assert "1963-142393-0000" in loud
    with caplog.at_level("WARNING", logger="sdmvae"):
        info = prepare(corpus, tmp_path / "p", PrepareOptions(val_speakers="1", test_speakers="0", jobs=1))
    by_split = info["level_check"]["splits"]
    listed = {h["id"].split("/")[-1]: h["peak"] for hits in by_split.values() for h in hits}
    assert set(listed) == loud and all(abs(listed[k] - peaks[k]) < 1e-4 for k in loud)
    assert json.loads((tmp_path / "p" / "prepare.json").read_text())["level_check"]["splits"] == by_split
    warnings = [r.getMessage() for r in caplog.records if "full scale" in r.getMessage()]
    assert len(warnings) == len(by_split) and any("1963-142393-0000" in w for w in warnings)  # one line per split
    assert sum(v["utterances"] for v in info["splits"].values()) == len(picks)  # kept
