"""Shared fixtures. Real-speech tests read ../shared/data beside the checkout and skip, with
the reason, where it is absent (e.g. on a user's machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

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
