"""`sdmvae enhance`: parse options, call :mod:`sdmvae_cli.inference.enhance` (nothing else); with
``--ref CLEAN`` then score the outputs with evaluate's folder mode (:mod:`sdmvae_cli.evaluation.evaluate`).

Registered from cli/app.py with ``app.command("enhance")(enhance)``; kept apart so app.py does not
grow. Written paths go to stdout (one per line, then the scores' summary.json), everything for people to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from sdmvae_cli.cli.common import bar, device_option, emit, err, folder_meant, positive
from sdmvae_cli.core.errors import Interrupted, SdmvaeError, UsageError

# ranges: the same as sdmvae_cli.inference.enhance.LIMITS (not imported here: it would load torch for every
# command's --help); tests/inference/test_enhance.py checks that they agree.


def enhance(
    ctx: typer.Context,
    inp: Path = typer.Argument(
        ..., metavar="NOISY", help="A noisy audio file, a directory (mirrored), or with --from-list a text file of paths."
    ),
    dst_arg: str = typer.Argument(..., metavar="OUT", help="Output file, or directory (an existing one, or a path ending in /)."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Checkpoint, run directory or released name (vae-m64, ...); default: the enhancement default (models/README.md).",
    ),
    method: Literal["vem", "mcem"] = typer.Option(
        "vem", help="vem (variational EM, fast) or mcem (Monte Carlo EM, Metropolis-Hastings; Leglaive et al. 2018)."
    ),
    iterations: int = typer.Option(40, "--iterations", "-n", min=1, max=1000, help="EM iterations."),
    nmf_rank: int = typer.Option(8, min=1, max=512, help="Rank K of the noise NMF."),
    steps: int = typer.Option(4, min=0, max=100, help="vem: Adam steps on the posterior per EM iteration."),
    lr: float = typer.Option(
        0.05,
        max=1.0,
        callback=positive,
        help="vem: Adam learning rate on the posterior, in (0, 1] (higher: more noise removed, more speech distortion).",
    ),
    chains: int = typer.Option(4, min=1, max=32, help="mcem: Metropolis-Hastings chains per frame."),
    mh_steps: int = typer.Option(8, min=1, max=100, help="mcem: MH steps per EM iteration."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed of the NMF initialisation and of the sampling."),
    device: str = device_option(),
    from_list: bool = typer.Option(False, help="NOISY is a text file with one audio path per line."),
    overwrite: bool = typer.Option(False, help="Replace outputs that already exist (an input is never overwritten)."),
    skip_existing: bool = typer.Option(
        False, help="Keep outputs that already exist and enhance the rest (finishes an interrupted folder)."
    ),
    ref: Optional[Path] = typer.Option(
        None,
        "--ref",
        metavar="CLEAN",
        help="Clean reference(s): a file, or a folder paired with the outputs by relative path (`sdmvae mix` makes one). "
        "The outputs are scored as `evaluate --ref CLEAN --est OUT` would.",
    ),
    scores: Optional[Path] = typer.Option(
        None, "--scores", help="With --ref: where summary.json and per_file.csv go (default: <OUT>-scores/ beside OUT)."
    ),
) -> None:
    """Remove noise without noisy training data: the model is a clean-speech prior, the noise an NMF fitted on each file."""
    from sdmvae_cli.inference.enhance import EnhanceOptions, plan_enhance

    opts = EnhanceOptions(
        method=method,
        iterations=iterations,
        nmf_rank=nmf_rank,
        steps=steps,
        lr=lr,
        chains=chains,
        mh_steps=mh_steps,
        keep=min(2, mh_steps),
        seed=seed,
    )
    try:
        opts.validate()  # the signature's ranges already hold; this is the library's own word
    except SdmvaeError as exc:
        raise UsageError(str(exc)) from None  # one line, exit 2
    if scores is not None and ref is None:
        raise UsageError("--scores says where --ref's scores go; give --ref CLEAN too")
    dst = Path(dst_arg)
    pairs, skipped = plan_enhance(
        inp, dst, folder=folder_meant(dst, dst_arg), from_list=from_list, overwrite=overwrite, skip_existing=skip_existing
    )
    many = from_list or inp.is_dir()
    est = dst if many else [*(d for _, d in pairs), *skipped][0]  # what --ref is paired with: OUT, or the one output
    scores_dir = _check_scoring(ref, est, many, scores, inp, overwrite or skip_existing) if ref is not None else None
    if skipped:
        err.print(f"kept {len(skipped)} existing output(s); enhancing the other {len(pairs)}", highlight=False)
    given = {n for n in ("iterations", "steps", "lr") if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP")}
    failures = _enhance(pairs, model, device, method, opts, given) if pairs else []
    if len(pairs) == 1 and failures:
        raise SdmvaeError(failures[0][1])
    for src, why in failures:
        print(f"failed: {why}", file=sys.stderr)
    scored = _score(ref, est, scores_dir, overwrite or skip_existing) if scores_dir is not None else True
    if failures:
        raise SdmvaeError(f"{len(failures)} of {len(pairs)} file(s) failed")
    if not scored:
        raise typer.Exit(1)


def _check_scoring(ref: Path, est: Path, many: bool, scores: Optional[Path], inp: Path, overwrite: bool) -> Path:
    """Before any enhancing: --ref matches the outputs (two files or two folders), and the
    scores' folder can be written (not inside an input or the outputs, no earlier scores unless
    --overwrite / --skip-existing, which finishes the folder and scores all of it again)."""
    from sdmvae_cli.evaluation.evaluate import check_out_dir
    from sdmvae_cli.evaluation.pairing import check_ref_est, scores_beside

    check_ref_est(ref, est, est_is_dir=many)
    out = scores if scores is not None else scores_beside(est, many)
    check_out_dir(out, overwrite, inputs=[ref, est, inp])
    return out


def _score(ref: Path, est: Path, out: Path, overwrite: bool) -> bool:
    """Score the outputs against --ref (evaluate's folder mode): table on stderr, summary.json on stdout."""
    from sdmvae_cli.cli.evaluate import print_summary
    from sdmvae_cli.evaluation.evaluate import default_jobs, evaluate_folders

    res = evaluate_folders(ref, est, out, jobs=default_jobs(), progress_factory=lambda n: bar(n, "score"), overwrite=overwrite)
    print_summary(res, f"{est} vs {ref}")
    emit(res.out_dir / "summary.json")
    return res.ok


def _enhance(
    pairs: list[tuple[Path, Path]], model: Optional[str], device: str, method: str, opts, given: set[str]
) -> list[tuple[Path, str]]:
    """Load the prior, enhance every pair, print the written paths; the failures (source, why)."""
    from sdmvae_cli.core.device import resolve_device
    from sdmvae_cli.inference.enhance import check_enhance_prior, enhance_many, family_options, resolve_prior
    from sdmvae_cli.nets.checkpoint import load_model

    lm = load_model(resolve_prior(model), device=resolve_device(device))
    check_enhance_prior(lm.model, method)
    opts = family_options(opts, lm.model, given)  # a sequence prior's own defaults (DVAE_SE's)
    progress = bar(len(pairs), "enhance") if len(pairs) > 1 else None
    written: list[Path] = []
    try:
        failures = enhance_many(pairs, lm, opts, progress=progress.update if progress else None, written=written)
    except KeyboardInterrupt:
        if progress:
            progress.close()
        emit(*written)
        raise Interrupted(
            f"interrupted: {len(written)} of {len(pairs)} output(s) were complete and are kept (listed on stdout); "
            "re-run the same command with --skip-existing to enhance the rest"
        ) from None
    if progress:
        progress.close()
    emit(*written)
    return failures
