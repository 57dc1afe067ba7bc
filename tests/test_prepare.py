import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sdmvae_cli.corpus import builtin_tcd_timit_split
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.prepare import PrepareOptions, prepare
from sdmvae_cli.stft import StftConfig, power_spectrogram
from sdmvae_cli.audio import load_audio, trim_silence
from sdmvae_cli.synthetic import source_filter_speech

from conftest import dev_files, needs_shared, write_wav

CLI = [sys.executable, "-m", "sdmvae_cli"]


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def manifests(out):
    return {s: [json.loads(l) for l in (out / s / "manifest.jsonl").read_text().splitlines()] for s in ("train", "validation", "test")}


@needs_shared
def test_prepare_folder_splits_frames_and_resume(small_corpus, tmp_path):
    out = tmp_path / "prep"
    opts = PrepareOptions(val_speakers="2", test_speakers="0.25", seed=3)
    info = prepare(small_corpus, out, opts)
    splits = json.loads((out / "splits.json").read_text())
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [4, 2, 2]
    assert not set(splits["train"]) & set(splits["validation"]) and not set(splits["test"]) & (set(splits["train"]) | set(splits["validation"]))
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
    old = json.loads((out / "prepare.json").read_text()) | {"fingerprint": hashlib.sha256("".join(keys).encode()).hexdigest()[:16]}
    (out / "prepare.json").write_text(json.dumps(old))
    return old


def test_an_older_preparation_is_rekeyed_without_recomputing_and_its_runs_still_resume(tmp_path):
    """A preparation keyed the old way (mtimes in its fingerprint) gets a content fingerprint on
    its next run, frames untouched; a run trained on the old fingerprint still resumes."""
    from sdmvae_cli.checkpoint import best_by_validation, read_checkpoint, save_checkpoint
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.train import TrainOptions, train

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
    res = train(out, ModelConfig(model="vae", latent=4, hidden=[16]), TrainOptions(epochs=2, lr=1e-3, batch_size=16, device="cpu"),
                tmp_path / "run", resume=True)
    assert len(res.history) == 2
    train(out, ModelConfig(model="vae", latent=4, hidden=[16]), topts, tmp_path / "after")
    assert read_checkpoint(tmp_path / "after" / "best.pt")["data_fingerprint"] == content
    choice = best_by_validation([tmp_path / "before" / "best.pt", tmp_path / "after" / "best.pt"])  # same data
    assert set(choice.losses) == {str(tmp_path / "before" / "best.pt"), str(tmp_path / "after" / "best.pt")}
    ck = read_checkpoint(last)
    save_checkpoint(last, ck | {"data_fingerprint": "something else"})
    with pytest.raises(SdmvaeError, match="fingerprint differs"):
        train(out, ModelConfig(model="vae", latent=4, hidden=[16]), TrainOptions(epochs=3, lr=1e-3, batch_size=16, device="cpu"),
              tmp_path / "run", resume=True)
    prepare(corpus, out, PrepareOptions(val_speakers="1", test_speakers="1", force=True))
    # recomputed from the same audio: the same content fingerprint, so its aliases stay valid
    assert json.loads((out / "prepare.json").read_text())["previous_fingerprints"] == [old]


def test_a_stale_prepare_json_earns_no_fingerprint_alias(tmp_path):
    """A run killed after a split was recomputed but before prepare.json was rewritten leaves
    the old fingerprint on disk: the next (up-to-date) run must not adopt it as an alias of
    the new frames, or runs trained on the old audio would resume on the new."""
    from sdmvae_cli.prepare import content_key

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
