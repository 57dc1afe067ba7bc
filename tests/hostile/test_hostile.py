"""Hostile-input battery: every command x bad audio, bad checkpoints, bad corpora, bad options
and bad destinations (in-process through ``cli.run``, fast); the faults that need a real process
(segfaulting metric, Ctrl-C, kill -9) are in test_hostile_faults.py.

Every case asserts the promises of the README ("What sdmvae promises"): one clear line on
stderr, the right exit status (2 usage, 1 failure), no partial output, no input or earlier
result changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli, one_line, write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech

# -- helpers -------------------------------------------------------------------------------


def fails(capsys, code: int, needle: str, *args) -> str:
    """Run; assert the exit status, one line, and that ``needle`` (case-insensitive) is in it."""
    got, _, err = cli(capsys, *args)
    line = one_line(err)
    assert got == code, f"exit {got} (expected {code}): {line}"
    assert needle.lower() in line.lower(), line
    return line


def digest(paths) -> dict[str, str]:
    """Content hash of every file under the given paths: 'nothing changed' made checkable."""
    out = {}
    for p in map(Path, paths):
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())) if p.exists() else []:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def no_temporaries(*dirs) -> None:
    for d in dirs:
        if Path(d).exists():
            left = [p for p in Path(d).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".sdmvae-probe")]
            assert not left, left


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny trained checkpoint, a tiny prepared corpus, and a folder of good and bad audio."""
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared
    from sdmvae_cli.data.prepare import PrepareOptions, prepare
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.training.train import TrainOptions, train

    d = tmp_path_factory.mktemp("hostile")
    syn = make_synthetic_prepared(d / "syn", 600, 200, 100)
    train(
        syn,
        ModelConfig(model="vae", latent=8, hidden=[32]),
        TrainOptions(epochs=1, lr=1e-3, batch_size=64, device="cpu"),
        d / "run",
    )
    corpus = d / "corpus"
    for s in range(3):
        write_wav(corpus / f"s{s}" / "u.wav", source_filter_speech(1.5, seed=30 + s))
    prepare(corpus, d / "prep", PrepareOptions(val_speakers="1", test_speakers="1"))
    a = d / "audio"
    x = source_filter_speech(1.0, seed=7)
    write_wav(a / "good.wav", x)
    (a / "empty.wav").parent.mkdir(exist_ok=True)
    sf.write(str(a / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    (a / "text.wav").write_text("this is not audio\n")
    full = (a / "good.wav").read_bytes()
    (a / "truncated.wav").write_bytes(full[:30])  # cut inside the header
    sf.write(str(a / "nan.wav"), np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    write_wav(a / "silent.wav", np.zeros(16000))
    write_wav(a / "tiny.wav", x[:100])
    write_wav(a / "rate1.wav", x[:4000], rate=1)
    return {"dir": d, "ckpt": d / "run" / "best.pt", "prep": d / "prep", "corpus": corpus, "audio": a, "x": x}


BAD_AUDIO = {
    "empty.wav": "empty",
    "text.wav": "cannot read audio",
    "truncated.wav": "cannot read audio",
    "nan.wav": "nan",
    "silent.wav": "silent",
    "tiny.wav": "too short",
    "rate1.wav": "sample rate",
    "missing.wav": "no such file",
}


# -- bad audio -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_resynth_bad_audio_one_line_no_output(world, tmp_path, capsys, name):
    src = world["audio"] / name
    before = digest([world["audio"]])
    fails(capsys, 1, BAD_AUDIO[name], "resynth", src, tmp_path / "o.wav", "--model", world["ckpt"])
    assert not (tmp_path / "o.wav").exists() and digest([world["audio"]]) == before
    no_temporaries(tmp_path)


@pytest.mark.parametrize("name", ["empty.wav", "text.wav", "nan.wav", "tiny.wav"])
def test_plots_bad_audio(world, tmp_path, capsys, name):
    for kind in ("spectrogram", "codes"):
        fails(capsys, 1, BAD_AUDIO[name], "plot", kind, world["audio"] / name, tmp_path / "p.png", "--model", world["ckpt"])
    assert not list(tmp_path.iterdir())


def test_resynth_folder_with_bad_files_reports_each_once(world, tmp_path, capsys):
    code, out, err = cli(capsys, "resynth", world["audio"], tmp_path / "out", "--model", world["ckpt"])
    assert code == 1
    lines = err.strip().splitlines()
    failed = [line for line in lines if line.startswith("failed:")]
    n_bad = len([n for n in BAD_AUDIO if (world["audio"] / n).exists()])
    assert len(failed) == n_bad and len(set(failed)) == n_bad  # each bad file once
    assert lines[-1].startswith("error:") and f"{n_bad} of {n_bad + 1}" in lines[-1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.wav"]  # only the good file
    no_temporaries(tmp_path)


@pytest.mark.parametrize(
    "rate,subtype,channels",
    [
        (8000, "PCM_U8", 1),
        (44100, "PCM_24", 2),
        (22050, "PCM_32", 6),
        (48000, "DOUBLE", 1),
        (11025, "ULAW", 1),
        (96000, "FLOAT", 1),
    ],
)
def test_odd_rates_widths_and_channels_keep_rate_and_length(world, tmp_path, capsys, rate, subtype, channels):
    x = 0.5 * source_filter_speech(0.8, rate=rate, seed=3)
    src = tmp_path / "in.wav"
    sf.write(str(src), np.stack([x] * channels, axis=1), rate, subtype=subtype)
    code, _, err = cli(capsys, "resynth", src, tmp_path / "o.wav", "--model", world["ckpt"])
    assert code == 0, err
    y, r = sf.read(str(tmp_path / "o.wav"))
    assert r == rate and y.shape == (x.size,) and np.isfinite(y).all()


def test_unicode_and_markup_paths(world, tmp_path, capsys):
    d = tmp_path / "ünï cødé 語 [bold]x[/]"
    src = write_wav(d / "ça [red]va[/].wav", world["x"])
    code, out, err = cli(capsys, "resynth", src, d / "sortie [/].wav", "--model", world["ckpt"])
    assert code == 0, err and (d / "sortie [/].wav").exists()
    code, out, err = cli(capsys, "plot", "spectrogram", src, d / "spec [/x].png", "--model", world["ckpt"])
    assert code == 0 and "[/x]" in out  # printed literally, not parsed as markup
    fails(
        capsys, 1, "silent", "resynth", write_wav(d / "tišina [/].wav", np.zeros(16000)), d / "o2.wav", "--model", world["ckpt"]
    )


def test_clipped_input_is_scaled_to_full_scale_with_a_warning(world, tmp_path, capsys):
    loud = np.clip(8 * source_filter_speech(1.5, seed=9), -1, 1)  # hard clipped: flat tops at +-1
    src = write_wav(tmp_path / "clipped.wav", loud)
    code, _, err = cli(capsys, "resynth", src, tmp_path / "o.flac", "--model", world["ckpt"])
    assert code == 0, err
    y, _ = sf.read(str(tmp_path / "o.flac"))
    from sdmvae_cli.audio.io import load_audio
    from sdmvae_cli.inference.resynth import FULL_SCALE, load_for_resynth, model_power_fn, resynthesise_audio

    lm = load_for_resynth(str(world["ckpt"]))
    raw = resynthesise_audio(load_audio(src, lm.stft), lm.stft, model_power_fn(lm)).output
    if np.abs(raw).max() > FULL_SCALE:  # the case the rule is for: announced, and one gain, no clipping
        line = one_line(err)
        assert line.startswith("warning:") and "full scale" in line
        assert np.abs(y).max() == pytest.approx(FULL_SCALE, abs=2e-4)
        g = np.abs(y).max() / np.abs(raw).max()
        np.testing.assert_allclose(y, raw * g, atol=2e-4)  # a constant gain (FLAC 16-bit quantisation)
    else:
        assert err.strip() == ""


def test_evaluate_folders_bad_estimates_are_per_file_failures(world, tmp_path, capsys):
    ref, est = tmp_path / "ref", tmp_path / "est"
    x = source_filter_speech(2.0, seed=11)
    for name in ("good", "empty", "text", "nan", "muted"):
        write_wav(ref / f"{name}.wav", x)
    write_wav(est / "good.wav", x + 0.01 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32))
    sf.write(str(est / "empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    (est / "text.wav").write_text("not audio")
    sf.write(str(est / "nan.wav"), np.full(x.size, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    write_wav(est / "muted.wav", np.zeros(x.size))
    code, out, err = cli(capsys, "evaluate", "--ref", ref, "--est", est, "--out", tmp_path / "ev", "-j", "1", "--json")
    assert code == 1
    s = json.loads(out)
    reasons = {f["id"]: f["reason"] for f in s["failures"]}
    assert s["scored"] == 1 and set(reasons) == {"empty", "text", "nan", "muted"}
    assert "estimate is silent" in reasons["muted"] and "nan" in reasons["nan"].lower()
    assert [line for line in err.splitlines() if line.startswith("failed:")].__len__() == 4
    assert (tmp_path / "ev" / "summary.json").exists() and not (tmp_path / "ev" / "per_file.partial.jsonl").exists()


def test_prepare_skips_bad_audio_with_reasons(world, tmp_path, capsys):
    corpus = tmp_path / "c"
    for s in range(3):
        write_wav(corpus / f"s{s}" / "good.wav", source_filter_speech(1.5, seed=40 + s))
    import shutil

    for name in ("empty.wav", "text.wav", "nan.wav", "silent.wav", "tiny.wav"):
        shutil.copy(world["audio"] / name, corpus / "s0" / name)
    code, out, err = cli(capsys, "prepare", "folder", corpus, tmp_path / "p", "--val-speakers", "1", "--test-speakers", "1")
    assert code == 0, err
    skipped = {
        s["id"]: s["reason"]
        for sp in json.loads((tmp_path / "p" / "prepare.json").read_text())["splits"].values()
        for s in sp["skipped"]
    }
    assert {k.split("/")[-1] for k in skipped} == {"empty", "text", "nan", "silent", "tiny"}
    no_temporaries(tmp_path / "p")


# -- bad checkpoints -----------------------------------------------------------------------
def _bad_checkpoints(world, d: Path) -> dict[str, tuple[Path, str]]:
    good = world["ckpt"]
    ck = torch.load(good, weights_only=True)
    out = {}
    out["missing"] = (d / "missing.pt", "does not exist")
    (d / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = (d / "truncated.pt", "not a readable")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, d / "foreign.pt")
    out["foreign"] = (d / "foreign.pt", "not an sdmvae checkpoint")
    marker = d / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    torch.save({**ck, "model_state": Evil()}, d / "malicious.pt")
    out["malicious"] = (d / "malicious.pt", "refused")
    wrong = json.loads(json.dumps(ck["config"]))
    wrong["model"]["latent"] = 12
    torch.save({**ck, "config": wrong}, d / "wrong_config.pt")
    out["wrong_config"] = (d / "wrong_config.pt", "do not fit")
    torch.save({**ck, "config": {"stft": ck["config"]["stft"]}}, d / "no_config.pt")
    out["no_config"] = (d / "no_config.pt", "no model or stft config")
    unknown = json.loads(json.dumps(ck["config"]))
    unknown["model"]["bogus"] = 1
    torch.save({**ck, "config": unknown}, d / "unknown_option.pt")
    out["unknown_option"] = (d / "unknown_option.pt", "bogus")
    (d / "text.pt").write_text("hello")
    out["text"] = (d / "text.pt", "not a readable")
    nanw = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in ck["model_state"].items()}
    torch.save({**ck, "model_state": nanw}, d / "nan_weights.pt")
    out["nan_weights"] = (d / "nan_weights.pt", "nan")
    return out


@pytest.mark.parametrize(
    "kind", ["missing", "truncated", "foreign", "malicious", "wrong_config", "no_config", "unknown_option", "text", "nan_weights"]
)
def test_bad_checkpoints_every_command(world, tmp_path, capsys, kind):
    path, needle = _bad_checkpoints(world, tmp_path)[kind]
    before = digest([tmp_path, world["prep"]])
    wav = world["audio"] / "good.wav"
    fails(capsys, 1, needle, "resynth", wav, tmp_path / "o.wav", "--model", path)
    fails(capsys, 1, needle, "evaluate", path, world["prep"], "--out", tmp_path / "ev")
    fails(capsys, 1, needle, "export", path, tmp_path / "rel.pt")
    fails(capsys, 1, needle, "plot", "spectrogram", wav, tmp_path / "s.png", "--model", path)
    code, _, err = cli(capsys, "plot", "dictionary", path, tmp_path / "d.png")  # the tiny model is a VAE: either reason
    assert code == 1 and (needle in one_line(err).lower() or "expected 'sdm'" in err)
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran
    assert digest([tmp_path, world["prep"]]) == before  # nothing written, nothing changed


def test_resume_from_a_foreign_last_pt(world, tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    torch.save({"hello": 1}, run_dir / "last.pt")
    before = digest([run_dir])
    fails(capsys, 1, "not an sdmvae checkpoint", "train", world["prep"], "--resume", run_dir)
    assert digest([run_dir]) == before


# -- bad corpora and prepared folders ------------------------------------------------------
def test_bad_corpora(world, tmp_path, capsys):
    out = tmp_path / "o"
    fails(capsys, 1, "does not exist", "prepare", "folder", tmp_path / "nope", out)
    (tmp_path / "afile").write_text("x")
    fails(capsys, 1, "not a directory", "prepare", "folder", tmp_path / "afile", out)
    (tmp_path / "empty").mkdir()
    fails(capsys, 1, "no audio", "prepare", "folder", tmp_path / "empty", out)
    flat = tmp_path / "flat"
    write_wav(flat / "a.wav", world["x"])  # a file directly under the root: no speaker
    fails(capsys, 1, "no audio", "prepare", "folder", flat, out)
    one = tmp_path / "one"
    write_wav(one / "spk" / "a.wav", world["x"])
    fails(capsys, 1, "speakers", "prepare", "folder", one, out)
    allbad = tmp_path / "allbad"
    for s in range(3):
        write_wav(allbad / f"s{s}" / "a.wav", np.zeros(16000))
    code, _, err = cli(capsys, "prepare", "folder", allbad, out, "--val-speakers", "1", "--test-speakers", "1")
    errors = [line for line in err.splitlines() if not line.startswith("warning: skipped:")]  # one warning per skipped file
    assert code == 1 and len(errors) == 1 and "no usable audio" in errors[0] and "Traceback" not in err
    dup = tmp_path / "dup"
    write_wav(dup / "s" / "a.wav", world["x"])
    write_wav(dup / "s" / "a.flac", world["x"])
    fails(capsys, 1, "not unique", "prepare", "folder", dup, out)
    fails(
        capsys, 2, "split file", "prepare", "folder", world["corpus"], out, "--split-file", tmp_path / "afile"
    )  # not JSON: a usage error


def test_prepare_destinations(world, tmp_path, capsys):
    before = digest([world["corpus"]])
    fails(capsys, 1, "corpus itself", "prepare", "folder", world["corpus"], world["corpus"])
    (tmp_path / "afile").write_text("x")
    fails(capsys, 1, "is a file", "prepare", "folder", world["corpus"], tmp_path / "afile" / "out")
    fails(capsys, 1, "is a file", "prepare", "folder", world["corpus"], tmp_path / "afile")
    foreign = tmp_path / "home"
    (foreign / "test").mkdir(parents=True)
    (foreign / "test" / "precious.txt").write_text("keep me")
    fails(capsys, 1, "not empty", "prepare", "folder", world["corpus"], foreign)
    assert (foreign / "test" / "precious.txt").read_text() == "keep me"
    fails(capsys, 1, "not writable", "prepare", "folder", world["corpus"], "/proc/sdmvae-nope/out")
    assert digest([world["corpus"]]) == before


def test_prepare_paths_work_from_any_folder(world, tmp_path, capsys, monkeypatch):
    """Prepared with a RELATIVE corpus path, evaluated from another folder: every file found."""
    monkeypatch.chdir(world["corpus"].parent)
    code, _, err = cli(
        capsys, "prepare", "folder", world["corpus"].name, tmp_path / "p", "--val-speakers", "1", "--test-speakers", "1"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "p" / "test" / "manifest.jsonl").read_text().splitlines()]
    assert all(os.path.isabs(r["path"]) for r in rows)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "evaluate", world["ckpt"], tmp_path / "p", "--out", tmp_path / "ev", "-j", "1", "--json")
    assert code == 0, err and json.loads(out)["scored"] == 1


def test_prepare_rewrites_relative_manifest_paths_of_an_old_preparation(world, tmp_path, capsys):
    import shutil

    p = tmp_path / "p"
    shutil.copytree(world["prep"], p)
    fingerprint = json.loads((p / "prepare.json").read_text())["fingerprint"]
    m = p / "test" / "manifest.jsonl"
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    m.write_text("".join(json.dumps({**r, "path": os.path.relpath(r["path"])}) + "\n" for r in rows))
    code, out, err = cli(capsys, "prepare", "folder", world["corpus"], p, "--val-speakers", "1", "--test-speakers", "1")
    assert code == 0 and "up to date" in err and out == f"{p.resolve()}\n", err
    assert all(os.path.isabs(json.loads(line)["path"]) for line in m.read_text().splitlines())
    assert json.loads((p / "prepare.json").read_text())["fingerprint"] == fingerprint


def _copy_prep(world, d: Path) -> Path:
    import shutil

    return Path(shutil.copytree(world["prep"], d / "p"))


def test_corrupt_prepared_folders(world, tmp_path, capsys):
    p = _copy_prep(world, tmp_path)
    frames = p / "train" / "frames.npy"
    good = frames.read_bytes()
    args = ["train", p, "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1", "--no-plot", "--batch-size", "8"]
    frames.write_bytes(good[: len(good) // 2])
    fails(capsys, 1, "unreadable prepared frames", *args)
    frames.write_text("1,2,3\n")
    fails(capsys, 1, "unreadable prepared frames", *args)
    np.save(frames, np.array([["a", "b"]], dtype=object), allow_pickle=True)
    fails(capsys, 1, "unreadable prepared frames", *args)
    arr = np.frombuffer(good[128:], dtype="<f4").reshape(-1, 513).copy()
    arr[3, 7] = np.nan
    np.save(frames, arr)
    line = fails(capsys, 1, "nan", *args)
    assert "prepare" in line and "--lr" not in line  # a data problem, not a learning-rate one
    assert not (tmp_path / "run" / "best.pt").exists() and "checkpoint" not in line.replace("checkpoint was", "")
    (p / "prepare.json").write_text("{not json")
    fails(capsys, 1, "corrupt", *args)
    fails(capsys, 1, "corrupt", "evaluate", world["ckpt"], p, "--out", tmp_path / "ev")
    (p / "prepare.json").unlink()
    fails(capsys, 1, "no prepare.json", *args)
    q = _copy_prep(world, tmp_path / "q")
    (q / "test" / "manifest.jsonl").write_text("garbage\n")
    fails(capsys, 1, "not json", "evaluate", world["ckpt"], q, "--out", tmp_path / "ev")
    assert not (tmp_path / "ev").exists()


# -- bad options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "P", "--batch-size", "0"], "--batch-size"),
        (["train", "P", "--batch-size", "-5"], "--batch-size"),
        (["train", "P", "--lr", "0"], "--lr"),
        (["train", "P", "--lr", "-1e-3"], "--lr"),
        (["train", "P", "--lr", "abc"], "--lr"),
        (["train", "P", "--epochs", "0"], "--epochs"),
        (["train", "P", "--patience", "0"], "--patience"),
        (["train", "P", "--model", "nope"], "--model"),
        (["train", "P", "--activation", "sigmoid"], "--activation"),
        (["train", "P", "--hidden", "12,x"], "--hidden"),
        (["train", "P", "--hidden", "0"], "--hidden"),
        (["train", "P", "--latent", "0"], "--latent"),
        (["train", "P", "--alpha", "1.5"], "--alpha"),
        (["train", "P", "--compile", "maybe"], "--compile"),
        (["train", "P", "--model", "sdm", "--dict", "identity", "--k", "32", "--latent", "64"], "identity"),
        (["train", "P", "--resume", "R", "--overwrite"], "--resume"),
        (["evaluate", "C", "P", "-j", "-1"], "--jobs"),
        (["evaluate", "C", "P", "--limit", "0"], "--limit"),
        (["evaluate", "C", "P", "--split", "dev"], "--split"),
        (["prepare", "nope", "C", "O"], "layout"),
        (["prepare", "folder", "C", "O", "-j", "0"], "--jobs"),
        (["prepare", "folder", "C", "O", "--top-db", "0"], "--top-db"),
        (["table", "S", "--format", "html"], "--format"),
        (["demo", "--source", "radio"], "--source"),
        (["resynth", "A"], "missing argument"),
        (["resynth", "A", "B", "--no-such-option"], "no such option"),
        (["frobnicate"], "no such command"),
    ],
)
def test_bad_options_are_usage_errors(world, tmp_path, capsys, args, needle):
    sub = {
        "P": world["prep"],
        "C": world["ckpt"],
        "R": tmp_path / "r",
        "O": tmp_path / "o",
        "A": world["audio"] / "good.wav",
        "S": tmp_path / "s.json",
    }
    fails(capsys, 2, needle, *[sub.get(a, a) for a in args])
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


# -- destinations: never an input, never an earlier result, checked before the work --------
def test_resynth_never_overwrites_an_input_or_an_existing_output(world, tmp_path, capsys):
    import shutil

    src = Path(shutil.copy(world["audio"] / "good.wav", tmp_path / "x.wav"))
    before = digest([src])
    fails(capsys, 1, "is an input", "resynth", src, src, "--model", world["ckpt"])
    fails(capsys, 1, "is an input", "resynth", src, src, "--model", world["ckpt"], "--overwrite")
    d = tmp_path / "dir"
    write_wav(d / "a.wav", world["x"])
    before |= digest([d])
    fails(capsys, 1, "input", "resynth", d, d, "--model", world["ckpt"])
    fails(capsys, 1, "input", "resynth", d, d / "sub", "--model", world["ckpt"])
    lst = tmp_path / "l.txt"
    lst.write_text(f"{src}\n{tmp_path / 'x.flac'}\n")
    write_wav(tmp_path / "x.flac", world["x"])
    fails(capsys, 1, "same output", "resynth", lst, tmp_path / "o", "--from-list", "--model", world["ckpt"])
    assert digest([src, d]) == before
    out = tmp_path / "o.wav"
    out.write_bytes(b"earlier result")
    fails(capsys, 1, "--overwrite", "resynth", src, out, "--model", world["ckpt"])
    assert out.read_bytes() == b"earlier result"
    code, _, err = cli(capsys, "resynth", src, out, "--model", world["ckpt"], "--overwrite")
    assert code == 0, err and sf.info(str(out)).frames == world["x"].size


def test_unwritable_destinations_are_refused_before_work(world, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    wav = world["audio"] / "good.wav"
    bad = tmp_path / "afile" / "o.wav"
    fails(capsys, 1, "is a file", "resynth", wav, bad, "--model", world["ckpt"])
    fails(capsys, 1, "not writable", "resynth", wav, "/proc/sdmvae-nope/o.wav", "--model", world["ckpt"])
    fails(capsys, 1, "is a file", "resynth", world["audio"], tmp_path / "afile" / "d", "--model", world["ckpt"])
    fails(capsys, 1, "is a file", "evaluate", world["ckpt"], world["prep"], "--out", tmp_path / "afile" / "ev")
    fails(capsys, 1, "is a file", "evaluate", "--ref", world["audio"], "--est", world["audio"], "--out", tmp_path / "afile")
    fails(capsys, 1, "is a file", "export", world["ckpt"], bad)
    fails(capsys, 1, "is a file", "plot", "spectrogram", wav, tmp_path / "afile" / "s.png", "--model", world["ckpt"])
    fails(capsys, 1, "is a file", "train", world["prep"], "--out", tmp_path / "afile" / "run", "--device", "cpu")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            fails(capsys, 1, "not writable", "resynth", wav, ro / "o.wav", "--model", world["ckpt"])
        finally:
            ro.chmod(0o700)


def test_export_never_replaces_its_input(world, tmp_path, capsys):
    import shutil

    ck = Path(shutil.copy(world["ckpt"], tmp_path / "best.pt"))
    before = digest([ck])
    fails(capsys, 1, "is an input", "export", ck, ck)
    fails(capsys, 1, "is an input", "export", ck, ck, "--overwrite")
    fails(capsys, 1, "is an input", "export", tmp_path, ck)  # a run directory means its best.pt
    assert digest([ck]) == before
    code, _, err = cli(capsys, "export", ck, tmp_path / "rel.pt")
    assert code == 0, err
    rel = digest([tmp_path / "rel.pt"])
    fails(capsys, 1, "--overwrite", "export", ck, tmp_path / "rel.pt")
    assert digest([tmp_path / "rel.pt"]) == rel
    assert cli(capsys, "export", ck, tmp_path / "rel.pt", "--overwrite")[0] == 0


def test_export_of_several_seeds_releases_the_best_by_validation(world, tmp_path, capsys):
    """`export A B C DST`: the release is the candidate of lowest validation loss (never a test
    score); candidates trained on other prepared data are not comparable."""
    import shutil

    from sdmvae_cli.nets.checkpoint import read_checkpoint, save_checkpoint
    from sdmvae_cli.training.options import STOP_COLUMNS, stop_on_of

    base = read_checkpoint(world["ckpt"])
    cands = []
    for seed, val in enumerate((-10.0, -30.0, -20.0)):
        d = {k: v for k, v in base.items() if k not in ("format", "format_version", "package_version")}
        col = STOP_COLUMNS[stop_on_of(d["config"]["train"])]  # the statistic the run stopped on
        d["history"] = [dict(h, **{col: val}) if h["epoch"] == d["epoch"] else h for h in d["history"]]
        save_checkpoint(tmp_path / f"s{seed}" / "best.pt", d)
        cands.append(tmp_path / f"s{seed}" / "best.pt")
    code, out, err = cli(capsys, "export", *cands, tmp_path / "rel.pt")
    assert code == 0, err
    rel = read_checkpoint(tmp_path / "rel.pt")
    assert rel["chosen_by"]["chosen"] == str(cands[1]) and rel["chosen_by"]["rule"].startswith(
        "lowest posterior-mean validation statistic"
    )
    assert sorted(rel["chosen_by"]["validation_losses"].values()) == [-30.0, -20.0, -10.0]
    assert out.strip() == str(tmp_path / "rel.pt") and "* " + str(cands[1]) in err
    # the destination forgotten: the last candidate would be it; a training checkpoint is never replaced
    shutil.copy(world["ckpt"], tmp_path / "train.pt")
    before = digest([tmp_path / "train.pt"])
    fails(capsys, 1, "training checkpoint", "export", *cands, tmp_path / "train.pt", "--overwrite")
    assert digest([tmp_path / "train.pt"]) == before
    # a release of a release keeps where it came from
    assert cli(capsys, "export", tmp_path / "rel.pt", tmp_path / "s2" / "best.pt", tmp_path / "rel3.pt")[0] == 0
    rel3 = read_checkpoint(tmp_path / "rel3.pt")
    assert rel3["chosen_by"]["earlier"]["chosen"] == str(cands[1]) and "exported from best.pt" in rel3["exported_from"]
    d = {k: v for k, v in base.items() if k not in ("format", "format_version", "package_version")}
    d["data_fingerprint"] = "other data"
    save_checkpoint(tmp_path / "other" / "best.pt", d)
    fails(capsys, 1, "not comparable", "export", cands[0], tmp_path / "other" / "best.pt", tmp_path / "rel2.pt")
    assert not (tmp_path / "rel2.pt").exists()


def test_best_by_validation_across_kl_weights(world, tmp_path):
    """Candidates trained with another beta: a beta-weighted total is no common yardstick, so the
    unit-weight bound (reconstruction + KL) ranks them; a thresholded model (KL stored weighted) is refused."""
    import copy

    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.nets.checkpoint import read_checkpoint, save_checkpoint
    from sdmvae_cli.training.selection import best_by_validation

    base = read_checkpoint(world["ckpt"])
    files = []
    # beta 0.1: small weighted total, but the worse bound; beta 1: the better bound
    for name, beta, total, recon, kl in (("b0.1", 0.1, -100.0, -60.0, 30.0), ("b1", 1.0, -50.0, -80.0, 30.0)):
        d = copy.deepcopy({k: v for k, v in base.items() if k not in ("format", "format_version", "package_version")})
        d["config"]["model"]["beta"] = beta
        vals = {
            "val_total": total,
            "val_recon": recon,
            "val_kl": kl,
            "val_pm_total": total,
            "val_pm_recon": recon,
            "val_pm_kl": kl,
        }
        d["history"] = [dict(h, **vals) if h["epoch"] == d["epoch"] else h for h in d["history"]]
        save_checkpoint(tmp_path / name / "best.pt", d)
        files.append(tmp_path / name / "best.pt")
    choice = best_by_validation(files)
    assert choice.best == files[1] and "unit weights" in choice.criterion and choice.losses[str(files[0])] == -30.0
    same = best_by_validation([files[0], files[0]])  # one candidate twice: the objective itself
    assert same.best == files[0] and "early-stopping statistic" in same.criterion
    d = read_checkpoint(files[0])
    d["config"]["model"]["model"] = "threshold"
    save_checkpoint(
        tmp_path / "thr" / "best.pt", {k: v for k, v in d.items() if k not in ("format", "format_version", "package_version")}
    )
    with pytest.raises(SdmvaeError, match="not comparable"):
        best_by_validation([tmp_path / "thr" / "best.pt", files[1]])


def test_train_refuses_an_existing_run_folder(world, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(world["ckpt"].parent, run_dir)
    before = digest([run_dir])
    syn = world["dir"] / "syn"
    fails(capsys, 1, "already holds a run", "train", syn, "--out", run_dir, "--device", "cpu", "--epochs", "1", "--no-plot")
    assert digest([run_dir]) == before
    code, out, err = cli(
        capsys,
        "train",
        syn,
        "--out",
        run_dir,
        "--model",
        "vae",
        "--latent",
        "4",
        "--hidden",
        "16",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--no-plot",
        "--overwrite",
        "--lr",
        "1e-3",
    )
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["model"]["latent"] == 4
    assert not (run_dir / "loss.png").exists()  # the old run's plot went with it: no mixed run


def test_evaluate_refuses_an_earlier_evaluation(world, tmp_path, capsys):
    ref = tmp_path / "ref"
    write_wav(ref / "a.wav", source_filter_speech(2.0, seed=12))
    ev = tmp_path / "ev"
    code, _, err = cli(capsys, "evaluate", "--ref", ref, "--est", ref, "--out", ev, "-j", "1")
    assert code == 0, err
    before = digest([ev])
    fails(capsys, 1, "--overwrite", "evaluate", "--ref", ref, "--est", ref, "--out", ev, "-j", "1")
    assert digest([ev]) == before
    assert cli(capsys, "evaluate", "--ref", ref, "--est", ref, "--out", ev, "-j", "1", "--overwrite")[0] == 0


def test_table_and_plot_outputs_are_not_replaced(world, tmp_path, capsys):
    ref = tmp_path / "ref"
    write_wav(ref / "a.wav", source_filter_speech(2.0, seed=13))
    assert cli(capsys, "evaluate", "--ref", ref, "--est", ref, "--out", tmp_path / "ev", "-j", "1")[0] == 0
    summary = tmp_path / "ev" / "summary.json"
    before = digest([summary])
    fails(capsys, 1, "is an input", "table", summary, "--format", "csv", "--out", summary, "--overwrite")
    assert digest([summary]) == before
    png = tmp_path / "s.png"
    png.write_bytes(b"mine")
    fails(capsys, 1, "--overwrite", "plot", "spectrogram", world["audio"] / "good.wav", png, "--model", world["ckpt"])
    assert png.read_bytes() == b"mine"


def test_train_epochs_zero_and_library_ranges(world, tmp_path):
    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.training.train import TrainOptions, train

    for bad in (dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(lr=float("nan"))):
        with pytest.raises(SdmvaeError):
            train(world["dir"] / "syn", ModelConfig(model="vae", latent=4), TrainOptions(device="cpu", **bad), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_evaluate_on_frames_without_audio_is_one_line(world, tmp_path, capsys):
    """A preparation made without a corpus (synthetic frames: manifests with no audio path) is
    refused before any work, not failed file by file."""
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    prep = make_synthetic_prepared(tmp_path / "syn", 600, 300, 300, utterances=True)
    fails(capsys, 1, "have no audio file", "evaluate", world["ckpt"], prep, "--split", "test", "--out", tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
