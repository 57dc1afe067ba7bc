"""Shared fixtures. Real-speech tests read ../shared/data beside the checkout and skip, with
the reason, where it is absent (e.g. on a user's machine)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sdmvae_cli.training.run_folder import write_history

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEV = SHARED / "dev"

needs_shared = pytest.mark.skipif(
    not (DEV / "manifest.csv").exists(),
    reason=f"real speech not available: {DEV} is absent (it lives beside the checkout in the project workspace)",
)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


def dev_files(n_speakers: int, per_speaker: int) -> list[Path]:
    """The first utterances of the first speakers of ../shared/data/dev (sorted, deterministic)."""
    out = []
    for corpus in sorted(p for p in DEV.iterdir() if p.is_dir()):
        for spk in sorted(p for p in corpus.iterdir() if p.is_dir()):
            out.extend(sorted(spk.glob("*.flac"))[:per_speaker])
    by_spk: dict[str, list[Path]] = {}
    for f in out:
        by_spk.setdefault(f.parent.name, []).append(f)
    picked = sorted(by_spk)[:n_speakers]
    return [f for s in picked for f in by_spk[s]]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A <root>/<speaker>/<utt>.flac tree of 8 real speakers x 2 short utterances (symlinks)."""
    if not (DEV / "manifest.csv").exists():
        pytest.skip(f"real speech not available: {DEV} is absent")
    root = tmp_path_factory.mktemp("corpus")
    files = sorted(dev_files(40, 3), key=lambda f: sf.info(str(f)).duration)
    by_spk: dict[str, list[Path]] = {}
    for f in files:
        if len(by_spk.setdefault(f.parent.name, [])) < 2:
            by_spk[f.parent.name].append(f)
    for spk in sorted(by_spk)[:8]:
        d = root / spk
        d.mkdir()
        for f in by_spk[spk]:
            (d / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def real_utterance() -> Path:
    if not (DEV / "manifest.csv").exists():
        pytest.skip(f"real speech not available: {DEV} is absent")
    return sorted((DEV / "librispeech").glob("*/*.flac"))[2]


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory) -> Path:
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    return make_synthetic_prepared(tmp_path_factory.mktemp("prep") / "p", n_train=3000, n_val=600, n_test=300)


def write_wav(path: Path, x: np.ndarray, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_16")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in-process: (exit status, stdout, stderr)."""
    from sdmvae_cli.cli.app import run

    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single line a refused command prints on stderr (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# -- made-up evaluation folders, shared by the report tests and the hostile-input ones -------------
MODEL_CFG = {"vae": REPO / "models" / "vae-m64.pt", "sdm": REPO / "models" / "sdm-identity-m64.pt"}


def made_up_history(epochs: int) -> list[dict]:
    """Epoch records with every field train records (training.options.EpochRecord), made-up losses; the
    best epoch is the second to last."""
    from dataclasses import asdict, fields

    from sdmvae_cli.training.options import EpochRecord

    losses = [f.name for f in fields(EpochRecord) if f.name.startswith(("train_", "val_"))]
    return [
        asdict(
            EpochRecord(
                epoch=e,
                **{k: (i + 1) * 10 / (e + 1) - i for i, k in enumerate(losses)},
                seconds=1.5,
                frames_per_s=1e4,
                best=e < epochs - 1,
                engine="cpu:eager",
            )
        )
        for e in range(epochs)
    ]


def fake_eval(
    d: Path, ckpt: Path, utts: list[tuple[str, str, Path]], seed: int, rng, old: bool = False, run_dir: bool = False
) -> Path:
    """An evaluation directory as `sdmvae evaluate` writes it, with made-up metric values."""
    import torch

    ck = torch.load(ckpt, weights_only=True)
    if run_dir:
        d.mkdir(parents=True)
        shutil.copyfile(ckpt, d / "best.pt")
        ckpt = d / "best.pt"
        (d / "config.json").write_text(json.dumps(ck["config"] | {"seed": seed}))
        write_history(d, made_up_history(5))  # as train writes it
        d = d / "eval-test"
    d.mkdir(parents=True)
    keys = ["pesq", "stoi", "estoi", "si_sdr", "hoyer"] if old else ["pesq_nb", "pesq_wb", "stoi", "estoi", "si_sdr", "hoyer"]
    metrics = {k: {"mean": float(rng.uniform(0.2, 4)), "std": float(rng.uniform(0, 0.5)), "n": len(utts)} for k in keys}
    sparsity = {"zero_fraction": 0.0, "near_zero_fraction": 0.1, "active_units": 60, "code_dim": 64, "frames": 500}
    sparsity["hoyer_mean" if old else "hoyer_pooled"] = float(rng.uniform(0.2, 0.6))
    summary = {
        "kind": "checkpoint",
        "checkpoint": str(ckpt),
        "model": ck["config"]["model"],
        "train": ck["config"]["train"] | {"seed": seed},
        "best_epoch": 3,
        "prepared_dir": str(d / "gone"),
        "data_fingerprint": "abc",
        "split": "test",
        "files": len(utts),
        "scored": len(utts),
        "failed": 0,
        "failures": [],
        "metrics": metrics,
        "sparsity": sparsity,
        "versions": {"sdmvae": "0.1.0"},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    with open(d / "per_file.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "speaker", "path", *keys, "error"])
        for i, spk, p in utts:
            w.writerow([i, spk, str(p), *(f"{rng.uniform(0, 1):.4f}" for _ in keys), ""])
    np.save(d / "hoyer_frames.npy", rng.uniform(0, 1, 500).astype(np.float32))
    return d
