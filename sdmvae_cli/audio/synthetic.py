"""Synthetic, clearly-labelled stand-ins for speech, for demos, tests and benchmarks.

``source_filter_speech`` is NOT speech: a glottal-like harmonic source with a gliding pitch,
shaped by three moving formant resonances, alternating with noise "fricatives" and short
pauses. It has the spectral structure the models care about (harmonics, formants,
voiced/unvoiced/silent frames), so a demo or a test can run where no corpus is available.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdmvae_cli.audio.stft import StftConfig, power_spectrogram

VOWEL_FORMANTS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]], dtype=np.float64
)


def source_filter_speech(seconds: float = 3.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like test signal (float32, peak 0.9); see the module docstring."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    seg = int(0.18 * rate)  # "syllables" of 180 ms
    n_seg = -(-n // seg)
    kinds = rng.choice(3, size=n_seg, p=[0.7, 0.2, 0.1])  # voiced, fricative, pause
    kinds[0] = 0
    f0 = 110 + 60 * rng.random() + 30 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = np.repeat(VOWEL_FORMANTS[rng.integers(0, len(VOWEL_FORMANTS), n_seg)], seg, axis=0)[:n]
    bw = np.array([80.0, 100.0, 140.0])
    n_h = int(rate / 2 / f0.min())
    voiced = np.zeros(n)
    for h in range(1, n_h + 1):
        fh = h * f0
        gain = np.sum(1.0 / (1.0 + ((fh[:, None] - formants) / bw) ** 2), axis=1) / h**0.5
        voiced += gain * np.sin(h * phase)
    noise = rng.standard_normal(n)
    fric = np.convolve(noise, [1.0, -0.95], mode="same")  # high-pass "hiss"
    kind = np.repeat(kinds, seg)[:n]
    env = np.repeat(0.5 + rng.random(n_seg), seg)[:n]
    ramp = np.convolve(np.ones(n), np.hanning(401) / np.hanning(401).sum(), mode="same")
    x = np.where(kind == 0, voiced, np.where(kind == 1, 0.3 * fric * np.abs(voiced).mean(), 0.0)) * env
    x = np.convolve(x, np.hanning(161) / np.hanning(161).sum() * 8, mode="same") * ramp
    x += 1e-4 * noise  # a floor, like a real recording
    return (0.9 * x / np.max(np.abs(x))).astype(np.float32)


def make_synthetic_prepared(
    out: Path, n_train: int, n_val: int, n_test: int = 1024, seed: int = 0, speechlike: bool = True, utterances: bool = False
) -> Path:
    """A prepared directory without a corpus: frames.npy per split and a prepare.json.

    ``speechlike`` uses power spectrograms of :func:`source_filter_speech` (for tests whose
    models must learn something); otherwise random log-normal frames (for speed benchmarks,
    where only the shapes matter). ``utterances``: the manifests list each synthetic utterance
    (4 s of frames, the last one shorter; no audio file) for sequence models, which cut their
    sequences inside utterances; without it they are empty.
    """
    import torch

    cfg = StftConfig()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    env = np.exp(-np.linspace(0, 8, cfg.n_bins, dtype=np.float32))
    for i, (split, n) in enumerate((("train", n_train), ("validation", n_val), ("test", n_test))):
        d = out / split
        d.mkdir(exist_ok=True)
        arr = np.lib.format.open_memmap(d / "frames.npy", mode="w+", dtype=np.float32, shape=(n, cfg.n_bins))
        s, rows = 0, []
        while s < n:
            if speechlike:
                x = source_filter_speech(4.0, cfg.sample_rate, seed=seed * 1000 + i * 100 + s)
                p = power_spectrogram(torch.from_numpy(x / np.abs(x).max()), cfg).numpy()
            else:
                m = min(65536, n - s)
                p = (
                    rng.lognormal(0, 2, size=(m, 1)).astype(np.float32)
                    * env
                    * rng.exponential(1.0, size=(m, cfg.n_bins)).astype(np.float32)
                )
            m = min(len(p), n - s)
            arr[s : s + m] = p[:m]
            rows.append(
                {"id": f"synthetic/{split}/{len(rows)}", "speaker": "synthetic", "path": "", "frame_offset": s, "n_frames": m}
            )
            s += m
        arr.flush()
        (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) if utterances else "")
    info = {"stft": cfg.to_dict(), "fingerprint": f"synthetic-{n_train}-{n_val}-{seed}-{int(speechlike)}", "synthetic": True}
    (out / "prepare.json").write_text(json.dumps(info))
    return out
