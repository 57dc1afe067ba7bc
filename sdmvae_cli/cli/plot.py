"""`sdmvae plot ...`: parse options and call :mod:`sdmvae_cli.report.figures`. Every figure is PNG, PDF or
SVG by its suffix; written paths go to stdout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sdmvae_cli.cli.common import MODEL_HELP, OVERWRITE_HELP, emit
from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.core.outputs import check_file_destination
from sdmvae_cli.core.plotting import figure_format

plot_app = typer.Typer(
    no_args_is_help=True,
    help="Figures (.png, .pdf or .svg by suffix): spectrograms, latent codes, dictionary atoms, Hoyer histograms.",
)


def _analyse(model: Optional[str], audio: Path):
    from sdmvae_cli.audio.io import load_audio
    from sdmvae_cli.inference.resynth import load_for_resynth, model_power_fn, power_in_out, resynthesise_audio

    lm = load_for_resynth(model)
    a = load_audio(audio, lm.stft)
    res = resynthesise_audio(a, lm.stft, model_power_fn(lm))
    p_in, p_out = power_in_out(a, res, lm.stft)
    return lm, res, p_in, p_out, lm.stft.hop_length / lm.stft.sample_rate


def _destination(fig: Path, inputs: list[Path], overwrite: bool) -> None:
    """Checked before any work: the format, never an input, never inside an input folder (exit 2)."""
    figure_format(fig)
    check_file_destination(fig, inputs=inputs, overwrite=overwrite)


def _model_label(lm) -> str:
    p = Path(lm.path)
    return p.parent.name if p.stem in ("best", "last") else p.stem


@plot_app.command("spectrogram")
def plot_spectrogram(
    audio: Path = typer.Argument(..., help="Input audio file."),
    fig: Path = typer.Argument(..., metavar="OUT", help="Output figure (.png, .pdf, .svg)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Input vs resynthesised power spectrogram of one file (one dB scale)."""
    from sdmvae_cli.report.figures import plot_spectrograms

    _destination(fig, [audio], overwrite)
    lm, res, p_in, p_out, hop_s = _analyse(model, audio)
    plot_spectrograms(p_in, p_out, hop_s, lm.stft.sample_rate, fig, f"{audio.name} through {_model_label(lm)}")
    emit(fig)


@plot_app.command("codes")
def plot_codes_cmd(
    audio: Path = typer.Argument(..., help="Input audio file."),
    fig: Path = typer.Argument(..., metavar="OUT", help="Output figure; with several -m, one per model: OUT-<model>.png."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Repeat for several models."),
    shared_scale: bool = typer.Option(
        True, "--shared-scale/--own-scale", help="Several models: one colour scale for all (default), or each its own."
    ),
    vmax: Optional[float] = typer.Option(
        None, min=0, help="Top of the |code| colour scale (default: 99.5th percentile, shared across models)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Latent code activations (interpretable code) over time for one utterance, with per-frame Hoyer."""
    from sdmvae_cli.report.figures import codes_vmax, plot_codes

    names = list(model) if model else [None]
    figs = (
        [fig]
        if len(names) == 1
        else [
            fig.with_name(
                f"{fig.stem}-{Path(n).stem if Path(n).stem not in ('best', 'last') else Path(n).parent.name}{fig.suffix}"
            )
            for n in names
        ]
    )
    if len(set(figs)) != len(figs):
        raise UsageError("two models give the same figure name; give distinct checkpoints")
    for f in figs:
        _destination(f, [audio], overwrite)
    analysed = [_analyse(n, audio) for n in names]
    top = vmax if vmax is not None else (codes_vmax([r[1].codes for r in analysed]) if shared_scale and len(names) > 1 else None)
    for f, (lm, res, _, _, hop_s) in zip(figs, analysed):
        plot_codes(res.codes, hop_s, f, f"{audio.name} through {_model_label(lm)}", vmax=top)
        emit(f)


@plot_app.command("dictionary")
def plot_dictionary_cmd(
    checkpoint: str = typer.Argument(
        ...,
        help="An SDM-VAE (or a sequence model with --prior sdm) checkpoint, run directory or released name (sdm-dct-k64-m64).",
    ),
    fig: Path = typer.Argument(..., metavar="OUT", help="Output figure (.png, .pdf, .svg)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """The dictionary atoms D (m x k) of an SDM-VAE checkpoint (or of a sequence model's SDM prior)."""
    from sdmvae_cli.nets.checkpoint import checkpoint_file, load_model
    from sdmvae_cli.report.figures import plot_dictionary

    _destination(fig, [checkpoint_file(checkpoint), Path(checkpoint)], overwrite)  # a run directory is an input folder
    lm = load_model(checkpoint)
    c, d = lm.model_config, lm.model.dictionary()
    if d is None:
        raise SdmvaeError(
            f"{checkpoint} is a {c.model!r} model without a dictionary (an SDM-VAE, or a sequence model with --prior sdm, has one)"
        )
    plot_dictionary(d.detach().cpu().numpy(), fig, f"{_model_label(lm)}: {c.dictionary} dictionary, m={c.latent}, k={c.k}")
    emit(fig)


@plot_app.command("hoyer")
def plot_hoyer_cmd(
    eval_dirs: List[Path] = typer.Argument(..., help="Output directories of `sdmvae evaluate CKPT PREPARED_DIR`."),
    fig: Path = typer.Option(..., "--out", "-o", help="Output figure (.png, .pdf, .svg)."),
    title: str = typer.Option("", help="Figure title (default: per-frame Hoyer sparsity)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Histograms of per-frame Hoyer sparsity, one per evaluated model (legend: run, n frames, mean)."""
    from sdmvae_cli.evaluation.results import load_hoyer
    from sdmvae_cli.report.figures import plot_hoyer_histograms

    _destination(fig, list(eval_dirs), overwrite)
    plot_hoyer_histograms([load_hoyer(d) for d in eval_dirs], fig, title)
    emit(fig)
