"""`sdmvae prepare`: parses options and calls :func:`sdmvae_cli.data.prepare.prepare`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from sdmvae_cli.cli.common import bar, emit, emit_json, err, positive


def prepare(
    layout: Literal["tcd-timit", "librispeech", "vctk", "folder", "kaldi", "lhotse"] = typer.Argument(
        ...,
        help="Corpus layout: tcd-timit, librispeech, vctk or folder (<root>/**/<speaker>/<utt>.wav|flac|mp3|ogg); "
        "kaldi or lhotse: manifests listing the audio where it lies.",
    ),
    paths: List[Path] = typer.Argument(
        ...,
        metavar="CORPUS_DIR OUT_DIR",
        help="The corpus, then the output directory (created): CORPUS_DIR OUT_DIR; kaldi: DATA_DIR (wav.scp, utt2spk, "
        "optional segments) OUT_DIR; lhotse: CUTS OUT_DIR or RECORDINGS SUPERVISIONS OUT_DIR (manifests, .jsonl[.gz]).",
    ),
    val_speakers: Optional[str] = typer.Option(
        None, help="Validation speakers: a count, a fraction in (0,1), or a comma-separated list (default 0.1)."
    ),
    test_speakers: Optional[str] = typer.Option(
        None, help="Test speakers: a count, a fraction in (0,1), a comma-separated list, or all (= --test-only) (default 0.1)."
    ),
    test_only: bool = typer.Option(
        False, "--test-only", help="Evaluation only: every speaker in the test split, no train or validation split."
    ),
    split_file: Optional[Path] = typer.Option(
        None,
        help='JSON {"train": [...], "validation": [...], "test": [...]} speaker lists (train optional: all others; only "test": evaluation only).',
    ),
    seed: Optional[int] = typer.Option(None, help="Seed of the random speaker split (default 0)."),
    trim: bool = typer.Option(
        True, "--trim/--no-trim", help="Trim leading/trailing silence of the training frames (librosa, top_db)."
    ),
    top_db: float = typer.Option(30.0, callback=positive, help="Silence threshold for trimming, dB below the peak."),
    include_lipspeakers: bool = typer.Option(False, help="tcd-timit: also use the 3 lipspeakers (in the train split)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Parallel worker processes."),
    force: bool = typer.Option(False, help="Recompute even if the outputs are up to date."),
    as_json: bool = typer.Option(False, "--json", help="Print prepare.json on stdout (instead of the folder's path)."),
    shard: Optional[str] = typer.Option(
        None,
        metavar="I/N",
        help="Prepare only the I-th of N blocks of every split, into OUT_DIR/shards/I-of-N (an array job: one I per "
        "machine, the same arguments); then --merge.",
    ),
    merge: bool = typer.Option(
        False, "--merge", help="Join the N shards of OUT_DIR/shards into OUT_DIR, as one machine prepares it (same arguments)."
    ),
    remove_shards: bool = typer.Option(False, "--remove-shards", help="With --merge: delete OUT_DIR/shards once merged."),
) -> None:
    """Split a corpus by speaker and compute power spectrograms (1024-sample sine window, hop 256, 513 bins).

    stdout: the prepared folder (absolute; with --shard, the shard's), or prepare.json with --json; the table goes to stderr."""
    from sdmvae_cli.data.prepare import PrepareOptions, check_inputs, check_split_options
    from sdmvae_cli.data.shards import parse_shard, prepare_in_parts

    part = parse_shard(shard) if shard is not None else None
    check_inputs(layout, len(paths))
    *inputs, out_dir = paths
    draw = {"val_speakers": val_speakers, "test_speakers": test_speakers, "seed": seed}  # given: the random split's options
    check_split_options(
        layout, split_file is not None, test_only, [f"--{k.replace('_', '-')}" for k, v in draw.items() if v is not None]
    )
    if test_only:
        draw.update(test_speakers="all", val_speakers="0")
    opts = PrepareOptions(
        layout=layout,
        trim=trim,
        top_db=top_db,
        split_file=os.path.abspath(split_file) if split_file else None,  # one spelling: shards and re-runs compare it
        include_lipspeakers=include_lipspeakers,
        jobs=jobs,
        force=force,
        **{k: v for k, v in draw.items() if v is not None},
    )
    info = prepare_in_parts(inputs, out_dir, opts, part, merge, remove_shards, progress_factory=lambda n: bar(n, "prepare"))
    out_dir = Path(info.get("shard_dir", out_dir))
    t = Table(title=f"prepared {escape(str(out_dir))}" + ("  (up to date, nothing recomputed)" if info["up_to_date"] else ""))
    for c in ("split", "speakers", "utterances", "frames", "hours", "skipped"):
        t.add_column(c, justify="right" if c != "split" else "left")
    hop = info["stft"]["hop_length"] / info["stft"]["sample_rate"]
    for name, s in info["splits"].items():
        t.add_row(
            name,
            str(s["speakers"]),
            str(s["utterances"]),
            str(s["frames"]),
            f"{s['frames'] * hop / 3600:.2f}",
            str(len(s["skipped"])),
        )
    err.print(t)
    skipped = sum(len(s["skipped"]) for s in info["splits"].values())
    if skipped:
        err.print(f"[yellow]{skipped} file(s) skipped; reasons in {escape(str(out_dir))}/<split>/.done.json[/yellow]")
    if as_json:
        emit_json({**info, "prepared_dir": str(out_dir.resolve())})
    else:
        emit(out_dir.resolve())
