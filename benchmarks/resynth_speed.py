"""Resynthesis real-time factor on ONE CPU core, model loading excluded (and reported).

    python benchmarks/resynth_speed.py --model models/sdm-dct-k64-m64.pt [--seconds 5] [--repeats 20]

RTF = processing time / audio duration, for STFT + encode + decode + iSTFT + level/rate
restoration of a 5 s, 16 kHz utterance (file I/O excluded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from sdmvae_cli.audio.io import Audio
    from sdmvae_cli.audio.synthetic import source_filter_speech
    from sdmvae_cli.inference.resynth import model_power_fn, resynthesise_audio
    from sdmvae_cli.nets.checkpoint import load_model

    t = time.perf_counter()
    lm = load_model(a.model)
    load_s = time.perf_counter() - t
    x = source_filter_speech(a.seconds)
    audio = Audio(samples=x / abs(x).max(), gain=0.5, source_rate=16000, source_channels=1, source_length=x.size)
    fn = model_power_fn(lm)
    for _ in range(3):
        resynthesise_audio(audio, lm.stft, fn)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        resynthesise_audio(audio, lm.stft, fn)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(
        json.dumps(
            {
                "model": lm.model_config.model,
                "threads": a.threads,
                "audio_s": a.seconds,
                "median_s": round(med, 5),
                "rtf": round(med / a.seconds, 5),
                "model_load_s": round(load_s, 3),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
