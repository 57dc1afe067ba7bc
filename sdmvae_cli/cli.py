"""The `sdmvae` command line: parses options and calls library functions (nothing else).

Every user error is one line on stderr and a non-zero exit code (1; 2 for usage errors,
130 for Ctrl-C): see :func:`run`, the single error path. Ranges and choices are checked by
typer where options are parsed. Machine-readable outputs (CSV, JSON) are files or --json on
stdout; tables and progress bars are for people and go to the terminal.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sdmvae_cli import __version__
from sdmvae_cli.errors import Interrupted, SdmvaeError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sparse-latent VAEs for speech power spectrograms: prepare, train, resynth, evaluate (SDM-VAE, VSC, ...).",
)
term = Console()
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("sdmvae")


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=None, leave=False, file=sys.stderr)


def _positive(value):
    """typer callback: a strictly positive number (typer's ``min`` is inclusive)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value


def _unit_open(value: float) -> float:
    if not 0 < value < 1:
        raise typer.BadParameter(f"must be in (0, 1), got {value}")
    return value


def _hidden(value: str) -> str:
    try:
        sizes = [int(h) for h in value.split(",") if h.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"expected positive layer sizes, got {value!r}")
    return value


def _model_name(value: str) -> str:
    from sdmvae_cli.nets import model_names

    if value not in model_names():
        raise typer.BadParameter(f"{value!r} is not a model; expected one of {', '.join(model_names())} (see `sdmvae models`)")
    return value


OVERWRITE_HELP = "Replace an existing output (an input is never overwritten)."


def _version(value: bool) -> None:
    if value:
        print(f"sdmvae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print informational messages."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="warning: %(message)s", stream=sys.stderr,
                        force=True)  # force: each in-process run() logs to the current stderr


# -- prepare -------------------------------------------------------------------------------
@app.command()
def prepare(
    layout: Literal["tcd-timit", "librispeech", "vctk", "folder"] = typer.Argument(..., help="Corpus layout: tcd-timit, librispeech, vctk or folder (<root>/**/<speaker>/<utt>.wav|flac)."),
    corpus_dir: Path = typer.Argument(..., help="Root of the corpus."),
    out_dir: Path = typer.Argument(..., help="Output directory (created)."),
    val_speakers: str = typer.Option("0.1", help="Validation speakers: a count, a fraction in (0,1), or a comma-separated list."),
    test_speakers: str = typer.Option("0.1", help="Test speakers: a count, a fraction in (0,1), or a comma-separated list."),
    split_file: Optional[Path] = typer.Option(None, help='JSON {"train": [...], "validation": [...], "test": [...]} speaker lists (train optional: all others).'),
    seed: int = typer.Option(0, help="Seed of the random speaker split."),
    trim: bool = typer.Option(True, "--trim/--no-trim", help="Trim leading/trailing silence of the training frames (librosa, top_db)."),
    top_db: float = typer.Option(30.0, callback=_positive, help="Silence threshold for trimming, dB below the peak."),
    include_lipspeakers: bool = typer.Option(False, help="tcd-timit: also use the 3 lipspeakers (in the train split)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel worker processes."),
    force: bool = typer.Option(False, help="Recompute even if the outputs are up to date."),
) -> None:
    """Split a corpus by speaker and compute power spectrograms (1024-sample sine window, hop 256, 513 bins)."""
    from sdmvae_cli.prepare import PrepareOptions, prepare as run

    opts = PrepareOptions(layout=layout, trim=trim, top_db=top_db, val_speakers=val_speakers, test_speakers=test_speakers,
                          seed=seed, split_file=str(split_file) if split_file else None,
                          include_lipspeakers=include_lipspeakers, jobs=jobs, force=force)
    info = run(corpus_dir, out_dir, opts, progress_factory=lambda n: _bar(n, "prepare"))
    t = Table(title=f"prepared {escape(str(out_dir))}" + ("  (up to date, nothing recomputed)" if info["up_to_date"] else ""))
    for c in ("split", "speakers", "utterances", "frames", "hours", "skipped"):
        t.add_column(c, justify="right" if c != "split" else "left")
    hop = info["stft"]["hop_length"] / info["stft"]["sample_rate"]
    for name, s in info["splits"].items():
        t.add_row(name, str(s["speakers"]), str(s["utterances"]), str(s["frames"]), f"{s['frames'] * hop / 3600:.2f}", str(len(s["skipped"])))
    term.print(t)
    skipped = sum(len(s["skipped"]) for s in info["splits"].values())
    if skipped:
        err.print(f"[yellow]{skipped} file(s) skipped; reasons in {escape(str(out_dir))}/<split>/.done.json[/yellow]")


FLAG = {"dictionary": "dict"}  # ModelConfig field -> CLI flag, where they differ


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


# -- models --------------------------------------------------------------------------------
@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the registered models and the options each one uses."""
    from sdmvae_cli.nets import REGISTRY, ModelConfig

    defaults = ModelConfig().to_dict()
    rows = [{"name": n, "description": c.DESCRIPTION, "options": {o: defaults[o] for o in c.OPTIONS}} for n, c in sorted(REGISTRY.items())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="sdmvae models")
    t.add_column("model")
    t.add_column("description")
    t.add_column("options (default)")
    for r in rows:
        t.add_row(r["name"], r["description"], ", ".join(f"--{FLAG.get(k, k).replace('_', '-')} {_show(v)}" for k, v in r["options"].items()))
    term.print(t)


# -- train ---------------------------------------------------------------------------------
@app.command()
def train(
    prepared_dir: Path = typer.Argument(..., help="Output of `sdmvae prepare`."),
    model: str = typer.Option("sdm", callback=_model_name, help="Model name (see `sdmvae models`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<model>-<config>)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in the run directory (default: refuse)."),
    latent: int = typer.Option(64, min=1, help="Latent dimension m (paper: 32, 64)."),
    hidden: str = typer.Option("128", callback=_hidden, help="Hidden layer sizes, comma-separated (encoder; the decoder mirrors it)."),
    activation: Literal["tanh", "relu"] = typer.Option("tanh", help="tanh or relu."),
    input_transform: Literal["log", "power"] = typer.Option("log", help="Encoder input: log (log power) or power (raw, as the authors' code)."),
    beta: float = typer.Option(1.0, min=0, help="KL weight (beta1 for threshold)."),
    dict_: Literal["dct", "identity", "learned"] = typer.Option("dct", "--dict", help="sdm: dct, identity or learned."),
    k: int = typer.Option(64, min=1, help="sdm: number of atoms."),
    dict_lr: float = typer.Option(1e-3, callback=_positive, help="sdm --dict learned: the dictionary's learning rate."),
    coherence: float = typer.Option(0.0, min=0, help="sdm --dict learned: mutual-coherence penalty weight."),
    alpha: float = typer.Option(0.5, callback=_unit_open, help="vsc: prior slab probability."),
    c_start: float = typer.Option(50.0, callback=_positive, help="vsc: initial sharpness c of the spike selection."),
    c_end: float = typer.Option(200.0, callback=_positive, help="vsc: final c."),
    c_warmup: int = typer.Option(100, min=0, help="vsc: epochs of linear c warm-up."),
    base: Literal["gaussian", "laplace"] = typer.Option("gaussian", help="threshold: gaussian or laplace base posterior."),
    threshold: float = typer.Option(0.5, min=0, help="threshold: fixed threshold lambda."),
    learn_threshold: bool = typer.Option(False, help="threshold: learn lambda with a Gamma posterior/prior."),
    gamma_shape: float = typer.Option(2.0, callback=_positive, help="threshold: Gamma prior shape for lambda."),
    gamma_rate: float = typer.Option(4.0, callback=_positive, help="threshold: Gamma prior rate for lambda."),
    beta2: float = typer.Option(1.0, min=0, help="threshold: weight of the Gamma KL."),
    samples: int = typer.Option(1, min=1, help="threshold: J samples per frame, max-ELBO selection."),
    lr: float = typer.Option(1e-4, callback=_positive, help="Adam learning rate."),
    batch_size: int = typer.Option(128, min=1, help="Frames per batch."),
    epochs: int = typer.Option(500, min=1, help="Maximum epochs."),
    patience: int = typer.Option(20, min=1, help="Early stopping: epochs without validation improvement."),
    seed: int = typer.Option(0, help="Seed (CPU runs are bit-reproducible)."),
    device: str = typer.Option("auto", help="auto (GPU when present), cpu or cuda."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="Replay training steps from a CUDA graph on GPU."),
    compile_: Literal["auto", "on", "off"] = typer.Option("auto", "--compile", help="torch.compile of the training step: auto (on with CUDA), on, off."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write loss.png at the end."),
) -> None:
    """Train a model with Adam and early stopping; writes best.pt, last.pt, history.csv, loss.png."""
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.train import TrainOptions, plot_history, train as run

    hidden_sizes = [int(h) for h in hidden.split(",") if h.strip()]
    cfg = ModelConfig(model=model, latent=latent, hidden=hidden_sizes, activation=activation, input_transform=input_transform,
                      beta=beta, dictionary=dict_, k=k, dict_lr=dict_lr, coherence=coherence, alpha=alpha, c_start=c_start,
                      c_end=c_end, c_warmup=c_warmup, base=base, threshold=threshold, learn_threshold=learn_threshold,
                      gamma_shape=gamma_shape, gamma_rate=gamma_rate, beta2=beta2, samples=samples)
    opts = TrainOptions(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, seed=seed, device=device,
                        cuda_graph=cuda_graph, compile=compile_)
    if resume is not None and overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one of them")
    if resume is not None:
        run_dir = resume
    elif out is not None:
        run_dir = out
    else:
        run_dir = Path("runs") / default_run_name(cfg)
    if resume is None:
        from sdmvae_cli.nets import build_model

        try:
            build_model(cfg)  # validate options before touching the run directory
        except SdmvaeError as exc:
            raise UsageError(str(exc)) from None

    def on_epoch(r) -> None:
        mark = "[green]*[/green]" if r.best else " "
        err.print(f"epoch {r.epoch:4d} {mark} train {r.train_total:10.3f} (IS {r.train_recon:10.3f} KL {r.train_kl:8.3f})  "
                  f"val {r.val_total:10.3f} (IS {r.val_recon:10.3f} KL {r.val_kl:8.3f})  {r.seconds:6.2f}s {r.frames_per_s:,.0f} frames/s",
                  highlight=False)

    def progress(epoch: int, steps: int):
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=None, leave=False, file=sys.stderr)

    result = run(prepared_dir, cfg if resume is None else None, opts, run_dir, resume=resume is not None, overwrite=overwrite,
                 on_epoch=on_epoch, progress_factory=progress)
    if plot:
        plot_history(run_dir, result.history)
    if result.interrupted:
        if (run_dir / "last.pt").exists():
            raise Interrupted(f"interrupted: {run_dir}/last.pt holds the last completed epoch; continue with --resume {run_dir}")
        raise Interrupted(f"interrupted before the first epoch completed: no checkpoint was written in {run_dir}")
    if not (run_dir / "best.pt").exists():
        raise SdmvaeError(f"no epoch completed: no checkpoint was written in {run_dir}")
    why = "early stopping" if result.stopped_early else "epoch limit"
    term.print(f"done ({why}): best validation loss {result.best_val:.4f} at epoch {result.best_epoch}; checkpoint {escape(str(run_dir))}/best.pt")


def default_run_name(cfg) -> str:
    parts = [cfg.model, f"m{cfg.latent}"]
    if cfg.model == "sdm":
        parts += [cfg.dictionary, f"k{cfg.k}"]
    elif cfg.model == "vsc":
        parts.append(f"a{cfg.alpha:g}")
    elif cfg.model == "threshold":
        parts += [cfg.base, "learned" if cfg.learn_threshold else f"l{cfg.threshold:g}"]
    return "-".join(parts)


# -- resynth -------------------------------------------------------------------------------
@app.command()
def resynth(
    inp: Path = typer.Argument(..., metavar="IN", help="An audio file, a directory (mirrored), or with --from-list a text file of paths."),
    dst: Path = typer.Argument(..., metavar="OUT", help="Output file, or directory."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint (best.pt or its run directory); default: the released model."),
    save_codes: bool = typer.Option(False, help="Also write <out>.codes.npz with the latent codes."),
    from_list: bool = typer.Option(False, help="IN is a text file with one audio path per line."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Resynthesise speech through a model: encode, decode the posterior mean, input phase, inverse STFT.

    Output beyond full scale (e.g. from a clipped input) is scaled down to fit, with a warning."""
    from sdmvae_cli.resynth import load_for_resynth, plan_outputs, resynthesise_many

    pairs = plan_outputs(inp, dst, from_list=from_list, overwrite=overwrite, save_codes=save_codes)
    lm = load_for_resynth(model)
    if len(pairs) == 1:  # one file: its error is THE error, printed once by the error path
        resynthesise_many(pairs, lm, save_codes=save_codes, raise_first=True)
        return
    bar = _bar(len(pairs), "resynth")
    failures = resynthesise_many(pairs, lm, save_codes=save_codes, progress=bar.update)
    bar.close()
    for src, why in failures:
        print(f"failed: {why}", file=sys.stderr)
    if failures:
        raise SdmvaeError(f"{len(failures)} of {len(pairs)} file(s) failed (listed above); the others were written under {dst}")
    term.print(f"wrote {len(pairs)} file(s) under {escape(str(dst))}")


# -- evaluate ------------------------------------------------------------------------------
def _summary_table(summary: dict, title: str) -> Table:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("mean", justify="right")
    t.add_column("std", justify="right")
    t.add_column("n", justify="right")
    for k, v in summary["metrics"].items():
        if v["mean"] is None:
            t.add_row(k, "-", "-", "0")
        else:
            t.add_row(k, f"{v['mean']:.3f}", f"{v['std']:.3f}", str(v["n"]))
    sp = summary.get("sparsity")
    if sp:
        t.add_row("zero fraction", f"{sp['zero_fraction']:.3f}", "", str(sp["frames"]))
        t.add_row("near-zero fraction", f"{sp['near_zero_fraction']:.3f}", "", str(sp["frames"]))
        t.add_row("active units", f"{sp['active_units']} / {sp['code_dim']}", "", "")
    return t


@app.command()
def evaluate(
    checkpoint: Optional[Path] = typer.Argument(None, help="Checkpoint to evaluate (protocol of the paper)."),
    prepared_dir: Optional[Path] = typer.Argument(None, help="Prepared directory whose split is scored."),
    split: Literal["train", "validation", "test"] = typer.Option("test", help="Split to score."),
    ref: Optional[Path] = typer.Option(None, help="Folder mode: reference audio folder."),
    est: Optional[Path] = typer.Option(None, help="Folder mode: estimated audio folder (paired by relative path)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Where per_file.csv and summary.json go (default <ckpt dir>/eval-<split>, or ./eval)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary on stdout (the table goes to stderr)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0 = all cores)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N utterances."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier evaluation in the output directory."),
) -> None:
    """Score resynthesis quality (PESQ-WB, STOI, ESTOI, SI-SDR) and latent sparsity (Hoyer)."""
    from sdmvae_cli.evaluate import default_jobs, evaluate_checkpoint, evaluate_folders

    n_jobs = jobs if jobs > 0 else default_jobs()
    if ref is not None or est is not None:
        if ref is None or est is None or checkpoint is not None:
            raise SdmvaeError("folder mode takes --ref and --est, and no checkpoint")
        res = evaluate_folders(ref, est, out_dir or Path("eval"), jobs=n_jobs, progress_factory=lambda n: _bar(n, "evaluate"),
                               overwrite=overwrite)
        title = f"{est} vs {ref}"
    else:
        if checkpoint is None or prepared_dir is None:
            raise SdmvaeError("give CHECKPOINT PREPARED_DIR, or --ref REF_DIR --est EST_DIR")
        res = evaluate_checkpoint(checkpoint, prepared_dir, split, out_dir, jobs=n_jobs, limit=limit,
                                  progress_factory=lambda n: _bar(n, "evaluate"), overwrite=overwrite)
        title = f"{checkpoint} on {prepared_dir} [{split}]"
    console = err if as_json else term
    console.print(_summary_table(res.summary, escape(title)))
    for f in res.failures:
        print(f"failed: {f['id']}: {f['reason']}", file=sys.stderr)
    console.print(f"{res.summary['scored']}/{res.summary['files']} scored; per-file CSV and summary in {escape(str(res.out_dir))}", highlight=False)
    if as_json:
        print(json.dumps(res.summary, indent=2))
    if not res.ok:
        raise typer.Exit(1)


# -- table ---------------------------------------------------------------------------------
@app.command()
def table(
    results: List[Path] = typer.Argument(..., help="summary.json files from `sdmvae evaluate` (checkpoint or folder mode)."),
    fmt: Literal["rich", "markdown", "csv"] = typer.Option("rich", "--format", "-f", help="rich, markdown or csv."),
    layout: Literal["runs", "table1"] = typer.Option("runs", "--layout", "-l", help="runs (one row per summary) or table1 (the paper's layout, mean ± std over seeds)."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to this file (any --format) instead of stdout."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Render evaluation summaries: one row per run, or the paper's Table 1 aggregated over seeds."""
    from sdmvae_cli.outputs import check_file_destination
    from sdmvae_cli.table import render

    if out_file:
        check_file_destination(out_file, inputs=results, overwrite=overwrite)
    out = render(results, fmt, layout)
    if fmt == "rich":
        if out_file:
            from rich.console import Console

            from sdmvae_cli.atomic import write_text

            rec = Console(record=True, width=200, file=io.StringIO())
            rec.print(out)
            write_text(out_file, rec.export_text())
        else:
            term.print(out)
        return
    if out_file:
        from sdmvae_cli.atomic import write_text

        write_text(out_file, out)
    else:
        print(out, end="")


from sdmvae_cli.cli_sweep import sweep as _sweep  # noqa: E402  (one module per command)

app.command("sweep")(_sweep)

plot_app = typer.Typer(no_args_is_help=True, help="PNG figures: spectrograms, latent codes, dictionary atoms, Hoyer histograms.")
app.add_typer(plot_app, name="plot")


def _analyse(checkpoint: Optional[str], audio: Path):
    from sdmvae_cli.audio import load_audio
    from sdmvae_cli.resynth import load_for_resynth, model_power_fn, power_in_out, resynthesise_audio

    lm = load_for_resynth(checkpoint)
    a = load_audio(audio, lm.stft)
    res = resynthesise_audio(a, lm.stft, model_power_fn(lm))
    p_in, p_out = power_in_out(a, res, lm.stft)
    return lm, res, p_in, p_out, lm.stft.hop_length / lm.stft.sample_rate


def _png_destination(png: Path, src: Path, overwrite: bool) -> None:
    from sdmvae_cli.outputs import check_file_destination

    check_file_destination(png, inputs=[src], overwrite=overwrite)


@plot_app.command("spectrogram")
def plot_spectrogram(
    audio: Path = typer.Argument(..., help="Input audio file."),
    png: Path = typer.Argument(..., help="Output PNG."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint (default: the released model)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Input vs resynthesised power spectrogram of one file."""
    from sdmvae_cli.plots import plot_spectrograms

    _png_destination(png, audio, overwrite)
    lm, res, p_in, p_out, hop_s = _analyse(model, audio)
    plot_spectrograms(p_in, p_out, hop_s, lm.stft.sample_rate, png, f"{audio.name} through {Path(lm.path).name}")
    term.print(f"wrote {escape(str(png))}")


@plot_app.command("codes")
def plot_codes_cmd(
    audio: Path = typer.Argument(..., help="Input audio file."),
    png: Path = typer.Argument(..., help="Output PNG."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint (default: the released model)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Latent code activations (interpretable code) over time for one utterance, with per-frame Hoyer."""
    from sdmvae_cli.plots import plot_codes

    _png_destination(png, audio, overwrite)
    lm, res, _, _, hop_s = _analyse(model, audio)
    plot_codes(res.codes, hop_s, png)
    term.print(f"wrote {escape(str(png))}")


@plot_app.command("dictionary")
def plot_dictionary_cmd(
    checkpoint: Path = typer.Argument(..., help="An SDM-VAE checkpoint."),
    png: Path = typer.Argument(..., help="Output PNG."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """The dictionary atoms D (m x k) of an SDM-VAE checkpoint."""
    from sdmvae_cli.checkpoint import load_model
    from sdmvae_cli.plots import plot_dictionary

    _png_destination(png, checkpoint, overwrite)
    lm = load_model(checkpoint, expect_model="sdm")
    c = lm.model_config
    plot_dictionary(lm.model.D.detach().numpy(), png, f"{c.dictionary} dictionary, m={c.latent}, k={c.k}")
    term.print(f"wrote {escape(str(png))}")


@plot_app.command("hoyer")
def plot_hoyer_cmd(
    eval_dirs: List[Path] = typer.Argument(..., help="Output directories of `sdmvae evaluate CKPT PREPARED_DIR`."),
    png: Path = typer.Option(..., "--out", "-o", help="Output PNG."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Histograms of per-frame Hoyer sparsity, one per evaluated model."""
    from sdmvae_cli.outputs import check_file_destination
    from sdmvae_cli.plots import plot_hoyer_histograms

    check_file_destination(png, overwrite=overwrite)
    plot_hoyer_histograms(eval_dirs, png)
    term.print(f"wrote {escape(str(png))}")


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("sdmvae-demo"), "--out", "-o", help="Where inputs, resynthesised files and plots go."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint (default: the released model)."),
    source: Literal["auto", "espeak", "synthetic"] = typer.Option("auto", help="auto (espeak-ng if installed, else the built-in synthetic signal), espeak, synthetic."),
    audio: Optional[Path] = typer.Option(None, help="Use real audio files from this folder instead (e.g. ../shared/data/dev)."),
    limit: int = typer.Option(5, min=1, help="With --audio: at most this many files."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Resynthesise and score speech with no corpus at hand (under a minute)."""
    from sdmvae_cli.demo import run_demo

    r = run_demo(out_dir, model, source, audio, limit)
    if as_json:
        print(json.dumps(r, indent=2))
        return
    t = Table(title=f"demo: {r['source']}\nmodel {r['model']}")
    cols = ("file", "PESQ raw P.862\n(paper)", "ESTOI\n(paper's STOI)", "Hoyer", "PESQ-WB", "STOI", "SI-SDR dB")
    for col in cols:
        t.add_column(col, justify="left" if col == "file" else "right")
    for row in r["files"]:
        name = Path(row["input"]).name
        if "error" in row:
            t.add_row(name, row["error"], "", f"{row['hoyer']:.3f}", "", "", "")
        else:
            t.add_row(name, f"{row['pesq_nb']:.2f}", f"{row['estoi']:.3f}", f"{row['hoyer']:.3f}", f"{row['pesq_wb']:.2f}",
                      f"{row['stoi']:.3f}", f"{row['si_sdr']:.1f}")
    term.print(t)
    sp = r["sparsity"]
    term.print(f"latent Hoyer sparsity {sp['hoyer']:.3f} (per file over all frames; pooled {sp['hoyer_mean']:.3f}), "
               f"exact zeros {sp['zero_fraction']:.3f}, active units {sp['active_units']}/{sp['code_dim']}")
    term.print(f"files and plots (spectrograms.png, codes.png) in {escape(str(out_dir))}")


from sdmvae_cli.cli_report import report as _report  # noqa: E402

app.command("report")(_report)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (best.pt)."),
    dst: Path = typer.Argument(..., help="Release file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a small release copy of a checkpoint (no optimizer/RNG state): loadable, not resumable."""
    from sdmvae_cli.checkpoint import export_checkpoint

    export_checkpoint(checkpoint, dst, overwrite=overwrite)
    term.print(f"wrote {escape(str(dst))} ({dst.stat().st_size / 1e6:.2f} MB)")


def _fail(message: str, code: int) -> int:
    """THE error path: one line on stderr, whatever the message holds (newlines folded)."""
    line = " ".join(str(message).split())
    print(line if line.startswith(("error:", "interrupted")) else f"error: {line}", file=sys.stderr)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status; nothing is printed twice.

    2: usage errors (typer's parse errors, ranges and choices, and :class:`UsageError`);
    1: a failure (:class:`SdmvaeError`, an OS error such as a full disk, an unexpected
    exception: one line; ``SDMVAE_DEBUG=1`` re-raises it for the traceback);
    130: interrupted (Ctrl-C), with what was kept when the command knows it.
    """
    try:
        rv = app(args=argv, prog_name="sdmvae", standalone_mode=False)
    except SdmvaeError as exc:
        return _fail(str(exc), exc.exit_code)
    except typer.TyperException as exc:  # click's UsageError family: bad option, value, choice, missing argument
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
            return 2
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return _fail(exc.format_message() + hint, getattr(exc, "exit_code", 2))
    except typer.Abort:
        return _fail("interrupted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 1  # stdout closed by the reader (`| head`): nothing to say
    except OSError as exc:
        if os.environ.get("SDMVAE_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)
    except Exception as exc:  # a bug: still one line, with the way to get the traceback
        if os.environ.get("SDMVAE_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return _fail(f"internal error: {type(exc).__name__}{': ' + first if first else ''} (a bug; SDMVAE_DEBUG=1 shows the traceback)", 1)
    if rv == 130:  # typer turns KeyboardInterrupt into Exit(130) without a word
        return _fail("interrupted", 130)
    return rv if isinstance(rv, int) else 0


from sdmvae_cli.cli_enhance import enhance as _enhance  # noqa: E402  (own module: keeps this file small)

app.command("enhance")(_enhance)


def main() -> None:
    """Console entry point (see :func:`run`)."""
    sys.exit(run(sys.argv[1:]))
