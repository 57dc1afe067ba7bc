"""`sdmvae resynth`: parses options and calls :mod:`sdmvae_cli.inference.resynth`.

stdout: every written file, one per line (or JSON with --json); people's messages on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from sdmvae_cli.cli.common import MODEL_HELP, OVERWRITE_HELP, SUBTYPE_HELP, bar, device_option, emit, emit_json, err, folder_meant
from sdmvae_cli.core.errors import SdmvaeError, UsageError


def resynth(
    inp: Path = typer.Argument(
        ...,
        metavar="IN",
        help="An audio file, a directory (mirrored), with --from-list a text file of paths, or with --from-codes a .codes.npz.",
    ),
    dst_arg: str = typer.Argument(..., metavar="OUT", help="Output file, or directory (an existing one, or a path ending in /)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    save_codes: bool = typer.Option(
        False, help="Also write <out>.codes.npz with the latent codes (edit them, then --from-codes)."
    ),
    from_list: bool = typer.Option(False, help="IN is a text file with one audio path per line."),
    from_codes: bool = typer.Option(
        False, "--from-codes", help="IN is a .codes.npz from --save-codes (possibly edited): decode it to audio."
    ),
    phase_from: Optional[Path] = typer.Option(
        None, help="--from-codes: audio whose STFT phase and level are used (default: the source recorded in the file)."
    ),
    subtype: Optional[Literal["PCM_16", "PCM_24", "FLOAT"]] = typer.Option(
        None, help=SUBTYPE_HELP.replace("16-bit for WAV/FLAC", "FLOAT for WAV, PCM_16 for FLAC")
    ),
    device: str = device_option(),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes for a folder or list (CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print {written, failed} as JSON instead of one path per line."),
) -> None:
    """Resynthesise speech through a model: encode, decode the posterior mean, input phase, inverse STFT.

    Output beyond full scale (e.g. from a clipped input) is scaled down to fit, with a warning."""
    from sdmvae_cli.core.device import resolve_device
    from sdmvae_cli.inference.resynth import (
        codes_path,
        load_for_resynth,
        plan_outputs,
        resynthesise_from_codes,
        resynthesise_many,
    )

    if from_codes and (from_list or save_codes):
        raise UsageError("--from-codes decodes one codes file: no --from-list or --save-codes with it")
    if phase_from is not None and not from_codes:
        raise UsageError("--phase-from goes with --from-codes")
    dev = str(resolve_device(device))
    dst = Path(dst_arg)
    if folder_meant(dst, dst_arg) and not dst.is_dir() and not (from_list or inp.is_dir()):
        dst.mkdir(parents=True, exist_ok=True)  # `OUT/` for one file: a folder (plan_outputs makes it for many)
    if from_codes:  # its inputs (codes, phase source, model) are checked against OUT inside
        out = dst / (inp.name.removesuffix(".codes.npz").removesuffix(".npz") + ".wav") if dst.is_dir() else dst
        resynthesise_from_codes(inp, out, model, phase_from, subtype, overwrite=overwrite)
        emit_json({"written": [str(out)], "failed": []}) if as_json else emit(out)
        return
    pairs = plan_outputs(inp, dst, from_list=from_list, overwrite=overwrite, save_codes=save_codes)
    lm = load_for_resynth(model, device=dev)
    if len(pairs) == 1:  # one file: its error is THE error, printed once by the error path
        resynthesise_many(pairs, lm, save_codes=save_codes, raise_first=True, subtype=subtype)
        failures = []
    else:
        b = bar(len(pairs), "resynth")
        failures = resynthesise_many(pairs, lm, save_codes=save_codes, progress=b.update, subtype=subtype, jobs=jobs)
        b.close()
    failed = {s for s, _ in failures}
    written = [d for s, d in pairs if s not in failed]
    written += [codes_path(d) for d in written if save_codes and codes_path(d).exists()]
    if as_json:
        emit_json({"written": [str(w) for w in written], "failed": [{"input": str(s), "reason": why} for s, why in failures]})
    else:
        emit(*written)
    for src, why in failures:
        print(f"failed: {why}", file=sys.stderr)
    if failures:
        raise SdmvaeError(f"{len(failures)} of {len(pairs)} file(s) failed (listed above); the others were written under {dst}")
    if len(pairs) > 1:
        err.print(f"wrote {len(pairs)} file(s) under {escape(str(dst))}", highlight=False)
