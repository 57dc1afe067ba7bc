"""Issue 25: `sdmvae info`, `sdmvae mix`, `evaluate --ref FILE --est FILE` and `enhance --ref`.

All through :func:`sdmvae_cli.cli.run`; the speech is the bundled demo utterances (no ../shared)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.cli import run
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.nets.checkpoint import read_checkpoint
from sdmvae_cli.training.selection import validation_record
from sdmvae_cli.training.train import TrainOptions, train

DEMO_AUDIO = REPO / "sdmvae_cli" / "report" / "demo_audio"


def one_line_error(capsys, code: int, *args) -> str:
    assert run([*map(str, args)]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def json_out(capsys, *args) -> dict:
    assert run([*map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


# -- info ---------------------------------------------------------------------------------------
def assert_describes(doc: dict, data: dict) -> None:
    """The JSON keys are there, each equal to the checkpoint's own value."""
    cfg = data["config"]
    assert doc["model"] == cfg["model"] and doc["stft"] == cfg["stft"] and doc["train"] == cfg["train"]
    assert doc["seed"] == cfg["seed"] and doc["epoch"] == data["epoch"] and doc["best_epoch"] == data["best_epoch"]
    assert doc["format"] == data["format"] and doc["format_version"] == data["format_version"]
    assert doc["package_version"] == data["package_version"] and doc["best_val"] == data["best_val"]
    assert doc["data"]["fingerprint"] == data["data_fingerprint"] and doc["data"]["prepared_dir"] == data["prepared_dir"]
    assert doc["best_validation"] == validation_record(data)  # best.pt and releases hold their best epoch
    assert doc["parameters"] == sum(v.numel() for v in data["model_state"].values())
    assert set(doc["model_options"]) <= set(cfg["model"]) and doc["family"]


def test_info_on_a_released_model(capsys):
    doc = json_out(capsys, "info", "vae-m64", "--json")
    data = read_checkpoint("vae-m64")
    assert_describes(doc, data)
    assert doc["released"] == "vae-m64" and doc["resumable"] is False and doc["family"] == "VAE"
    assert doc["epochs_trained"] == len(data["history"]) and doc["engine"] is None  # recorded only since 2025
    assert doc["data"]["prepared_exists"] is False  # trained elsewhere: the folder is not on this machine
    assert run(["info", "vae-m64"]) == 0
    table = capsys.readouterr().out
    assert "vae-m64" in table and "epochs trained" in table and doc["data"]["fingerprint"] in table


def test_info_on_a_tiny_run(synthetic_prepared, tmp_path, capsys):
    opts = TrainOptions(epochs=2, patience=50, lr=1e-3, batch_size=256, device="cpu")
    r = train(synthetic_prepared, ModelConfig(model="sdm", latent=8, k=16, hidden=[32]), opts, tmp_path / "run")
    doc = json_out(capsys, "info", tmp_path / "run", "--json")  # a run folder: its best.pt
    assert doc["path"] == str((tmp_path / "run" / "best.pt").resolve())
    assert_describes(doc, read_checkpoint(tmp_path / "run" / "best.pt"))
    assert doc["epochs_trained"] == 2 and doc["resumable"] is True and doc["released"] is None
    assert doc["engine"] == r.history[-1]["engine"] and doc["engine"]
    assert doc["family"].startswith("SDM-VAE") and doc["model_options"]["k"] == 16 and "alpha" not in doc["model_options"]
    data = doc["data"]
    assert data["prepared_exists"] and data["matches"]
    assert data["splits"] == {"train": {"frames": 3000}, "validation": {"frames": 600}, "test": {"frames": 300}}
    last = json_out(capsys, "info", tmp_path / "run" / "last.pt", "--json")
    assert last["epoch"] == 1 and last["epochs_trained"] == 2 and last["best_epoch"] == r.best_epoch


def test_info_bad_input_is_one_line(tmp_path, capsys):
    assert "does not exist" in one_line_error(capsys, 1, "info", tmp_path / "nope.pt")
    (tmp_path / "x.pt").write_text("not a checkpoint")
    assert "not a readable sdmvae checkpoint" in one_line_error(capsys, 1, "info", tmp_path / "x.pt")


# -- evaluate two files ---------------------------------------------------------------------------
def test_evaluate_two_files_equals_two_folders(tmp_path, capsys):
    clean = source_filter_speech(2.0, seed=3)
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(clean.size).astype(np.float32)
    ref, est = write_wav(tmp_path / "clean.wav", clean), write_wav(tmp_path / "out.wav", noisy)
    write_wav(tmp_path / "r" / "clean.wav", clean), write_wav(tmp_path / "e" / "clean.wav", noisy)
    files = json_out(capsys, "evaluate", "--ref", ref, "--est", est, "--out", tmp_path / "ev1", "-j", "1", "--json")
    folders = json_out(
        capsys, "evaluate", "--ref", tmp_path / "r", "--est", tmp_path / "e", "--out", tmp_path / "ev2", "-j", "1", "--json"
    )
    assert files["scored"] == folders["scored"] == 1 and files["metrics"].keys() == folders["metrics"].keys()
    for k, stat in folders["metrics"].items():  # equal to the last digits (ESTOI varies by 1 ulp between processes)
        assert files["metrics"][k] == pytest.approx(stat, rel=1e-12) and stat["n"] == 1, k
    a, b = (next(csv.DictReader(open(tmp_path / d / "per_file.csv"))) for d in ("ev1", "ev2"))
    assert a["id"] == b["id"] == "clean" and a["path"] == str(est)
    assert "a file" in one_line_error(capsys, 2, "evaluate", "--ref", ref, "--est", tmp_path / "e", "--out", tmp_path / "ev3")
    assert not (tmp_path / "ev3").exists()


# -- mix ------------------------------------------------------------------------------------------
@pytest.fixture()
def speech(tmp_path) -> Path:
    """The 3 bundled utterances, one folder per speaker."""
    root = tmp_path / "speech"
    for f in sorted(DEMO_AUDIO.glob("*.flac")):
        (root / f.stem.split("-")[0]).mkdir(parents=True)
        (root / f.stem.split("-")[0] / f.name).symlink_to(f)
    return root


def manifest(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "manifest.csv")))


def measured(out: Path, row: dict) -> float:
    noisy, _ = sf.read(out / row["noisy"], dtype="float64")
    clean, _ = sf.read(out / row["clean"], dtype="float64")
    return float(10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2)))


def test_snr_range_of_the_cli_is_the_librarys():
    from sdmvae_cli.cli import mix as cli_mix
    from sdmvae_cli.data.mixtures import SNR_RANGE

    assert (cli_mix.SNR_MIN, cli_mix.SNR_MAX) == SNR_RANGE


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble", "file", "folder"])
def test_mix_hits_the_snr_for_every_noise(speech, tmp_path, capsys, kind):
    noise = kind
    if kind in ("file", "folder"):  # a noise at another rate, shorter than the speech (looped)
        rng = np.random.default_rng(1)
        noise = write_wav(tmp_path / "noise" / "hum.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 8000)
        write_wav(tmp_path / "noise" / "hiss.wav", (0.3 * rng.standard_normal(30000)).astype(np.float32), 16000)
        noise = noise.parent if kind == "folder" else noise
    out = tmp_path / "mix"
    assert run(["mix", str(speech), str(noise), str(out), "--snr", "-5", "0", "12.5", "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "manifest.csv")
    rows = manifest(out)
    assert len(rows) == 3 * 3 and {r["snr"] for r in rows} == {"-5", "0", "12.5"}
    for r in rows:
        assert abs(measured(out, r) - float(r["snr"])) < 0.01 and abs(float(r["snr_measured"]) - float(r["snr"])) < 0.01
        assert (out / r["noisy"]).relative_to(out / "noisy") == (out / r["clean"]).relative_to(out / "clean")
        assert Path(r["source"]).parent.parent == speech and r["noise"] == (str(noise) if kind == "file" else r["noise"])
        clean, _ = sf.read(out / r["clean"], dtype="float64")
        noisy, _ = sf.read(out / r["noisy"], dtype="float64")
        assert np.max(np.abs(noisy)) <= 0.999 + 1e-6  # scaled down, never clipped
        if kind == "babble":
            own = Path(r["source"]).relative_to(speech).with_suffix("").as_posix()
            talkers = r["babble_of"].split(";")
            assert own not in talkers and len(talkers) == 2 and r["noise"] == "babble"
            residual = noisy - clean  # the babble alone: it does not hold the utterance itself
            assert abs(np.corrcoef(residual, clean)[0, 1]) < 0.1


def test_mix_never_overwrites_and_checks_its_arguments(speech, tmp_path, capsys):
    out = tmp_path / "mix"
    assert run(["mix", str(speech), "white", str(out), "--snr", "0", "5"]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    assert "already exist" in one_line_error(capsys, 1, "mix", speech, "white", out, "--snr", "0")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before
    assert run(["mix", str(speech), "pink", str(out), "--snr", "0", "--overwrite"]) == 0
    capsys.readouterr()
    assert {r["snr"] for r in manifest(out)} == {"0"}
    assert not (out / "noisy" / "snr5dB").exists() and not (out / "clean" / "snr5dB").exists()  # the earlier mix's other SNR
    assert "range" in one_line_error(capsys, 2, "mix", speech, "white", tmp_path / "m2", "--snr", "0", "50")
    assert "--snr" in one_line_error(capsys, 2, "mix", speech, "white", tmp_path / "m2", "--snr", "-21")
    assert "extra argument" in one_line_error(capsys, 2, "mix", speech, "white", tmp_path / "m2", "--snr", "0", "loud")
    assert "no such file" in one_line_error(capsys, 1, "mix", tmp_path / "nope", "white", tmp_path / "m2", "--snr", "0")
    assert "generated noise" in one_line_error(capsys, 1, "mix", speech, "pinkk", tmp_path / "m2", "--snr", "0")
    assert "input" in one_line_error(capsys, 1, "mix", speech, "white", speech / "m2", "--snr", "0")
    one = next(speech.rglob("*.flac"))
    assert "OTHER" in one_line_error(capsys, 1, "mix", one, "babble", tmp_path / "m2", "--snr", "0")
    assert not (tmp_path / "m2").exists() and not (speech / "m2").exists()


# -- enhance --ref --------------------------------------------------------------------------------
def test_enhance_ref_scores_equal_a_separate_evaluate(speech, tmp_path, capsys):
    mix = tmp_path / "mix"
    assert run(["mix", str(speech), "white", str(mix), "--snr", "5"]) == 0
    capsys.readouterr()
    enh = tmp_path / "enh"
    fast = ["-m", "vae-m64", "-n", "2", "--steps", "1", "--device", "cpu"]
    assert run(["enhance", str(mix / "noisy"), f"{enh}/", "--ref", str(mix / "clean"), *fast]) == 0
    out = capsys.readouterr().out.split()
    scores = tmp_path / "enh-scores" / "summary.json"
    assert out[-1] == str(scores) and len(out) == 4  # 3 outputs, then the scores
    ev = json_out(capsys, "evaluate", "--ref", mix / "clean", "--est", enh, "--out", tmp_path / "ev", "-j", "1", "--json")
    got = json.loads(scores.read_text())
    assert got["scored"] == 3 and got["metrics"]["si_sdr"]["n"] == 3
    # the same scores, file by file, to the last digits (ESTOI's float sums vary by 1 ulp between processes)
    for k, stat in ev["metrics"].items():
        assert got["metrics"][k] == pytest.approx(stat, rel=1e-12), k
    rows = [sorted(csv.DictReader(open(d / "per_file.csv")), key=lambda r: r["id"]) for d in (scores.parent, tmp_path / "ev")]
    assert [r["id"] for r in rows[0]] == [r["id"] for r in rows[1]] and len(rows[0]) == 3
    for a, b in zip(*rows):
        assert all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-12) for k in ev["metrics"])
    # one file, one reference; a folder of outputs with a file reference is refused before any work
    noisy, clean = next((mix / "noisy").rglob("*.wav")), next((mix / "clean").rglob("*.wav"))
    assert run(["enhance", str(noisy), str(tmp_path / "one.wav"), "--ref", str(clean), *fast]) == 0
    assert json.loads((tmp_path / "one-scores" / "summary.json").read_text())["scored"] == 1
    capsys.readouterr()
    assert "a file" in one_line_error(capsys, 2, "enhance", mix / "noisy", f"{tmp_path / 'enh2'}/", "--ref", clean, *fast)
    assert not (tmp_path / "enh2").exists()
