"""Issue 12, a newcomer's first hour: bundled demo speech, released models by name,
evaluation-only corpora, paths from any folder, one CLI grammar, --config, the Python API,
codes round trip and figures. Nothing here needs ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech

CLI = [sys.executable, "-m", "sdmvae_cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
DEMO_AUDIO = REPO / "sdmvae_cli" / "report" / "demo_audio"


def cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    """The bundled utterances as a little corpus of 3 speakers (symlinks)."""
    root = tmp_path_factory.mktemp("speech")
    for f in sorted(DEMO_AUDIO.glob("*.flac")):
        (root / f.stem.split("-")[0]).mkdir()
        (root / f.stem.split("-")[0] / f.name).symlink_to(f)
    return root


def test_bundled_demo_speech_is_small_attributed_and_packaged():
    files = sorted(DEMO_AUDIO.glob("*.flac"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) <= 300_000
    for f in files:
        info = sf.info(str(f))
        assert info.samplerate == 16000 and info.channels == 1 and 2.5 < info.duration < 5
    text = (DEMO_AUDIO / "ATTRIBUTION.txt").read_text()
    assert "CC BY 4.0" in text and "Vassil Panayotov" in text and all(f.name in text for f in files)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"report/demo_audio/*.flac"' in pyproject and '"report/demo_audio/*.txt"' in pyproject
    # the released models never saw these readers: they are test speakers of the split they were
    # trained on (models/README.md), so the demo shows held-out speech
    split = json.loads((REPO / "scripts" / "table1_split_full.json").read_text())
    assert {f"dev/librispeech/ls{f.name.split('-')[0]}" for f in files} <= set(split["test"])


def test_demo_defaults_to_real_speech_from_any_folder(tmp_path):
    r = cli("demo", "--json", "-o", tmp_path / "demo", cwd=tmp_path)  # no ../shared beside this cwd
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["source"].startswith("real speech") and len(d["files"]) == 3
    assert Path(d["model"]).name == json.loads((REPO / "models" / "default.json").read_text())["default"]
    for row in d["files"]:  # real speech through the default model: clearly better than the synthetic signal's 1.3 / 0.71
        assert row["pesq_nb"] > 2.3 and row["stoi"] > 0.85, row
        y, rate = sf.read(row["output"])
        assert rate == 16000 and y.shape == (sf.info(row["input"]).frames,)
    assert (tmp_path / "demo" / "codes.png").stat().st_size > 10_000


def test_released_models_by_name(tmp_path):
    r = cli("models", "--released", "--json")
    rows = json.loads(r.stdout)
    names = {row["name"] for row in rows}
    assert names == {
        "vae-m64",
        "vsc-a0.5-m64",
        "sdm-identity-m64",
        "sdm-dct-k64-m64",
        "sdm-learned-k64-m64",
        "threshold-m64",
        "cauchy-m64",
        "cauchy-gauss-m64",
        "laplace-m64",
    }
    assert sum(row["default"] for row in rows) == 1 and all(row["scores"]["stoi"] > 0.8 and row["data"] for row in rows)
    wav = DEMO_AUDIO / "3080-5032-0003.flac"
    r = cli("resynth", wav, tmp_path / "o.wav", "-m", "vae-m64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'o.wav'}\n"
    r = cli("plot", "dictionary", "sdm-dct-k64-m64", tmp_path / "d.svg")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.svg").read_text().lstrip().startswith("<?xml")
    r = cli("resynth", wav, tmp_path / "o2.wav", "-m", "vae-m65")
    assert r.returncode == 1 and "vae-m64" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_evaluation_only_corpus_scored_by_a_released_name_from_another_folder(speech_dir, tmp_path):
    prep = tmp_path / "prep"
    r = cli("prepare", "folder", speech_dir, prep, "--test-only", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info["splits"]) == {"test"} and info["splits"]["test"]["speakers"] == 3
    for line in (prep / "test" / "manifest.jsonl").read_text().splitlines():
        assert Path(json.loads(line)["path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("evaluate", "vae-m64", os.path.relpath(prep, elsewhere), "--split", "test", "-j", "1", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    summary = elsewhere / "eval-vae-m64-test" / "summary.json"  # a released model's evaluation lands here, never in the package
    assert r.stdout == "eval-vae-m64-test/summary.json\n" and summary.exists()
    s = json.loads(summary.read_text())
    assert s["scored"] == 3 and s["metrics"]["estoi"]["mean"] > 0.7
    # a split file with only "test" is evaluation-only too; a corpus with no test split cannot be scored
    sf_ = tmp_path / "split.json"
    sf_.write_text(json.dumps({"test": ["367", "2609"]}))
    r = cli("prepare", "folder", speech_dir, tmp_path / "prep2", "--split-file", sf_, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["splits"]["test"]["utterances"] == 2
    r = cli("evaluate", "-m", "vae-m64", prep, "--split", "train", "-o", tmp_path / "ev")
    assert r.returncode == 1 and "no manifest" in r.stderr


def test_grammar_quiet_after_subcommand_trailing_slash_subtype_and_mp3(tmp_path):
    src = tmp_path / "in"
    write_wav(src / "a.wav", 0.5 * source_filter_speech(1.0, seed=1))
    r = cli("resynth", src / "a.wav", f"{tmp_path / 'newdir'}/", "-q", "--subtype", "PCM_16")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = tmp_path / "newdir" / "a.wav"
    assert r.stdout == f"{out}\n" and sf.info(str(out)).subtype == "PCM_16"
    r = cli("resynth", src / "a.wav", tmp_path / "b.flac", "--subtype", "FLOAT")
    assert r.returncode == 1 and "FLAC" in r.stderr
    r = cli("resynth", src / "a.wav", tmp_path / "c.wav", "--subtype", "PCM_8")
    assert r.returncode == 2
    if "MP3" in sf.available_formats():  # folder mode picks up mp3 where libsndfile reads it
        sf.write(str(src / "m.mp3"), 0.5 * source_filter_speech(1.0, seed=2), 16000, format="MP3")
        r = cli("resynth", src, tmp_path / "outdir", "--json", "-j", "2")
        assert r.returncode == 0, r.stderr
        assert sorted(Path(p).name for p in json.loads(r.stdout)["written"]) == ["a.wav", "m.wav"]


def test_train_arch_alias_json_and_config_rerun(synthetic_prepared, tmp_path):
    run = tmp_path / "run"
    r = cli(
        "train",
        synthetic_prepared,
        "--arch",
        "vsc",
        "--alpha",
        "0.3",
        "--latent",
        "6",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--out",
        run,
        "--json",
        "--no-plot",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["checkpoint"] == str((run / "best.pt").resolve()) and res["epochs"] == 2
    base = json.loads((run / "config.json").read_text())
    r = cli(
        "train",
        "--config",
        run / "config.json",
        "--epochs",
        "3",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--out",
        tmp_path / "run2",
        "--no-plot",
    )
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert again["model"] == base["model"] and again["model"]["alpha"] == 0.3 and again["model"]["latent"] == 6
    assert again["train"]["epochs"] == 3 and again["train"]["seed"] == 5 and again["train"]["lr"] == base["train"]["lr"]
    r = cli(
        "train",
        synthetic_prepared,
        "--model",
        "vae",
        "--latent",
        "4",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "old",
        "--no-plot",
        "-q",
    )  # the older spelling still works
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model"]["model"] == "vae"
    r = cli("train", synthetic_prepared, "--arch", "nope")
    assert r.returncode == 2


def test_python_api_and_codes_round_trip(tmp_path):
    import sdmvae_cli
    from sdmvae_cli.nets.checkpoint import load_model

    wav = DEMO_AUDIO / "367-130732-0009.flac"
    lm = load_model("sdm-dct-k64-m64")
    text = repr(lm)
    assert text.startswith("LoadedModel(sdm dct dictionary k=64, latent=64") and "\n" not in text and len(text) < 300
    res = sdmvae_cli.resynthesise(str(wav), model="sdm-dct-k64-m64")
    x, rate = sf.read(str(wav))
    assert res.output.shape == x.shape and res.codes.shape == (res.codes.shape[0], 64)
    same = sdmvae_cli.resynthesise(x, model=lm, sample_rate=rate)
    assert np.allclose(same.output, res.output, atol=1e-5)
    # codes -> audio: unedited codes give the resynthesis back; silencing units changes it
    r = cli("resynth", wav, tmp_path / "o.wav", "-m", "sdm-dct-k64-m64", "--save-codes", "--subtype", "FLOAT")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(tmp_path / "o.wav"), str(tmp_path / "o.codes.npz")]
    r = cli("resynth", tmp_path / "o.codes.npz", tmp_path / "back.wav", "--from-codes")
    assert r.returncode == 0, r.stderr
    o, _ = sf.read(str(tmp_path / "o.wav"))
    back, _ = sf.read(str(tmp_path / "back.wav"))
    assert np.abs(back - o).max() < 1e-4
    z = dict(np.load(tmp_path / "o.codes.npz"))
    z["codes"][:, 8:] = 0  # keep the first 8 atoms only
    np.savez(tmp_path / "edited.codes.npz", **z)
    r = cli("resynth", tmp_path / "edited.codes.npz", tmp_path / "edited.wav", "--from-codes")
    assert r.returncode == 0, r.stderr
    edited, _ = sf.read(str(tmp_path / "edited.wav"))
    assert edited.shape == o.shape and np.abs(edited - o).max() > 1e-3
    z["codes"] = z["codes"][:10]
    np.savez(tmp_path / "short.codes.npz", **z)
    r = cli("resynth", tmp_path / "short.codes.npz", tmp_path / "short.wav", "--from-codes")
    assert r.returncode == 1 and "frames" in r.stderr


def test_figures_by_suffix_and_shared_codes_scale(tmp_path):
    wav = DEMO_AUDIO / "2609-156975-0003.flac"
    r = cli("plot", "codes", wav, tmp_path / "c.pdf", "-m", "vae-m64", "-m", "sdm-identity-m64")
    assert r.returncode == 0, r.stderr
    figs = [Path(p) for p in r.stdout.split()]
    assert [p.name for p in figs] == ["c-vae-m64.pdf", "c-sdm-identity-m64.pdf"]
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in figs)
    r = cli("plot", "spectrogram", wav, tmp_path / "s.jpg")
    assert r.returncode == 1 and ".png, .pdf or .svg" in r.stderr and not (tmp_path / "s.jpg").exists()
    from sdmvae_cli.report.figures import codes_vmax

    a, b = np.ones((5, 3)), 10 * np.ones((5, 3))
    assert codes_vmax([a, b]) == pytest.approx(10.0) and codes_vmax([a]) == pytest.approx(1.0)
