"""Quality and sparsity metrics.

Audio: PESQ-WB (ITU-T P.862.2 MOS-LQO, the `pesq` package, mode 'wb'), ``pesq_nb`` (the raw
P.862 narrow-band score, which is what the SDM-VAE paper reports: pypesq returns it, the `pesq`
package returns its P.862.1 MOS-LQO mapping, which we invert), STOI and ESTOI (`pystoi`; the
paper's "STOI" column is ESTOI: the authors call ``stoi(..., extended=True)``), SI-SDR.
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
#: the audio metrics, paper-comparable first (pesq_nb, estoi), then the modern ones
AUDIO_KEYS = ("pesq_nb", "estoi", "pesq_wb", "stoi", "si_sdr")
#: P.862.1 mapping from raw P.862 to MOS-LQO: 0.999 + 4 / (1 + exp(-1.4945 x + 4.6607))
P862_1_A, P862_1_B = 1.4945, 4.6607
#: |a| below this counts as "near zero" in the sparsity summary
NEAR_ZERO = 1e-2
#: a latent unit is "active" when the variance of its posterior-mean code over frames exceeds
#: this (Burda et al. 2016's criterion)
ACTIVE_VAR = 1e-2


class MetricError(Exception):
    pass


def _pesq(ref: np.ndarray, est: np.ndarray, rate: int, mode: str) -> float:
    from pesq import pesq

    if np.max(np.abs(est)) == 0:
        raise MetricError("PESQ undefined: the estimate is silent")
    try:
        return float(pesq(rate, ref.astype(np.float64), est.astype(np.float64), mode))
    except Exception as exc:  # NoUtterancesError, BufferTooShortError, ...
        name = type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MetricError(f"PESQ failed: {name}{': ' + text if text else ''}") from None


def pesq_wb(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> float:
    """PESQ-WB: P.862.2 MOS-LQO (the `pesq` package, mode 'wb'); needs 16 kHz."""
    if rate != 16000:
        raise MetricError(f"wide-band PESQ needs 16 kHz audio, got {rate} Hz")
    return _pesq(ref, est, rate, PESQ_MODE)


def mos_lqo_to_raw(mos: float | np.ndarray) -> float | np.ndarray:
    """Invert the P.862.1 mapping: MOS-LQO -> raw P.862 score (defined for 0.999 < mos < 4.999).

    The `pesq` package's 'nb' mode returns ``0.999 + 4 / (1 + exp(-1.4945 x + 4.6607))`` of the
    raw score x (its C source, pesqmain.c); pypesq, which the SDM-VAE authors used, returns x.
    """
    y = np.asarray(mos, dtype=np.float64)
    if np.any((y <= 0.999) | (y >= 4.999)):
        raise MetricError(f"MOS-LQO {mos} is outside the P.862.1 mapping's range (0.999, 4.999)")
    x = (P862_1_B - np.log(4.0 / (y - 0.999) - 1.0)) / P862_1_A
    return float(x) if np.ndim(x) == 0 else x


def raw_to_mos_lqo(raw: float | np.ndarray) -> float | np.ndarray:
    """The P.862.1 mapping itself (raw P.862 -> MOS-LQO), the inverse of :func:`mos_lqo_to_raw`."""
    y = 0.999 + 4.0 / (1.0 + np.exp(-P862_1_A * np.asarray(raw, dtype=np.float64) + P862_1_B))
    return float(y) if np.ndim(y) == 0 else y


def pesq_nb(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> float:
    """The paper's PESQ: raw P.862 narrow-band score (as pypesq returns it), in [-0.5, 4.5]."""
    if rate not in (8000, 16000):
        raise MetricError(f"narrow-band PESQ needs 8 or 16 kHz audio, got {rate} Hz")
    return mos_lqo_to_raw(_pesq(ref, est, rate, "nb"))


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
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(est))):
        raise MetricError("reference or estimate contains NaN or inf")
    if np.max(np.abs(est)) == 0:
        raise MetricError("the estimate is silent (all zeros)")
    return {
        "pesq_nb": pesq_nb(ref, est, rate),
        "pesq_wb": pesq_wb(ref, est, rate),
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
