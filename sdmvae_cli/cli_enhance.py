"""`sdmvae enhance`: parse options, call :mod:`sdmvae_cli.enhance` (nothing else).

Registered from cli.py with ``app.command("enhance")(enhance)``; kept apart so cli.py does not
grow. Written paths go to stdout (one per line), everything for people to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sdmvae_cli.cli_common import bar, emit, folder_meant
from sdmvae_cli.errors import Interrupted, SdmvaeError, UsageError


def enhance(
    inp: Path = typer.Argument(..., metavar="NOISY", help="A noisy audio file, a directory (mirrored), or with --from-list a text file of paths."),
    dst_arg: str = typer.Argument(..., metavar="OUT", help="Output file, or directory (an existing one, or a path ending in /)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint, run directory or released model name (vae-m64, ...); default: the released default."),
    method: str = typer.Option("vem", help="vem (variational EM, fast) or mcem (Monte Carlo EM, Metropolis-Hastings; Leglaive et al. 2018)."),
    iterations: int = typer.Option(40, "--iterations", "-n", help="EM iterations."),
    nmf_rank: int = typer.Option(8, help="Rank K of the noise NMF."),
    steps: int = typer.Option(4, help="vem: Adam steps on the posterior per EM iteration."),
    lr: float = typer.Option(0.05, help="vem: Adam learning rate on the posterior (higher: more noise removed, more speech distortion)."),
    chains: int = typer.Option(4, help="mcem: Metropolis-Hastings chains per frame."),
    mh_steps: int = typer.Option(8, help="mcem: MH steps per EM iteration."),
    seed: int = typer.Option(0, help="Seed of the NMF initialisation and of the sampling."),
    device: str = typer.Option("auto", help="auto (GPU when present), cpu or cuda."),
    from_list: bool = typer.Option(False, help="NOISY is a text file with one audio path per line."),
    overwrite: bool = typer.Option(False, help="Replace outputs that already exist."),
) -> None:
    """Remove noise without noisy training data: the model is a clean-speech prior, the noise an NMF fitted on each file."""
    from sdmvae_cli.checkpoint import load_model
    from sdmvae_cli.enhance import EnhanceOptions, check_outputs, enhance_many, pick_device, resolve_model
    from sdmvae_cli.resynth import plan_outputs

    opts = EnhanceOptions(method=method, iterations=iterations, nmf_rank=nmf_rank, steps=steps, lr=lr, chains=chains,
                          mh_steps=mh_steps, keep=min(2, mh_steps), seed=seed)
    try:
        opts.validate()
    except SdmvaeError as exc:
        raise UsageError(str(exc)) from None  # one line, exit 2
    dev = pick_device(device)
    lm = load_model(resolve_model(model), device=dev)
    dst = Path(dst_arg)
    if (not from_list and inp.is_dir() and not dst.suffix) or (folder_meant(dst, dst_arg) and not dst.is_dir()):
        dst.mkdir(parents=True, exist_ok=True)  # `OUT/` means a folder, also for one file
    pairs = plan_outputs(inp, dst, from_list=from_list)
    check_outputs(pairs, overwrite)
    progress = bar(len(pairs), "enhance") if len(pairs) > 1 else None
    written: list[Path] = []
    try:
        failures = enhance_many(pairs, lm, opts, progress=progress.update if progress else None, written=written)
    except KeyboardInterrupt:
        if progress:
            progress.close()
        emit(*written)
        raise Interrupted(f"interrupted: {len(written)} of {len(pairs)} output(s) were complete and are kept (listed on stdout); "
                          "re-running the same command refuses them without --overwrite") from None
    if progress:
        progress.close()
    emit(*written)
    if len(pairs) == 1 and failures:
        raise SdmvaeError(failures[0][1])
    for src, why in failures:
        print(f"failed: {why}", file=sys.stderr)
    if failures:
        raise SdmvaeError(f"{len(failures)} of {len(pairs)} file(s) failed")
