"""The released checkpoints (models/) and the CLI's listing of models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, needs_shared

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.corpus import builtin_tcd_timit_split
from sdmvae_cli.nets.checkpoint import load_model
from sdmvae_cli.nets.released import default_model_path, released_dir


@pytest.mark.parametrize(
    "name",
    [
        "vae-m64",
        "vsc-a0.5-m64",
        "sdm-identity-m64",
        "sdm-dct-k64-m64",
        "sdm-learned-k64-m64",
        "threshold-m64",
        "cauchy-m64",
        "cauchy-gauss-m64",
        "laplace-m64",
    ],
)
def test_released_models_load_alone_and_are_small(name):
    path = REPO / "models" / f"{name}.pt"
    assert path.stat().st_size < 1_000_000
    ck = torch.load(path, weights_only=True)
    assert "optimizer_state" not in ck and ck["config"]["stft"] == StftConfig().to_dict()
    lm = load_model(path)
    assert lm.model_config.latent == 64
    with torch.no_grad():
        y, code = lm.model.reconstruct(torch.rand(4, 513))
    assert y.shape == (4, 513) and torch.isfinite(y).all()


def test_default_model_is_shipped_in_the_package():
    assert released_dir().resolve() == (REPO / "models").resolve()
    assert default_model_path().name == json.loads((REPO / "models" / "default.json").read_text())["default"]


@needs_shared
def test_default_model_resynthesises_real_speech_well(real_utterance, tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / real_utterance.name).symlink_to(real_utterance)
    out = tmp_path / "est" / (real_utterance.stem + ".wav")
    out.parent.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "sdmvae_cli", "resynth", str(real_utterance), str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr  # no --model: the default released model
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdmvae_cli",
            "evaluate",
            "--ref",
            str(tmp_path / "ref"),
            "--est",
            str(out.parent),
            "--json",
            "-j",
            "1",
            "--out",
            str(tmp_path / "ev"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["scored"] == 1
    assert s["metrics"]["pesq_wb"]["mean"] > 2.0 and s["metrics"]["stoi"]["mean"] > 0.85


def test_models_command_lists_registry_as_json():
    r = subprocess.run([sys.executable, "-m", "sdmvae_cli", "models", "--json"], capture_output=True, text=True)
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} == {
        "vae",
        "sdm",
        "vsc",
        "threshold",
        "laplace",
        "cauchy",
        "cauchy-gauss",
        "dkf",
        "srnn",
        "rvae",
    }
    assert "alpha" in next(row for row in rows if row["name"] == "vsc")["options"]


def test_builtin_tcd_timit_split_is_well_formed():
    s = builtin_tcd_timit_split()
    assert len(s["test"]) == 9 and len(s["validation"]) == 8 and not set(s["test"]) & set(s["validation"])
    assert s["expected_counts"] == {"train": 39, "validation": 8, "test": 9}


def test_a_released_name_is_never_shadowed_silently_by_a_folder(tmp_path, monkeypatch, caplog):
    """Issue 23.3: a run folder named like a release (`runs/..`'s old default, or a copy) used to
    win over the released model without a word."""
    from sdmvae_cli.nets import released
    from sdmvae_cli.nets.released import released_path, resolve_model

    monkeypatch.setattr(released, "_warned", set())  # each warning once per process: this test sees its own
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vae-m64").mkdir()
    with caplog.at_level("WARNING", logger="sdmvae"):
        assert resolve_model("vae-m64") == released_path("vae-m64")
    assert "./vae-m64" in caplog.text  # says how to reach the folder
    assert resolve_model("./vae-m64") == Path("vae-m64")  # a path that looks like one is the path
    assert resolve_model(resolve_model("./vae-m64")) == Path("vae-m64")  # resolved twice (load_model does): still the path
    assert resolve_model("vae-m64/") == Path("vae-m64")
    assert resolve_model(str(tmp_path / "vae-m64")) == tmp_path / "vae-m64"
    caplog.clear()
    (tmp_path / "vae-m64.pt").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="sdmvae"):
        assert resolve_model("vae-m64.pt") == Path("vae-m64.pt")  # a .pt file by its name: the file, with a word
    assert "released model vae-m64" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sdmvae"):
        resolve_model("vae-m64.pt")
    assert not caplog.text  # said once
    (tmp_path / "myrun").mkdir()
    assert resolve_model("myrun") == Path("myrun")  # no release of that name: the folder, silently
    with pytest.raises(SdmvaeError, match="released: .*vae-m64"):
        resolve_model("./nothing-here")
