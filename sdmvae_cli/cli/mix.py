"""`sdmvae mix CLEAN NOISE OUT --snr 0 5`: parse options, call :mod:`sdmvae_cli.data.mixtures`.

stdout: the manifest's path; the count and the next commands go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sdmvae_cli.cli.common import bar, emit, err
from sdmvae_cli.core.errors import SdmvaeError, UsageError

# the range of --snr: sdmvae_cli.data.mixtures.SNR_RANGE (not imported here: it would load torch for
# every command's --help); tests/cli/test_info_mix.py checks that they agree.
SNR_MIN, SNR_MAX = -20.0, 40.0


def _more_snrs(words: list[str]) -> list[float]:
    """``--snr 0 5``: click gives an option one value, so the values after the first arrive as
    extra arguments; each must be a number in range (anything else: the usual extra-argument error)."""
    out = []
    for w in words:
        try:
            v = float(w)
        except ValueError:
            raise UsageError(f"unexpected extra argument {w!r} (see `sdmvae mix --help`)") from None
        if not SNR_MIN <= v <= SNR_MAX:
            raise UsageError(f"--snr: {w} is not in the range {SNR_MIN:g} to {SNR_MAX:g} dB")
        out.append(v)
    return out


def mix(
    clean: Path = typer.Argument(..., metavar="CLEAN", help="Clean speech: an audio file or a folder (searched recursively)."),
    noise: str = typer.Argument(
        ...,
        metavar="NOISE",
        help="A noise file or folder (one file drawn per utterance, looped or cropped), or a generated noise: "
        "white, pink, brown, or babble (several OTHER utterances of CLEAN summed). ./pink is a path.",
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder: noisy/, clean/ (references) and manifest.csv."),
    snr: List[float] = typer.Option(
        ..., "--snr", min=SNR_MIN, max=SNR_MAX, metavar="DB...", help="SNR(s) in dB over the whole file, -20 to 40: --snr 0 5."
    ),
    more: Optional[List[str]] = typer.Argument(None, hidden=True, metavar="DB"),  # the values after --snr's first
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed of the noise (segments, generated noise, babble talkers)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier mix in OUT (its mixtures not made again are removed); inputs never."
    ),
) -> None:
    """Make a noisy test set from clean speech: each file at each SNR, with its clean reference, ready for enhance + evaluate."""
    from sdmvae_cli.data.mixtures import mix_folder, plan_mix

    plan = plan_mix(clean, noise, out, [*snr, *_more_snrs(more or [])], overwrite=overwrite)
    progress = bar(len(plan.cleans), "mix") if len(plan.cleans) > 1 else None
    res = mix_folder(plan, progress=progress.update if progress else None, seed=seed)
    if progress:
        progress.close()
    for src, why in res.failures:
        err.print(f"failed: {why}", highlight=False, markup=False)
    err.print(
        f"{len(res.rows)} mixtures of {len(plan.cleans) - len(res.failures)} file(s) at {len(plan.snrs)} SNR(s); next: "
        f"sdmvae enhance {out / 'noisy'} ENH/ --ref {out / 'clean'}",
        highlight=False,
        markup=False,
    )
    emit(res.manifest)
    if res.failures:
        raise SdmvaeError(f"{len(res.failures)} of {len(plan.cleans)} clean file(s) could not be mixed (reasons above)")
