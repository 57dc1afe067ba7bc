"""Enhancement quality (SI-SDR, PESQ-WB, pesq_nb, ESTOI) and real-time factor of `sdmvae enhance`.

    python benchmarks/enhance_bench.py quality --out out/enhance-bench [-j 2] [--per-speaker 2]
    python benchmarks/enhance_bench.py speed [--threads 1] [--device cpu] [--seconds 5]
    python benchmarks/enhance_bench.py report out/enhance-bench   # markdown tables
    python benchmarks/enhance_bench.py quality --split validation --out out/enh-val \
        --priors vae-m64,sdm-identity-m64,laplace-m64 --mcem-priors "" --no-nmf --snrs 0,5 --max-seconds 6

quality: clean test-split speech (the dev speakers of scripts/table1_split.json's test list,
under ../shared/data/dev) mixed with generated noise -- white, pink (1/f), brown (1/f^2) and
modulated (pink noise, 100 % amplitude modulation at 2 Hz, like a slowly pulsing machine) -- at
-5, 0 and 5 dB SNR (over the whole utterance). Utterance i gets noise type i mod 4 at every SNR.
Systems: the noisy input, an NMF-only baseline (semi-supervised IS-NMF: a 32-atom speech
dictionary learned on clean training-split speech, noise NMF fitted per file; Leglaive et al.
2018's baseline) and `enhance` with every released prior. Writes per_file.csv and summary.json.

--split validation (how `enhance`'s default prior, "enhance_default" in models/default.json, is
chosen; never on test speakers): one utterance per validation speaker of
scripts/table1_split_full.json (the released models' split), the first one of 3 s or more,
cut to its first --max-seconds; the same noises and mixing.

speed: real-time factor (processing time / audio duration) of enhance_audio on one 5 s
utterance, model loading and file I/O excluded, median of repeats.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NOISES = ("white", "pink", "brown", "modulated")
SNRS = (-5.0, 0.0, 5.0)
PRIORS = ("vae-m64", "sdm-identity-m64", "sdm-dct-k64-m64", "vsc-a0.5-m64")
RATE = 16000


# -- noises --------------------------------------------------------------------------------------
def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit variance."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    f[0] = f[1]
    spec *= f ** (-exponent / 2)
    x = np.fft.irfft(spec, n)
    return x / x.std()


def make_noise(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "white":
        return rng.standard_normal(n)
    if kind == "pink":
        return coloured_noise(n, 1.0, rng)
    if kind == "brown":
        return coloured_noise(n, 2.0, rng)
    if kind == "modulated":
        t = np.arange(n) / RATE
        x = coloured_noise(n, 1.0, rng) * (1 + np.sin(2 * np.pi * 2.0 * t + rng.uniform(0, 2 * np.pi)))
        return x / x.std()
    raise ValueError(kind)


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    gain = np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    return clean + gain * noise


# -- data ----------------------------------------------------------------------------------------
def test_utterances(data: Path, per_speaker: int, limit: int | None = None, min_s: float = 3.0, max_s: float = 8.0) -> list[Path]:
    """The first ``per_speaker`` files (sorted) of 3-8 s of every test speaker, speaker by speaker in turn; at most ``limit``."""
    import soundfile as sf

    split = json.loads((REPO / "scripts" / "table1_split.json").read_text())
    out = []
    for spk in split["test"]:
        d = data / spk
        files = [f for f in sorted(d.glob("*.flac")) if min_s <= sf.info(str(f)).duration <= max_s]
        out.append(files[:per_speaker])
    # round-robin over speakers, so the first N files cover as many speakers as possible
    out = [f for rank in range(per_speaker) for files in out if rank < len(files) for f in [files[rank]]]
    if limit:
        out = out[:limit]
    if not out:
        raise SystemExit(f"no test utterances under {data}")
    return out


def validation_utterances(data: Path, max_s: float, min_s: float = 3.0) -> list[Path]:
    """One utterance per validation speaker of the released models' split (table1_split_full.json):
    the first (sorted) of at least ``min_s`` seconds; run_item cuts it to ``max_s``. These
    speakers chose no weights (only early stopping and seeds), and are not test speakers."""
    import soundfile as sf

    split = json.loads((REPO / "scripts" / "table1_split_full.json").read_text())
    out = []
    for spk in split["validation"]:
        files = [f for f in sorted((data / spk).glob("*.flac")) if sf.info(str(f)).duration >= min_s]
        out.extend(files[:1])
    if not out:
        raise SystemExit(f"no validation utterances under {data}")
    return out


def speech_dictionary(data: Path, cache: Path, rank: int = 32, n_speakers: int = 60) -> torch.Tensor:
    """IS-NMF dictionary of clean training-split speech (the baseline's speech model), cached."""
    if cache.exists():
        return torch.load(cache)
    from sdmvae_cli.audio.io import load_audio, trim_silence
    from sdmvae_cli.audio.stft import StftConfig, power_spectrogram
    from sdmvae_cli.inference.nmf import fit_is_nmf

    cfg = StftConfig()
    split = json.loads((REPO / "scripts" / "table1_split.json").read_text())
    frames = []
    for spk in split["train"][:n_speakers]:
        f = sorted((data / spk).glob("*.flac"))[0]
        x, _, _ = trim_silence(load_audio(f, cfg).samples, 30.0)
        frames.append(power_spectrogram(torch.from_numpy(np.ascontiguousarray(x)), cfg))
    power = torch.cat(frames).clamp_min(1e-10)
    W = fit_is_nmf(power, rank, 100, torch.Generator().manual_seed(0)).W
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(W, cache)
    return W


# -- scoring ---------------------------------------------------------------------------------------
def pesq_nb(ref: np.ndarray, est: np.ndarray) -> float:
    """The project's pesq_nb where metrics.py has it, else the same inversion of P.862.1 here."""
    from sdmvae_cli.evaluation import metrics

    if hasattr(metrics, "pesq_nb"):
        return metrics.pesq_nb(ref, est)
    from pesq import pesq

    y = pesq(RATE, ref.astype(np.float64), est.astype(np.float64), "nb")
    return float((4.6607 - np.log(4.0 / (y - 0.999) - 1.0)) / 1.4945)


def score(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    from sdmvae_cli.evaluation.metrics import MetricError, pesq_wb, si_sdr, stoi

    out = {}
    for key, fn in (
        ("si_sdr", si_sdr),
        ("pesq_wb", pesq_wb),
        ("pesq_nb", pesq_nb),
        ("estoi", lambda r, e: stoi(r, e, extended=True)),
    ):
        try:
            out[key] = fn(ref, est)
        except (MetricError, Exception) as exc:  # noqa: B014  a failed metric is a blank, reported
            print(f"warning: {key}: {exc}", file=sys.stderr)
            out[key] = float("nan")
    return out


def run_item(item: dict) -> list[dict]:
    """One mixture through every system (a worker's unit of work)."""
    torch.set_num_threads(1)
    from sdmvae_cli.audio.io import Audio, load_audio
    from sdmvae_cli.audio.stft import StftConfig, istft, stft
    from sdmvae_cli.inference.enhance import EnhanceOptions, enhance_audio, nmf_baseline, resolve_model
    from sdmvae_cli.nets.checkpoint import load_model

    cfg = StftConfig()
    clean = load_audio(item["file"], cfg).samples.astype(np.float64)
    if item.get("max_s"):
        clean = clean[: int(item["max_s"] * RATE)]
    noisy = mix(clean, make_noise(item["noise"], clean.size, item["seed"]), item["snr"])
    peak = float(np.abs(noisy).max())
    audio = Audio((noisy / peak).astype(np.float32), peak, RATE, 1, noisy.size)
    opts = EnhanceOptions(**item["opts"])
    base = {k: item[k] for k in ("utt", "noise", "snr")}
    rows = [{**base, "system": "noisy", **score(clean, noisy), "seconds": 0.0}]
    if item["dict"]:
        W = torch.load(item["dict"])
        t = time.perf_counter()
        x = torch.from_numpy(audio.samples)
        est = istft(nmf_baseline(stft(x, cfg), W, opts), cfg, length=x.numel()).numpy() * peak
        rows.append({**base, "system": "nmf", **score(clean, est), "seconds": time.perf_counter() - t})
    runs = [(name, opts) for name in item["priors"]] + [
        (name, EnhanceOptions(**{**item["opts"], "method": "mcem"})) for name in item["mcem"]
    ]
    for name, o in runs:
        lm = load_model(resolve_model(name))
        t = time.perf_counter()
        e = enhance_audio(audio, lm, o)
        system = name if o is opts else f"{name}+mcem"
        rows.append({**base, "system": system, **score(clean, e.output), "seconds": time.perf_counter() - t})
    return rows


def summarise(rows: list[dict]) -> dict:
    keys = ("si_sdr", "pesq_wb", "pesq_nb", "estoi")
    out: dict = {}
    for r in rows:
        for snr in (str(r["snr"]), "all", "0+5" if r["snr"] in (0.0, 5.0) else None):
            if snr is None:
                continue
            cell = out.setdefault(r["system"], {}).setdefault(snr, {k: [] for k in keys})
            for k in keys:
                if np.isfinite(r[k]):
                    cell[k].append(r[k])
    return {
        s: {snr: {k: (float(np.mean(v)) if v else None) for k, v in c.items()} | {"n": len(c["si_sdr"])} for snr, c in d.items()}
        for s, d in out.items()
    }


def quality(a) -> None:
    data = Path(a.data)
    files = (
        validation_utterances(data, a.max_seconds) if a.split == "validation" else test_utterances(data, a.per_speaker, a.limit)
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dict_path = None if a.no_nmf else out / "speech_nmf_W.pt"
    if dict_path:
        speech_dictionary(data, dict_path)
    opts = {"method": a.method, "iterations": a.iterations}
    snrs = [float(v) for v in a.snrs.split(",")] if a.snrs else SNRS
    items = []
    for i, f in enumerate(files):
        for snr in snrs:
            items.append(
                {
                    "file": str(f),
                    "utt": f.stem,
                    "noise": NOISES[i % len(NOISES)],
                    "snr": snr,
                    "seed": 1000 + i,
                    "opts": opts,
                    "dict": str(dict_path) if dict_path else "",
                    "priors": a.priors.split(","),
                    "mcem": [p for p in a.mcem_priors.split(",") if p],
                    "max_s": a.max_seconds,
                }
            )
    t0 = time.perf_counter()
    rows: list[dict] = []
    partial = out / "per_file.partial.csv"  # rows as they come: an interrupted run keeps its work
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(a.jobs)
        results = pool.map(run_item, items)
    else:
        pool, results = None, map(run_item, items)
    with open(partial, "w", newline="") as fh:
        writer = None
        for k, r in enumerate(results):
            rows += r
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(r[0]))
                writer.writeheader()
            writer.writerows(r)
            fh.flush()
            print(f"{k + 1}/{len(items)}", file=sys.stderr, end="\r")
    if pool:
        pool.shutdown()
    partial.replace(out / "per_file.csv")
    from dataclasses import asdict

    from sdmvae_cli.inference.enhance import EnhanceOptions

    summary = {
        "split": a.split,
        "max_seconds": a.max_seconds,
        "utterances": len(files),
        "mixtures": len(items),
        "options": asdict(EnhanceOptions(**opts)),
        "wall_s": round(time.perf_counter() - t0, 1),
        "jobs": a.jobs,
        "torch": torch.__version__,
        "systems": summarise(rows),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def speed(a) -> None:
    torch.set_num_threads(a.threads)
    from sdmvae_cli.audio.io import Audio, load_audio
    from sdmvae_cli.audio.stft import StftConfig
    from sdmvae_cli.inference.enhance import EnhanceOptions, enhance_audio, resolve_model
    from sdmvae_cli.nets.checkpoint import load_model

    files = test_utterances(Path(a.data), 1)
    clean = load_audio(files[0], StftConfig()).samples.astype(np.float64)
    n = int(a.seconds * RATE)
    clean = np.resize(clean, n)
    noisy = mix(clean, make_noise("pink", n, 0), 0.0)
    audio = Audio((noisy / np.abs(noisy).max()).astype(np.float32), 1.0, RATE, 1, n)
    for name in a.priors.split(","):
        lm = load_model(resolve_model(name), device=a.device)
        for method in a.methods.split(","):
            opts = EnhanceOptions(method=method, iterations=a.iterations)
            enhance_audio(audio, lm, opts)  # warm-up
            times = []
            for _ in range(a.repeats):
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                enhance_audio(audio, lm, opts)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            print(
                json.dumps(
                    {
                        "model": name,
                        "method": method,
                        "iterations": opts.iterations,
                        "device": a.device,
                        "threads": a.threads,
                        "audio_s": a.seconds,
                        "median_s": round(med, 4),
                        "rtf": round(med / a.seconds, 4),
                        "torch": torch.__version__,
                    }
                ),
                flush=True,
            )


def report(a) -> None:
    """Markdown tables from a quality run's per_file.csv (what docs/results.md shows)."""
    rows = list(csv.DictReader(open(Path(a.dir) / "per_file.csv")))
    for r in rows:
        for k in ("snr", "si_sdr", "pesq_wb", "pesq_nb", "estoi", "seconds"):
            r[k] = float(r[k])
    systems = list(dict.fromkeys(r["system"] for r in rows))
    keys = (("si_sdr", "SI-SDR", 1), ("pesq_wb", "PESQ-WB", 2), ("pesq_nb", "pesq_nb", 2), ("estoi", "ESTOI", 3))

    def mean(sel, k):
        v = [r[k] for r in sel if np.isfinite(r[k])]
        return float(np.mean(v)) if v else float("nan")

    def table(group, label):
        head = f"| system | {label} | " + " | ".join(t for _, t, _ in keys) + " | gain SI-SDR | gain PESQ-WB |"
        print(head)
        print("|---|---|" + "---:|" * (len(keys) + 2))
        for name, pick in group:
            noisy = [r for r in rows if r["system"] == "noisy" and pick(r)]
            for sys_ in systems:
                sel = [r for r in rows if r["system"] == sys_ and pick(r)]
                cells = [f"{mean(sel, k):.{d}f}" for k, _, d in keys]
                gains = [f"{mean(sel, k) - mean(noisy, k):+.{d}f}" if sys_ != "noisy" else "" for k, _, d in keys[:2]]
                print(f"| {sys_} | {name} | " + " | ".join(cells + gains) + " |")
        print()

    snrs = sorted({r["snr"] for r in rows})
    table([(f"{s:g} dB", lambda r, s=s: r["snr"] == s) for s in snrs] + [("0 and 5 dB", lambda r: r["snr"] in (0.0, 5.0))], "SNR")
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    table([(n, lambda r, n=n: r["noise"] == n and r["snr"] in (0.0, 5.0)) for n in noises], "noise (0 and 5 dB)")
    n_utt = len({r["utt"] for r in rows})
    print(
        f"{n_utt} utterances, {len(rows) // len(systems)} mixtures; per-system mean seconds per mixture: "
        + ", ".join(f"{s_} {mean([r for r in rows if r['system'] == s_], 'seconds'):.2f}" for s_ in systems if s_ != "noisy")
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    q.add_argument("--out", default=str(REPO / "out" / "enhance-bench"))
    q.add_argument("--per-speaker", type=int, default=2)
    q.add_argument("--limit", type=int, default=12, help="at most this many utterances (CPU cost)")
    q.add_argument("--priors", default=",".join(PRIORS))
    q.add_argument("--method", default="vem")
    q.add_argument("--mcem-priors", default="sdm-identity-m64", help="also run these priors with --method mcem")
    q.add_argument("--iterations", type=int, default=40)
    q.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="test: the 10 test speakers (reporting); validation: the released models' validation speakers (choosing a default)",
    )
    q.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="cut every utterance to its first N seconds (0: whole; --split validation needs it, its readers are 11-16 s)",
    )
    q.add_argument("--snrs", default="", help="comma-separated SNRs in dB (default -5,0,5)")
    q.add_argument("--no-nmf", action="store_true", help="skip the NMF-only baseline (and its speech dictionary)")
    q.add_argument("-j", "--jobs", type=int, default=1)
    s = sub.add_parser("speed")
    s.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    s.add_argument("--priors", default="sdm-identity-m64")
    s.add_argument("--methods", default="vem,mcem")
    s.add_argument("--iterations", type=int, default=40)
    s.add_argument("--seconds", type=float, default=5.0)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--device", default="cpu")
    r = sub.add_parser("report")
    r.add_argument("dir", nargs="?", default=str(REPO / "out" / "enhance-bench"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"quality": quality, "speed": speed, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
