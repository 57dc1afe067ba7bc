"""The level check of `sdmvae prepare`: utterances that reach (or nearly reach) full scale.

Why (issue 24): one validation utterance whose onset sits at 0.99-1.0 of full scale made the
one-sample validation loss of every model heavy-tailed (the Itakura-Saito term is exponential in
the decoder's output, and a broadband near-clipping onset is where it explodes), and nobody
knew it was there. Such files are kept, never dropped silently: they are listed per split in
``prepare.json`` (``level_check``) and named once in a warning, so a user decides.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("sdmvae")

#: a peak at or above this fraction of full scale is reported (clipped audio sits at 1.0)
NEAR_FULL_SCALE = 0.99
#: ids named in the warning line (all of them are in prepare.json)
SHOWN = 3


def level_check(manifests: dict[str, list[dict[str, Any]]], threshold: float = NEAR_FULL_SCALE) -> dict[str, Any]:
    """Per split, the utterances whose original peak (the manifest's ``gain``: the peak the
    waveform was normalised by) is >= ``threshold``, with that peak."""
    found = {
        name: [{"id": u["id"], "peak": round(float(u["gain"]), 6)} for u in rows if float(u.get("gain", 0.0)) >= threshold]
        for name, rows in manifests.items()
    }
    return {
        "threshold": threshold,
        "splits": {name: hits for name, hits in found.items() if hits},
        "counts": {name: len(rows) for name, rows in manifests.items()},
    }


def warn_levels(check: dict[str, Any]) -> None:
    """One warning line per split that has near-full-scale utterances."""
    for name, hits in check["splits"].items():
        shown = ", ".join(f"{h['id']} ({h['peak']:.3f})" for h in hits[:SHOWN])
        more = f" and {len(hits) - SHOWN} more" if len(hits) > SHOWN else ""
        log.warning(
            "%s split: %d of %d utterances peak at >= %g of full scale (clipped or nearly: %s%s); kept, listed in "
            "prepare.json (level_check)",
            name,
            len(hits),
            check["counts"][name],
            check["threshold"],
            shown,
            more,
        )
