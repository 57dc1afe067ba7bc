"""Paired statistics of two configurations on the same test utterances (`sdmvae table --layout
paired` and `--layout orderings`).

A difference of means over seeds says nothing about whether it would survive other files, other
speakers or another training seed. For configurations A and B (each possibly several seeds) and a
metric, this module gives:

- the per-file paired difference B - A: seeds are paired by number (the seeds both were trained
  with); a file's difference is its mean over the paired seeds, so a file enters only where it has
  a finite score on both sides in every paired seed (the others are left out and counted);
- a bootstrap 95 % interval of the mean difference over files, and separately over speakers (a
  cluster bootstrap: each speaker's files are averaged first and the speakers resampled, since
  the files of one speaker are not independent, so this interval carries the variation between
  speakers that the file interval ignores; with the test split's ~10 speakers it is approximate);
- the sign of the mean difference in each paired seed (``"++-"``): whether it survives retraining.

The intervals are ``scipy.stats.bootstrap`` on the mean (one sample of differences, which is the
paired bootstrap of (A, B) by construction), method BCa: differences of bounded scores (PESQ,
STOI) are skewed, with a long tail from a few hard files, and BCa corrects the percentile
interval's bias and skewness error (second-order accurate) for the cost of a jackknife of the
mean. Every interval uses a fresh generator seeded with ``SEED``, so a table is reproducible and
an interval does not depend on which other pairs are in the table.

The per-file scores are the ``per_file.csv`` that `sdmvae evaluate` writes beside summary.json
(full precision since this version, 6 significant digits before), read by
:func:`sdmvae_cli.evaluation.results.read_scores`; a speaker comes from its ``speaker`` column,
or from the manifest of the prepared folder the summary names.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import bootstrap

from sdmvae_cli.evaluation.results import Scores

CONFIDENCE = 0.95
RESAMPLES = 9999
METHOD = "BCa"
SEED = 0
#: an ordering is called significant only with at least this many paired seeds: one seed cannot
#: show that it survives retraining
MIN_SEEDS = 2


def interval(x: np.ndarray) -> tuple[float, float] | None:
    """The bootstrap interval of the mean of ``x`` (None with fewer than 2 values). Identical
    values have a point interval (BCa's acceleration is 0/0 there)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return None
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate resample distribution: reported as no interval
        ci = bootstrap(
            (x,),
            np.mean,
            vectorized=True,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method=METHOD,
            random_state=np.random.default_rng(SEED),
        ).confidence_interval
    lo, hi = float(ci.low), float(ci.high)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


@dataclass
class Paired:
    """B - A for one metric. ``files``/``left_out``: files in the mean and files left out (missing
    or unscored on a side in some paired seed); ``speaker_diff``: the mean of per-speaker means
    (the speaker interval's statistic); ``seed_diffs``: mean difference in each paired seed.
    Without per-file scores (``files`` 0) the seed differences come from the summaries' means and
    there are no intervals."""

    key: str
    a_mean: float | None
    b_mean: float | None
    diff: float | None
    files: int = 0
    left_out: int = 0
    file_ci: tuple[float, float] | None = None
    speakers: int = 0
    speaker_diff: float | None = None
    speaker_ci: tuple[float, float] | None = None
    seeds: list[int] = field(default_factory=list)
    seed_diffs: list[float] = field(default_factory=list)

    @property
    def signs(self) -> str:
        return "".join("+" if d > 0 else "-" if d < 0 else "0" for d in self.seed_diffs)

    @property
    def holding(self) -> int:
        """Paired seeds whose difference has the sign of the overall mean difference."""
        if not self.diff:
            return 0
        return sum(1 for d in self.seed_diffs if d * self.diff > 0)

    @property
    def significant(self) -> bool:
        """At 95 %: both intervals exclude 0 on the side of the mean difference, and every paired
        seed (at least ``MIN_SEEDS``) agrees in sign."""
        if not self.diff or self.file_ci is None or self.speaker_ci is None or len(self.seeds) < MIN_SEEDS:
            return False
        s = 1.0 if self.diff > 0 else -1.0
        return (
            min(s * self.file_ci[0], s * self.file_ci[1]) > 0
            and min(s * self.speaker_ci[0], s * self.speaker_ci[1]) > 0
            and self.holding == len(self.seeds)
        )


def paired_difference(
    key: str,
    a: dict[int, Scores | None],
    b: dict[int, Scores | None],
    a_summary: dict[int, float | None],
    b_summary: dict[int, float | None],
) -> Paired:
    """B - A for ``key``; ``a``/``b``: seed -> per-file scores (None where an evaluation has no
    per_file.csv), ``a_summary``/``b_summary``: seed -> the summary's mean (the fallback)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return Paired(key, None, None, None)
    if any(a[s] is None or b[s] is None for s in seeds):
        return _from_summaries(key, seeds, a_summary, b_summary)
    runs = [(a[s], b[s]) for s in seeds]
    every = set().union(*(set(x.values) | set(y.values) for x, y in runs))
    ids = sorted(i for i in every if all(key in x.values.get(i, {}) and key in y.values.get(i, {}) for x, y in runs))
    if not ids:
        return Paired(key, None, None, None, 0, len(every), seeds=seeds)
    av = np.array([[x.values[i][key] for i in ids] for x, _ in runs])  # seeds x files
    bv = np.array([[y.values[i][key] for i in ids] for _, y in runs])
    d = (bv - av).mean(axis=0)  # a file's difference: its mean over the paired seeds
    p = Paired(
        key,
        float(av.mean()),
        float(bv.mean()),
        float(d.mean()),
        len(ids),
        len(every) - len(ids),
        interval(d),
        seeds=seeds,
        seed_diffs=[float(x) for x in (bv - av).mean(axis=1)],
    )
    spk = _speaker_of(ids, [s for run in runs for s in run])
    if spk is not None:
        means = speaker_means(d, spk)
        p.speakers, p.speaker_diff, p.speaker_ci = len(means), float(means.mean()), interval(means)
    return p


def speaker_means(d: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Each speaker's mean difference over its files (sorted by speaker): the clusters resampled."""
    by: dict[str, list[float]] = {}
    for x, s in zip(d, speakers):
        by.setdefault(s, []).append(float(x))
    return np.array([np.mean(by[s]) for s in sorted(by)])


def _speaker_of(ids: list[str], scores: list[Scores]) -> list[str] | None:
    """The speaker of every file (from any evaluation that knows it), or None if one is unknown:
    an interval over the speakers that happen to be known would not be the speaker interval."""
    out = []
    for i in ids:
        spk = next((s.speakers[i] for s in scores if s.speakers.get(i)), None)
        if spk is None:
            return None
        out.append(spk)
    return out


def _from_summaries(key: str, seeds: list[int], a: dict[int, float | None], b: dict[int, float | None]) -> Paired:
    """Seed signs from the summaries' means where per-file scores are missing: no intervals."""
    both = [s for s in seeds if a.get(s) is not None and b.get(s) is not None]
    if not both:
        return Paired(key, None, None, None)
    am, bm = float(np.mean([a[s] for s in both])), float(np.mean([b[s] for s in both]))
    return Paired(key, am, bm, bm - am, seeds=both, seed_diffs=[float(b[s] - a[s]) for s in both])
