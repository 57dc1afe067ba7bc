"""Quality and sparsity metrics.

Audio: PESQ-WB (ITU-T P.862.2 MOS-LQO, the `pesq` package, mode 'wb'), ``pesq_nb`` (the raw
P.862 narrow-band score, which is what the SDM-VAE paper reports: pypesq returns it, the `pesq`
package returns its P.862.1 MOS-LQO mapping, which we invert), STOI and ESTOI (`pystoi`; the
paper's "STOI" column is ESTOI: the authors call ``stoi(..., extended=True)``), SI-SDR.
Each raises :class:`MetricError` with a one-line reason when a pair cannot be scored (silence,
too short), so callers can list failures instead of averaging in -7 or NaN. :func:`score_pair`
computes each metric on its own, so one metric's failure never loses the others.

PESQ runs in a forked child process: the `pesq` package's C code (the ITU-T P.862 reference
implementation) keeps the speech segments its voice-activity detector finds in fixed arrays of
MAXNUTTERANCES = 50 (pesq.h) and ``id_searchwindows`` / ``id_utterances`` (pesqmod.c) write past
them without a bound check; the arrays live on the caller's stack, so a reference with more than
about 50 segments (read speech: ~2 minutes, shown by AddressSanitizer on a tiled LibriSpeech
utterance) smashes the stack and the process dies with SIGSEGV. In a child, that is one
metric's failure with its reason. Scoring such a file in pieces would not be P.862 (which
aligns and aggregates over the whole file), so it is not done.

Sparsity: Hoyer's measure (SDM-VAE eq. 12), per frame, for a code a in R^k:
H(a) = (sqrt(k) - ||a||_1 / ||a||_2) / (sqrt(k) - 1), in [0, 1], 1 for a one-hot code.
An all-zero code has no active entry at all; we define its Hoyer sparsity as 1 (maximally
sparse) so the measure is never NaN. With k = 1 the measure is undefined; we return 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import signal
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pesq as pesq_lib
import pystoi

PESQ_MODE = "wb"


@dataclass(frozen=True)
class Metric:
    """One metric of an evaluation: THE place its name, header, precision and method are
    declared; `evaluate` (summary.json's ``settings``, per_file.csv's columns), `table`, the
    report's results table, `sdmvae models --released` and `demo` all read :data:`METRICS`, so
    a metric is added by one entry here (and its scoring function)."""

    key: str  #: its column in per_file.csv and its entry in summary.json's ``metrics``
    label: str  #: the header people read (tables, report, models, demo)
    paper: bool  #: comparable with the SDM-VAE paper's Table 1 (else a modern extra)
    digits: int  #: decimals shown to people (CSV output keeps full precision)
    description: str  #: how it is computed: recorded in summary.json's ``settings``
    audio: bool = True  #: scored on a (reference, estimate) waveform pair (else from the latent codes)
    #: the summary's value is the mean of the per-file values, so files pair up across runs
    #: (paired statistics) and one file has it; the pooled Hoyer is over the split's pooled frames
    over_files: bool = True
    old_key: str | None = None  #: its name in evaluations older than the current one

    @property
    def short(self) -> str:
        """The label without its qualifier in brackets ("PESQ P.862 raw"), for narrow tables."""
        return self.label.split(" (")[0]


#: every metric, in table order: the paper's first, then the modern ones
METRICS: tuple[Metric, ...] = (
    Metric(
        "pesq_nb",
        "PESQ P.862 raw (paper)",
        True,
        2,
        "pesq package, mode 'nb', P.862.1 mapping inverted: raw P.862 (as pypesq, the paper's PESQ)",
    ),
    Metric("estoi", "ESTOI (paper's STOI)", True, 3, "pystoi stoi(extended=True) (the paper's STOI column)"),
    Metric(
        "hoyer",
        "Hoyer (paper protocol)",
        True,
        3,
        "eq. 12 per frame over every frame of the untrimmed utterance, mean per file, then over files; all-zero frame = 1",
        audio=False,
    ),
    Metric("pesq_wb", "PESQ-WB", False, 2, f"pesq package, mode {PESQ_MODE!r} (P.862.2 MOS-LQO)", old_key="pesq"),
    Metric("stoi", "STOI", False, 3, "pystoi stoi(extended=False)"),
    Metric("si_sdr", "SI-SDR dB", False, 1, "scale-invariant SDR (Le Roux et al. 2019), zero-mean signals"),
    Metric(
        "hoyer_pooled",
        "Hoyer pooled-trimmed",
        False,
        3,
        "eq. 12 per frame over the split's pooled, silence-trimmed prepared frames; all-zero frame = 1",
        audio=False,
        over_files=False,
    ),
)
METRIC: dict[str, Metric] = {m.key: m for m in METRICS}
#: the metrics comparable with the paper (Table 1)
PAPER_KEYS = tuple(m.key for m in METRICS if m.paper)
#: the audio metrics, paper-comparable first (pesq_nb, estoi), then the modern ones
AUDIO_KEYS = tuple(m.key for m in METRICS if m.audio)
#: the speech measures: a pair none of them can score (too short, no speech) is not scored at
#: all (SI-SDR needs only a non-silent reference, so alone it would count any such pair)
SPEECH_KEYS = ("pesq_nb", "pesq_wb", "stoi", "estoi")
#: P.862.1 mapping from raw P.862 to MOS-LQO: 0.999 + 4 / (1 + exp(-1.4945 x + 4.6607))
P862_1_A, P862_1_B = 1.4945, 4.6607
#: |a| below this counts as "near zero" in the sparsity summary
NEAR_ZERO = 1e-2
#: a latent unit is "active" when the variance of its posterior-mean code over frames exceeds
#: this (Burda et al. 2016's criterion)
ACTIVE_VAR = 1e-2


class MetricError(Exception):
    pass


#: P.862's reference code holds this many speech segments (pesq.h); more overflow its arrays
PESQ_MAX_SEGMENTS = 50


def _pesq(ref: np.ndarray, est: np.ndarray, rate: int, mode: str) -> float:
    if np.max(np.abs(est)) == 0:
        raise MetricError("PESQ undefined: the estimate is silent")
    return isolated(
        _pesq_here,
        ref,
        est,
        rate,
        mode,
        what="PESQ",
        crash=f"the pesq library's P.862 code overflows its arrays beyond {PESQ_MAX_SEGMENTS} speech segments "
        "(about 2 minutes of speech); not scored",
    )


def _pesq_here(ref: np.ndarray, est: np.ndarray, rate: int, mode: str) -> float:
    try:
        return float(pesq_lib.pesq(rate, ref.astype(np.float64), est.astype(np.float64), mode))
    except Exception as exc:  # NoUtterancesError, BufferTooShortError, ...
        name = type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MetricError(f"PESQ failed: {name}{': ' + text if text else ''}") from None


def isolated(fn: Callable[..., float], *args, what: str, crash: str) -> float:
    """``fn(*args)`` in a forked child process, so that C code that kills its process (a
    segfault) costs this one call: a :class:`MetricError` naming the signal and ``crash`` (the
    known cause). Errors ``fn`` raises come back as MetricError with their message."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running the parent's exit handlers
        code = 0
        try:
            os.close(rfd)
            try:
                out: tuple = ("ok", fn(*args))
            except MetricError as exc:
                out = ("error", str(exc))
            except Exception as exc:  # noqa: BLE001  (an unexpected library error: its one line)
                out = ("error", f"{what} failed: {type(exc).__name__}: {str(exc).strip()[:160]}")
            with os.fdopen(wfd, "wb") as fh:
                fh.write(pickle.dumps(out))
        except BaseException:  # noqa: BLE001  (Ctrl-C, a closed pipe: the parent sees no result)
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        raise MetricError(f"{what} crashed ({name}); {crash}")
    if not data:
        raise MetricError(f"{what} failed: its process exited with status {os.waitstatus_to_exitcode(status)} and no result")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise MetricError(value)
    return value


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = float(pystoi.stoi(ref.astype(np.float64), est.astype(np.float64), rate, extended=extended))
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


def score_pair(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> tuple[dict[str, float], dict[str, str]]:
    """Every audio metric of a pair, each computed on its own: (values, reasons). A metric that
    fails is NaN in ``values`` and its one-line reason is in ``reasons``, so that PESQ failing
    on a long file (see the module's docstring) leaves STOI, ESTOI and SI-SDR standing. A pair
    that cannot be scored (lengths differ, silence, NaN, no speech measure succeeds) raises
    MetricError."""
    if ref.shape != est.shape:
        raise MetricError(f"length mismatch: reference {ref.shape[0]} samples, estimate {est.shape[0]}")
    if np.max(np.abs(ref)) == 0:
        raise MetricError("reference is silent")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(est))):
        raise MetricError("reference or estimate contains NaN or inf")
    if np.max(np.abs(est)) == 0:
        raise MetricError("the estimate is silent (all zeros)")
    fns: dict[str, Callable[[], float]] = {
        "pesq_nb": lambda: pesq_nb(ref, est, rate),
        "pesq_wb": lambda: pesq_wb(ref, est, rate),
        "stoi": lambda: stoi(ref, est, rate),
        "estoi": lambda: stoi(ref, est, rate, extended=True),
        "si_sdr": lambda: si_sdr(ref, est),
    }
    values, reasons = {}, {}
    for key, fn in fns.items():
        try:
            values[key] = fn()
        except MetricError as exc:
            values[key], reasons[key] = math.nan, str(exc)
    if all(k in reasons for k in SPEECH_KEYS):  # e.g. too short: SI-SDR alone does not make it scored
        raise MetricError(reasons[SPEECH_KEYS[0]])
    return values, reasons


def audio_metrics(ref: np.ndarray, est: np.ndarray, rate: int = 16000) -> dict[str, float]:
    """All audio metrics for a pair, or MetricError with the first failure (for callers that
    want all or nothing; :func:`score_pair` keeps what could be scored)."""
    values, reasons = score_pair(ref, est, rate)
    if reasons:
        raise MetricError(next(iter(reasons.values())))
    return values


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
