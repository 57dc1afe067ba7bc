"""Quality and sparsity metrics.

Audio: PESQ wide-band (ITU-T P.862.2, the `pesq` package), STOI and ESTOI (`pystoi`), SI-SDR.
Each raises :class:`MetricError` with a one-line reason when a pair cannot be scored (silence,
too short), so callers can list failures instead of averaging in -7 or NaN.

Sparsity: Hoyer's measure (SDM-VAE eq. 12), per frame, for a code a in R^k:
H(a) = (sqrt(k) - ||a||_1 / ||a||_2) / (sqrt(k) - 1), in [0, 1], 1 for a one-hot code.
An all-zero code has no active entry at all; we define its Hoyer sparsity as 1 (maximally
sparse) so the measure is never NaN. With k = 1 the measure is undefined; we return 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

PESQ_MODE = "wb"
#: |a| below this counts as "near zero" in the sparsity summary
NEAR_ZERO = 1e-2
#: a latent unit is "active" when the variance of its posterior-mean code over frames exceeds
#: this (Burda et al. 2016's criterion)
ACTIVE_VAR = 1e-2


class MetricError(Exception):
    pass


def pesq_wb(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> float:
    from pesq import pesq

    if rate != 16000:
        raise MetricError(f"wide-band PESQ needs 16 kHz audio, got {rate} Hz")
    try:
        return float(pesq(rate, ref.astype(np.float64), est.astype(np.float64), PESQ_MODE))
    except Exception as exc:  # NoUtterancesError, BufferTooShortError, ...
        name = type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MetricError(f"PESQ failed: {name}{': ' + text if text else ''}") from None


def stoi(ref: np.ndarray, est: np.ndarray, rate: int = 16000, extended: bool = False) -> float:
    from pystoi import stoi as _stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = float(_stoi(ref.astype(np.float64), est.astype(np.float64), rate, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise MetricError(f"{'ESTOI' if extended else 'STOI'} failed: too short after removing silent frames")
    if not math.isfinite(val):
        raise MetricError(f"{'ESTOI' if extended else 'STOI'} is not finite")
    return val


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals."""
    ref = ref.astype(np.float64) - ref.mean()
    est = est.astype(np.float64) - est.mean()
    energy = float(ref @ ref)
    if energy <= 0:
        raise MetricError("SI-SDR undefined: silent reference")
    target = (est @ ref) / energy * ref
    noise = est - target
    return float(10 * np.log10((target @ target) / max(float(noise @ noise), 1e-30)))


def audio_metrics(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> dict[str, float]:
    """All audio metrics for a pair; raises MetricError with the first failure."""
    if ref.shape != est.shape:
        raise MetricError(f"length mismatch: reference {ref.shape[0]} samples, estimate {est.shape[0]}")
    if np.max(np.abs(ref)) == 0:
        raise MetricError("reference is silent")
    return {
        "pesq": pesq_wb(ref, est, rate),
        "stoi": stoi(ref, est, rate),
        "estoi": stoi(ref, est, rate, extended=True),
        "si_sdr": si_sdr(ref, est),
    }


def hoyer(codes: np.ndarray) -> np.ndarray:
    """Per-frame Hoyer sparsity (eq. 12) of (frames, k) codes; all-zero frames -> 1."""
    a = np.abs(np.asarray(codes, dtype=np.float64))
    if a.ndim == 1:
        a = a[None]
    k = a.shape[-1]
    if k == 1:
        return np.ones(a.shape[0])
    l1 = a.sum(-1)
    l2 = np.sqrt((a * a).sum(-1))
    out = np.ones(a.shape[0])
    nz = l2 > 0
    out[nz] = (math.sqrt(k) - l1[nz] / l2[nz]) / (math.sqrt(k) - 1)
    return np.clip(out, 0.0, 1.0)


def sparsity_summary(codes: np.ndarray) -> dict[str, float]:
    """Hoyer (mean, std), fractions of exact / near zeros, active units, over (frames, k)."""
    codes = np.asarray(codes, dtype=np.float64)
    h = hoyer(codes)
    var = codes.var(axis=0) if codes.shape[0] > 1 else np.zeros(codes.shape[1])
    return {
        "hoyer_mean": float(h.mean()),
        "hoyer_std": float(h.std()),
        "zero_fraction": float((codes == 0).mean()),
        "near_zero_fraction": float((np.abs(codes) < NEAR_ZERO).mean()),
        "active_units": int((var > ACTIVE_VAR).sum()),
        "code_dim": int(codes.shape[1]),
        "frames": int(codes.shape[0]),
    }
