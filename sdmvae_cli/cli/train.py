"""`sdmvae train`: parses options (and ``--config``) and calls :func:`sdmvae_cli.training.train.train`.

The architecture is ``--arch`` (``--model`` is kept as an alias for older scripts: everywhere
else ``--model/-m`` is a checkpoint used for inference). ``--config FILE`` starts from a run's
``config.json`` (or a run directory holding one); options given on the command line override
it, the others come from the file, then from the defaults below.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from sdmvae_cli.cli.common import (
    arch_name,
    device_option,
    emit,
    emit_json,
    err,
    hidden_sizes,
    plot_option,
    positive,
    tb_every_option,
    tensorboard_option,
    unit_open,
)
from sdmvae_cli.core.distributed import is_main_process
from sdmvae_cli.core.errors import Interrupted, SdmvaeError, UsageError

#: CLI parameter -> ModelConfig field, and -> TrainOptions field (a parameter is its flag's name,
#: core.flags.FIELD_FLAGS, with a trailing ``_`` where the name is a Python builtin; tested)
MODEL_PARAMS = {
    "arch": "model",
    "latent": "latent",
    "hidden": "hidden",
    "activation": "activation",
    "input_transform": "input_transform",
    "beta": "beta",
    "dict_": "dictionary",
    "k": "k",
    "dict_lr": "dict_lr",
    "coherence": "coherence",
    "alpha": "alpha",
    "c_start": "c_start",
    "c_end": "c_end",
    "c_warmup": "c_warmup",
    "base": "base",
    "threshold": "threshold",
    "learn_threshold": "learn_threshold",
    "gamma_shape": "gamma_shape",
    "gamma_rate": "gamma_rate",
    "beta2": "beta2",
    "samples": "samples",
    "spread_prior": "spread_prior",
    "kl_warmup": "kl_warmup",
    "code": "code",
    "seq_len": "seq_len",
    "rnn_hidden": "rnn_hidden",
    "prior": "prior",
    "non_causal": "non_causal",
    "ss_start": "ss_start",
    "ss_end": "ss_end",
}
TRAIN_PARAMS = {
    "lr": "lr",
    "batch_size": "batch_size",
    "epochs": "epochs",
    "patience": "patience",
    "stop_on": "stop_on",
    "seed": "seed",
    "device": "device",
    "cuda_graph": "cuda_graph",
    "compile_": "compile",
    "tf32": "tf32",
}
#: how to run, not what to compute: always from this command line, never from --config (a run
#: trained on a GPU is rerun on a laptop without --device cpu)
EXECUTION = ("device", "cuda_graph", "compile", "tf32")


def read_run_config(path: Path) -> dict:
    """A run's ``config.json`` (the file, or a run directory holding it)."""
    f = path / "config.json" if path.is_dir() else path
    if not f.is_file():
        raise SdmvaeError(f"--config {path}: no such file (a run's config.json, or its run directory)")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SdmvaeError(f"--config {f}: not JSON ({type(exc).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise SdmvaeError(f"--config {f}: not a run's config.json (no 'model' section)")
    if not isinstance(d.get("train") or {}, dict) or not isinstance(d.get("prepared_dir") or "", str):
        raise SdmvaeError(f"--config {f}: not a run's config.json (its 'train' or 'prepared_dir' is of the wrong type)")
    return d


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def merged_config(ctx: typer.Context, given: dict, config: dict | None, resume: bool = False):
    """ModelConfig and TrainOptions: the command line where given, else ``config``, else defaults.
    How to run (EXECUTION) comes from the command line, except that a resume keeps the run's own
    compile and CUDA-graph settings unless they are given (bit-exact continuation)."""
    from sdmvae_cli.nets import REGISTRY, ModelConfig
    from sdmvae_cli.training.options import TrainOptions

    def explicit(name: str) -> bool:
        return _given(ctx, name)

    model = dict(config["model"]) if config else {}
    train = dict(config.get("train") or {}) if config else {}
    for p, f in MODEL_PARAMS.items():
        if config is None or explicit(p) or f not in model:
            v = given[p]
            model[f] = [int(h) for h in v.split(",") if h.strip()] if p == "hidden" else v
    known = isinstance(model.get("model"), str) and model["model"] in REGISTRY  # else ModelConfig's error below
    family = REGISTRY[model["model"]].TRAIN_DEFAULTS if known else {}
    inherited = _other_family_defaults(config, model["model"], train) if explicit("arch") and not resume else set()
    for p, f in TRAIN_PARAMS.items():
        execution = f in EXECUTION and not (resume and f != "device")
        if config is None or explicit(p) or f not in train or execution or f in inherited:
            train[f] = given[p] if explicit(p) or f not in family else family[f]
    try:
        cfg = ModelConfig.from_dict(model)
        opts = TrainOptions.from_dict(train)
    except SdmvaeError as exc:
        raise UsageError(f"--config: {exc}" if config else str(exc)) from None
    if known:  # what this configuration reads (a sequence family's: its prior's)
        refuse_foreign_options(cfg.model, [p for p in MODEL_PARAMS if explicit(p)], cfg)
    return cfg, opts


def _resumed_config(resume: Path | None) -> dict | None:
    """``--resume RUN`` without ``--config``: the run's own config.json is the base the command
    line is merged over (its architecture, options, epochs and prepared data), so that options
    are checked against the run's family, not the default one; unreadable: None (the
    checkpoint's own checks decide)."""
    if resume is None:
        return None
    try:
        return read_run_config(resume)
    except SdmvaeError:
        return None


def _check_resume_line(ctx: typer.Context, resume: Path, cfg, opts) -> None:
    """Refuse options given with --resume that differ from the run's (training.same_run). Under
    torchrun --batch-size is per rank while config.json holds the run's batch: compared as such."""
    from sdmvae_cli.core.distributed import launch_from_env
    from sdmvae_cli.training.same_run import check_same_run

    fields = [f for p, f in {**MODEL_PARAMS, **TRAIN_PARAMS}.items() if _given(ctx, p)]
    launch = launch_from_env()
    if launch is not None and "batch_size" in fields:
        opts = replace(opts, batch_size=opts.batch_size * launch.world)
    try:
        check_same_run(resume, cfg, opts, fields, source="the command line")
    except SdmvaeError as exc:
        raise UsageError(str(exc)) from None


def _other_family_defaults(config: dict | None, arch: str, train: dict) -> set[str]:
    """``--config <a DKF run> --arch vae`` (or the reverse): the training options the file holds
    at its family's defaults (the DKF's lr 2e-3, patience 50; the VAE's 1e-4, 20) where the new
    architecture's differ, which it replaces with its own instead of inheriting them; said in one
    line (a value the user chose equal to that default is replaced too: give it again to keep it)."""
    from sdmvae_cli.nets import REGISTRY
    from sdmvae_cli.training.options import TrainOptions

    old = (config or {}).get("model", {}).get("model")
    if not isinstance(old, str) or not isinstance(arch, str) or old == arch or old not in REGISTRY or arch not in REGISTRY:
        return set()
    base = TrainOptions()

    def default(a: str, f: str):
        return REGISTRY[a].TRAIN_DEFAULTS.get(f, getattr(base, f))

    both = set(REGISTRY[old].TRAIN_DEFAULTS) | set(REGISTRY[arch].TRAIN_DEFAULTS)
    fields = {f for f in both if train.get(f) == default(old, f) != default(arch, f)}
    if fields:
        was = ", ".join(f"{f} {train[f]}" for f in sorted(fields))
        now = ", ".join(f"{f} {default(arch, f)}" for f in sorted(fields))
        err.print(
            f"--config: {was} were --arch {old}'s defaults: --arch {arch} uses its own ({now}; give them to keep the old ones)",
            highlight=False,
        )
    return fields


def refuse_foreign_options(arch: str, given: list[str], cfg=None) -> None:
    """An option the architecture does not read (``--arch vae --dict identity``) is a usage
    error, not a value stored in config.json that nothing uses: the run would look like an
    SDM-VAE in its config and be a VAE. Which options an architecture reads is its class's
    ``OPTIONS`` (the same list `sdmvae models` shows), or with ``cfg`` what that configuration
    reads (a sequence family's options depend on its prior)."""
    from sdmvae_cli.core.flags import flag_of
    from sdmvae_cli.nets import REGISTRY, foreign_options

    foreign = foreign_options(arch, [MODEL_PARAMS[p] for p in given], cfg)
    if foreign:
        flags = ", ".join(flag_of(f) for f in foreign)
        # a sequence family's options depend on its prior: name it where it narrowed them
        narrowed = cfg is not None and REGISTRY[arch].reads(cfg) != REGISTRY[arch].reads()
        raise UsageError(
            f"{flags} {'does' if len(foreign) == 1 else 'do'} not apply to --arch {arch}{f' --prior {cfg.prior}' if narrowed else ''} "
            f"(it reads {', '.join(flag_of(o) for o in REGISTRY[arch].reads(cfg))}; see `sdmvae models`)"
        )


def train(
    ctx: typer.Context,
    prepared_dir: Optional[Path] = typer.Argument(
        None, help="Output of `sdmvae prepare` (default with --config: the run's prepared_dir)."
    ),
    arch: str = typer.Option(
        "sdm", "--arch", "--model", callback=arch_name, help="Architecture (see `sdmvae models`); --model is the older spelling."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Start from a run's config.json (or its run directory); options given here override it."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (default runs/<arch>-m<latent>[-<options>]-s<seed>)."
    ),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in the run directory (default: refuse)."),
    latent: int = typer.Option(64, min=1, help="Latent dimension m (paper: 32, 64)."),
    hidden: str = typer.Option(
        "128", callback=hidden_sizes, help="Hidden layer sizes, comma-separated (encoder; the decoder mirrors it)."
    ),
    activation: Literal["tanh", "relu"] = typer.Option("tanh", help="tanh or relu."),
    input_transform: Literal["log", "power"] = typer.Option(
        "log", help="Encoder input: log (log power) or power (raw, as the authors' code)."
    ),
    beta: float = typer.Option(1.0, min=0, help="KL weight (beta1 for threshold)."),
    dict_: Literal["dct", "identity", "learned"] = typer.Option(
        "dct", "--dict", help="sdm (and --prior sdm): dct, identity or learned."
    ),
    k: int = typer.Option(64, min=1, help="sdm: number of atoms."),
    dict_lr: float = typer.Option(1e-3, callback=positive, help="sdm --dict learned: the dictionary's learning rate."),
    coherence: float = typer.Option(0.0, min=0, help="sdm --dict learned: mutual-coherence penalty weight."),
    alpha: float = typer.Option(0.5, callback=unit_open, help="vsc: prior slab probability."),
    c_start: float = typer.Option(50.0, callback=positive, help="vsc: initial sharpness c of the spike selection."),
    c_end: float = typer.Option(200.0, callback=positive, help="vsc: final c."),
    c_warmup: int = typer.Option(100, min=0, help="vsc: epochs of linear c warm-up."),
    base: Literal["gaussian", "laplace"] = typer.Option("gaussian", help="threshold: gaussian or laplace base posterior."),
    threshold: float = typer.Option(0.5, min=0, help="threshold: fixed threshold lambda."),
    learn_threshold: bool = typer.Option(False, help="threshold: learn lambda with a Gamma posterior/prior."),
    gamma_shape: float = typer.Option(2.0, callback=positive, help="threshold: Gamma prior shape for lambda."),
    gamma_rate: float = typer.Option(4.0, callback=positive, help="threshold: Gamma prior rate for lambda."),
    beta2: float = typer.Option(1.0, min=0, help="threshold: weight of the Gamma KL."),
    samples: int = typer.Option(1, min=1, help="threshold: J samples per frame, max-ELBO selection."),
    spread_prior: float = typer.Option(
        1.0,
        callback=positive,
        help="threshold: the base prior's spread: variance of N(0, v) (gaussian), scale of Laplace(0, v) (laplace); the authors' 0.1.",
    ),
    kl_warmup: int = typer.Option(
        0,
        min=0,
        help="threshold and sequence models: epochs of linear KL warm-up of the training objective (0: none; the dynamical-VAE benchmark warms up over 50).",
    ),
    code: Literal["mean", "sample"] = typer.Option(
        "mean",
        help="threshold: resynthesis code: mean (E[T(s)], dense) or sample (the max-ELBO thresholded sample of J fixed draws: exact zeros, as the authors' codes; the posterior-mean validation statistic then decodes it too: use it with --samples 20).",
    ),
    seq_len: int = typer.Option(
        50, min=2, help="dkf, srnn, rvae: frames per training sequence (cut inside utterances; the benchmark's 50)."
    ),
    rnn_hidden: int = typer.Option(128, min=1, help="dkf, srnn, rvae: width of the LSTMs (the benchmark's 128)."),
    prior: Literal["gaussian", "sdm", "vsc"] = typer.Option(
        "gaussian",
        help="dkf, srnn, rvae: prior on the latent: gaussian (the benchmark's), sdm (SDM prior on the innovation: --dict, --k) or vsc (spike-and-slab: --alpha).",
    ),
    non_causal: bool = typer.Option(
        False,
        "--non-causal/--causal",
        help="rvae: a bidirectional decoder LSTM over the whole latent sequence (default: causal).",
    ),
    ss_start: int = typer.Option(0, min=0, help="srnn: scheduled sampling starts at this epoch (with --ss-end)."),
    ss_end: int = typer.Option(
        0,
        min=0,
        help="srnn: scheduled sampling reaches its end here: the decoder then always reads its own predictions (DVAE_SE: 50-150; 0: off).",
    ),
    lr: float = typer.Option(1e-4, callback=positive, help="Adam learning rate."),
    batch_size: int = typer.Option(
        128,
        min=1,
        help='Frames per batch, sequences for a sequence model (under torchrun: per rank; the run\'s batch is ranks x this, README "Scaling out").',
    ),
    epochs: int = typer.Option(500, min=1, help="Maximum epochs (numbered from 0 everywhere)."),
    patience: int = typer.Option(20, min=1, help="Early stopping: epochs without validation improvement."),
    stop_on: Literal["posterior-mean", "mean", "median"] = typer.Option(
        "posterior-mean",
        help="Validation statistic for early stopping and best.pt: posterior-mean (the ELBO with the posterior-mean "
        "code decoded and the KL in closed form: no sampling noise), mean (the paper's one-sample validation loss) or median "
        "(of the one-sample per-frame losses).",
    ),
    seed: int = typer.Option(0, help="Seed (CPU runs are bit-reproducible)."),
    device: str = device_option(),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="Replay training steps from a CUDA graph on GPU."),
    compile_: Literal["auto", "on", "off"] = typer.Option(
        "auto",
        "--compile",
        help="torch.compile of the training step: auto (on with CUDA; on a CPU when the planned work, members x min(epochs, patience+1) x frames, holds >= 2M member-frames), on, off.",
    ),
    tf32: bool = typer.Option(
        True, "--tf32/--no-tf32", help="GPU matrix products in TF32 (faster; 10-bit mantissa); no effect on a CPU."
    ),
    plot: bool = plot_option("loss.png as the run goes"),
    tensorboard: bool = tensorboard_option(
        "TensorBoard events in RUN/tb/ as the run goes (where the tensorboard package is installed: "
        "pip install 'sdmvae[tensorboard]'); history.csv stays the record."
    ),
    tb_every: int = tb_every_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result (run folder, checkpoint, best epoch and loss) as JSON."),
) -> None:
    """Train a model with Adam and early stopping; writes best.pt, last.pt, history.csv, config.json, loss.png, tb/.

    stdout: the run folder, then its best.pt (one per line), or JSON with --json; epochs go to stderr."""
    from sdmvae_cli.training.train import LiveOptions
    from sdmvae_cli.training.train import train as run

    given = dict(ctx.params)
    if resume is not None and (config is not None or _given(ctx, "out")):
        raise UsageError("--resume continues RUN in place, from its own config.json: no --config or --out with it")
    base_cfg = read_run_config(config) if config is not None else _resumed_config(resume)
    cfg, opts = merged_config(ctx, given, base_cfg, resume=resume is not None)
    if prepared_dir is None:
        if base_cfg is None or not base_cfg.get("prepared_dir"):
            if resume is not None:
                raise UsageError(f"--resume {resume}: no readable config.json naming its prepared data; give PREPARED_DIR")
            raise UsageError("give PREPARED_DIR (or --config with a run's config.json that names it)")
        prepared_dir = Path(base_cfg["prepared_dir"])
    if resume is not None and overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one of them")
    if resume is not None:  # the run's own options decide: another value given now is refused, not ignored
        _check_resume_line(ctx, resume, cfg, opts)

    def on_epoch(r) -> None:
        mark = "[green]*[/green]" if r.best else " "
        err.print(
            f"epoch {r.epoch:4d} {mark} train {r.train_total:10.3f} (IS {r.train_recon:10.3f} KL {r.train_kl:8.3f})  "
            f"val {r.val_total:10.3f} (IS {r.val_recon:10.3f} KL {r.val_kl:8.3f})  {r.seconds:6.2f}s {r.frames_per_s:,.0f} frames/s",
            highlight=False,
        )

    # the options are checked inside, before anything is read or written (a UsageError); no --out: runs/<default_run_name>
    result = run(
        prepared_dir,
        cfg if resume is None else None,
        opts,
        resume if resume is not None else out,
        resume=resume is not None,
        overwrite=overwrite,
        on_epoch=on_epoch,
        live=LiveOptions(plot=plot, tensorboard=tensorboard, tb_every=tb_every),
        # torchrun: --batch-size is per rank; a batch read from --config is the run's (config.json records it)
        batch_per_rank=base_cfg is None or _given(ctx, "batch_size"),
    )
    if is_main_process():  # torchrun: rank 0 reports the run, once
        _report(result, as_json)
    elif result.interrupted:  # the other ranks end as rank 0 does, silently (cli.app)
        raise Interrupted("interrupted")


def _report(result, as_json: bool) -> None:
    """The outcome (loss.png is drawn as the run goes): stderr says how the run ended, stdout names
    the run folder and its best.pt (or JSON); an interrupted run, or one with no completed epoch, is an error line."""
    run_dir = result.run_dir
    if result.interrupted:
        if (run_dir / "last.pt").exists():
            raise Interrupted(f"interrupted: {run_dir}/last.pt holds the last completed epoch; continue with --resume {run_dir}")
        raise Interrupted(f"interrupted before the first epoch completed: no checkpoint was written in {run_dir}")
    if not (run_dir / "best.pt").exists():
        raise SdmvaeError(f"no epoch completed: no checkpoint was written in {run_dir}")
    why = "early stopping" if result.stopped_early else "epoch limit"
    if result.advice:
        err.print(f"[yellow]warning:[/yellow] {escape(result.advice)}", highlight=False)
    err.print(
        f"done ({why}): best validation loss {result.best_val:.4f} at epoch {result.best_epoch}; checkpoint {escape(str(run_dir))}/best.pt",
        highlight=False,
    )
    if as_json:
        emit_json(
            {
                "run_dir": str(run_dir.resolve()),
                "checkpoint": str((run_dir / "best.pt").resolve()),
                "best_epoch": result.best_epoch,
                "best_val": result.best_val,
                "epochs": len(result.history),
                "stopped_early": result.stopped_early,
                "history": str((run_dir / "history.csv").resolve()),
                "engine": result.history[-1].get("engine") if result.history else None,
            }
        )
    else:
        emit(run_dir, run_dir / "best.pt")
