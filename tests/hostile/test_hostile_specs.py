"""Hostile sweep specs and run configs (found by a hostile-input run, session 7): every malformed
spec, option of the wrong type or out of range is one clear line and exit 1 (2 for the command
line's own options) before anything is written; a refused sweep leaves the earlier sweep.json
alone; outputs never go inside the prepared data; `--resume` refuses a spec that changed a
member's options. In-process through ``cli.run`` (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sdmvae_cli.cli.app import run

TINY = {"model": "vae", "latent": 4, "hidden": [16], "epochs": 1, "batch_size": 64}


def cli(capsys, *args) -> tuple[int, str, str]:
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_failure(capsys, code: int, needle: str, *args) -> str:
    got, out, err = cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert got == code and needle.lower() in lines[0].lower(), (got, lines[0])
    assert not out.strip(), out
    return lines[0]


def write_spec(path: Path, spec) -> Path:
    path.write_text(json.dumps(spec))
    return path


SPECS = {  # (spec, words the error line must hold)
    "common-list": ({"common": [1, 2], "runs": [{"name": "a"}]}, "'common' must be a table"),
    "runs-table": ({"common": TINY, "runs": {"name": "a"}}, "'runs' must be a list"),
    "runs-string": ({"common": TINY, "runs": "abc"}, "'runs' must be a list"),
    "grid-string": ({"common": TINY, "grid": "abc"}, "'grid' must be a table"),
    "grid-list-of-ints": ({"common": TINY, "grid": [1, 2]}, "'grid' must be a table"),
    "name-int": ({"common": TINY, "runs": [{"name": 5}]}, "name must be a string"),
    "name-unset-key": ({"common": TINY, "runs": [{"name": "v-s{seed}"}]}, "uses {seed}"),
    "name-bad-format": ({"common": TINY, "runs": [{"name": "a{"}]}, "not a valid format string"),
    "name-positional": ({"common": TINY, "runs": [{"name": "a{}"}]}, "not a valid format string"),
    "name-newline": ({"common": TINY, "runs": [{"name": "a\nb"}]}, "not a plain folder name"),
    "name-nul": ({"common": TINY, "runs": [{"name": "a\u0000b"}]}, "not a plain folder name"),
    "name-too-long": ({"common": TINY, "runs": [{"name": "x" * 256}]}, "too long"),
    "lr-string": ({"common": TINY, "runs": [{"name": "a", "lr": "1e-3"}]}, "'lr' must be a number"),
    "lr-nan": ({"common": TINY, "runs": [{"name": "a", "lr": float("nan")}]}, "finite"),
    "epochs-string": ({"common": TINY, "runs": [{"name": "a", "epochs": "2"}]}, "'epochs' must be an integer"),
    "epochs-fraction": ({"common": TINY, "runs": [{"name": "a", "epochs": 2.5}]}, "'epochs' must be an integer"),
    "epochs-bool": ({"common": TINY, "runs": [{"name": "a", "epochs": True}]}, "'epochs' must be an integer"),
    "epochs-zero": ({"common": TINY, "runs": [{"name": "a", "epochs": 0}]}, "--epochs must be >= 1"),
    "hidden-int": ({"common": TINY, "runs": [{"name": "a", "hidden": 16}]}, "'hidden' must be a list of integers"),
    "hidden-empty": ({"common": TINY, "runs": [{"name": "a", "hidden": []}]}, "at least one layer"),
    "seed-float": ({"common": TINY, "runs": [{"name": "a", "seed": 1.5}]}, "'seed' must be an integer"),
    "beta-negative": ({"common": TINY, "runs": [{"name": "a", "beta": -1}]}, "--beta must be >= 0"),
    "beta-string": ({"common": TINY, "runs": [{"name": "a", "beta": "x"}]}, "'beta' must be a number"),
    "grid-huge": ({"common": TINY, "grid": {"seed": list(range(300)), "beta": [float(b) for b in range(300)]}}, "90,000 runs"),
    "name-index": ({"common": TINY, "runs": [{"name": "a{lr[0]}", "lr": 1e-3}]}, "not a valid format string"),
    "name-attribute": ({"common": TINY, "runs": [{"name": "a{lr.x}", "lr": 1e-3}]}, "not a valid format string"),
    "lr-huge-integer": ({"common": TINY, "runs": [{"name": "a", "lr": 10**400}]}, "finite"),
    "seed-beyond-64-bits": ({"common": TINY, "runs": [{"name": "a", "seed": 2**64}]}, "--seed must be in"),
    "runs-too-many": ({"common": TINY, "runs": [{"name": f"r{i}", "seed": i} for i in range(10_001)]}, "more than 10,000 runs"),
    "fraction-zero": ({"common": TINY, "runs": [{"name": "a", "max_device_fraction": 0}]}, "max_device_fraction"),
    "bytes-string": ({"common": TINY, "runs": [{"name": "a", "max_device_bytes": "x"}]}, "integer or null"),
    # a member named like a file the sweep writes beside its members: it once trained, then failed
    # writing sweep.json over its folder (issue 23)
    "name-sweep-json": ({"common": TINY, "runs": [{"name": "sweep.json"}]}, "the name of a file the sweep writes"),
    "name-sweep-json-case": ({"common": TINY, "runs": [{"name": "Sweep.JSON"}]}, "the name of a file the sweep writes"),
    "name-lock-file": ({"common": TINY, "runs": [{"name": ".sdmvae.lock"}]}, "not a plain folder name"),
    # the flags' spellings are accepted, but not two spellings of one option in one table
    "two-spellings": (
        {"common": TINY, "runs": [{"name": "a", "batch-size": 32, "batch_size": 64}]},
        "two spellings of one option",
    ),
    "two-spellings-common": (
        {"common": {**TINY, "arch": "sdm"}, "runs": [{"name": "a"}]},
        "'model' and 'arch' are two spellings",
    ),
    "unknown-lists-valid": (
        {"common": TINY, "runs": [{"name": "a", "lattent": 3}]},
        "lattent (did you mean latent?); valid options: activation, alpha, base, batch_size",
    ),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_a_malformed_spec_is_one_line_and_writes_nothing(synthetic_prepared, tmp_path, capsys, case):
    spec, words = SPECS[case]
    p = write_spec(tmp_path / "spec.json", spec)
    one_line_failure(capsys, 1, words, "sweep", synthetic_prepared, p, "--out", tmp_path / "out", "--device", "cpu")
    assert not (tmp_path / "out").exists()
    one_line_failure(capsys, 1, words, "sweep-stacks", p, "--out-dir", tmp_path / "stacks")
    assert not (tmp_path / "stacks").exists()


def test_a_toml_date_is_not_a_seed(synthetic_prepared, tmp_path, capsys):
    p = tmp_path / "spec.toml"
    p.write_text('[common]\nmodel = "vae"\nlatent = 4\nepochs = 1\n\n[[runs]]\nname = "a"\nseed = 1979-05-27\n')
    one_line_failure(capsys, 1, "'seed' must be an integer", "sweep-stacks", p, "--out-dir", tmp_path / "stacks")
    assert not (tmp_path / "stacks").exists()


def test_a_streamed_chunk_holds_at_least_one_batch(synthetic_prepared, tmp_path, capsys):
    """A device budget below one batch once dropped every batch: the run "finished" without
    training. The chunk is now at least one batch, so the model trains."""
    p = write_spec(tmp_path / "spec.json", {"common": TINY, "runs": [{"name": "a", "max_device_bytes": 1000, "lr": 1e-2}]})
    code, out, err = cli(capsys, "sweep", synthetic_prepared, p, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    hist = (tmp_path / "out" / "a" / "history.csv").read_text().splitlines()
    row = dict(zip(hist[0].split(","), hist[1].split(",")))
    assert float(row["frames_per_s"]) > 0 and float(row["train_total"]) != 0.0


def test_a_stack_that_would_stream_is_refused_before_anything_is_written(synthetic_prepared, tmp_path, capsys):
    """Several seeds share a stack, which needs the split resident; a budget too small for it was
    refused only after config.json and sweep.json were written (and a plain re-run then refused
    the folder)."""
    p = write_spec(
        tmp_path / "spec.json",
        {"common": {**TINY, "max_device_bytes": 100_000}, "runs": [{"name": "a"}, {"name": "b", "seed": 1}]},
    )
    one_line_failure(
        capsys, 1, "resident in memory", "sweep", synthetic_prepared, p, "--out", tmp_path / "out", "--device", "cpu"
    )
    assert not (tmp_path / "out").exists()


def test_a_refused_sweep_leaves_the_earlier_summary(synthetic_prepared, tmp_path, capsys):
    """A finished sweep, then a `--resume` that fails before training (a damaged last.pt):
    sweep.json keeps the finished members (it was once replaced by a list of "not run")."""
    p = write_spec(tmp_path / "spec.json", {"common": TINY, "runs": [{"name": "a"}, {"name": "b", "seed": 1}]})
    out = tmp_path / "out"
    assert cli(capsys, "sweep", synthetic_prepared, p, "--out", out, "--device", "cpu")[0] == 0
    before = (out / "sweep.json").read_bytes()
    last = out / "b" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    one_line_failure(
        capsys, 1, "last.pt", "sweep", synthetic_prepared, p, "--out", out, "--device", "cpu", "--resume", "--epochs", "3"
    )
    assert (out / "sweep.json").read_bytes() == before


def test_resume_refuses_a_spec_that_changed_a_members_options(synthetic_prepared, tmp_path, capsys):
    p = write_spec(tmp_path / "spec.json", {"common": TINY, "runs": [{"name": "a"}]})
    out = tmp_path / "out"
    assert cli(capsys, "sweep", synthetic_prepared, p, "--out", out, "--device", "cpu")[0] == 0
    changed = write_spec(tmp_path / "changed.json", {"common": {**TINY, "latent": 8}, "runs": [{"name": "a"}]})
    before = {str(f): f.read_bytes() for f in (out / "a").rglob("*") if f.is_file()}
    one_line_failure(
        capsys, 1, "latent=4", "sweep", synthetic_prepared, changed, "--out", out, "--device", "cpu", "--resume", "--epochs", "2"
    )
    assert {str(f): f.read_bytes() for f in (out / "a").rglob("*") if f.is_file()} == before
    # the same spec with more epochs resumes
    code, _, err = cli(capsys, "sweep", synthetic_prepared, p, "--out", out, "--device", "cpu", "--resume", "--epochs", "2")
    assert code == 0, err


def test_train_resume_refuses_options_that_differ_from_the_runs(synthetic_prepared, tmp_path, capsys):
    """train --resume takes the run's options from its config.json: another value given on the
    command line is a usage error (it used to be ignored), the same value and a higher --epochs
    cap are accepted."""
    run_dir = tmp_path / "run"
    base = ["train", synthetic_prepared, "--arch", "vae", "--latent", "4", "--hidden", "16", "--batch-size", "64"]
    assert cli(capsys, *base, "--epochs", "1", "--lr", "1e-3", "--out", run_dir, "--device", "cpu", "--no-plot")[0] == 0
    before = {str(f): f.read_bytes() for f in run_dir.rglob("*") if f.is_file()}
    msg = one_line_failure(
        capsys, 2, "--lr 0.001", "train", synthetic_prepared, "--resume", run_dir, "--lr", "2e-3", "--epochs", "2", "--no-plot"
    )
    assert "only --epochs, --device, --cuda-graph, --compile may change" in msg
    assert {str(f): f.read_bytes() for f in run_dir.rglob("*") if f.is_file()} == before
    code, _, err = cli(capsys, *base, "--lr", "1e-3", "--resume", run_dir, "--epochs", "2", "--device", "cpu", "--no-plot")
    assert code == 0, err
    assert len((run_dir / "history.csv").read_text().splitlines()) == 3  # a header and epochs 0-1
    # the run's own config is the base: its prepared data, its epoch cap (no 500-epoch default), its family
    code, _, err = cli(capsys, "train", "--resume", run_dir, "--device", "cpu", "--no-plot")
    assert code == 0, err
    assert len((run_dir / "history.csv").read_text().splitlines()) == 3
    one_line_failure(capsys, 2, "--kl-warmup does not apply to --arch vae", "train", "--resume", run_dir, "--kl-warmup", "5")
    one_line_failure(capsys, 2, "no --config or --out", "train", "--resume", run_dir, "--out", run_dir.parent / "elsewhere")
    assert not (run_dir.parent / "elsewhere").exists()


def test_runs_are_never_written_inside_the_prepared_data(synthetic_prepared, tmp_path, capsys):
    before = sorted(str(f) for f in synthetic_prepared.rglob("*"))
    p = write_spec(tmp_path / "spec.json", {"common": TINY, "runs": [{"name": "a"}]})
    one_line_failure(
        capsys, 1, "inside, the input", "sweep", synthetic_prepared, p, "--out", synthetic_prepared, "--device", "cpu"
    )
    one_line_failure(
        capsys,
        1,
        "inside, the input",
        "train",
        synthetic_prepared,
        "--model",
        "vae",
        "--latent",
        "4",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        synthetic_prepared / "run",
    )
    assert sorted(str(f) for f in synthetic_prepared.rglob("*")) == before


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda c: c.update(train="x"), "wrong type"),
        (lambda c: c.update(prepared_dir=5), "wrong type"),
        (lambda c: c["model"].update(latent="4"), "'latent' must be an integer"),
        (lambda c: c["train"].update(lr="x"), "'lr' must be a number"),
    ],
)
def test_a_damaged_run_config_is_one_line(synthetic_prepared, tmp_path, capsys, edit, words):
    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.training.train import TrainOptions

    cfg = {
        "model": ModelConfig(**{k: v for k, v in TINY.items() if k in ("model", "latent", "hidden")}).to_dict(),
        "train": TrainOptions(epochs=1).to_dict(),
        "prepared_dir": str(synthetic_prepared),
    }
    edit(cfg)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg))
    got, _, err = cli(capsys, "train", "--config", f, "--out", tmp_path / "run", "--device", "cpu")
    assert got in (1, 2) and len(err.strip().splitlines()) == 1 and words in err and "internal error" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,words", [(["--lr", "inf"], "--lr"), (["--beta", "inf"], "'beta' must be a finite number")])
def test_infinite_options_are_usage_errors(synthetic_prepared, tmp_path, capsys, args, words):
    one_line_failure(
        capsys,
        2,
        words,
        "train",
        synthetic_prepared,
        "--model",
        "vae",
        "--latent",
        "4",
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "run",
        *args,
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [("hop_length", 0), ("sample_rate", -1), ("window", "box"), ("n_fft", 512)])
def test_a_checkpoint_with_a_bad_stft_config_is_refused(synthetic_prepared, tmp_path, capsys, field, value):
    """Such a file was released by export and then failed inside torch.stft in resynth."""
    import torch

    from sdmvae_cli.nets import ModelConfig
    from sdmvae_cli.training.train import TrainOptions, train

    train(
        synthetic_prepared,
        ModelConfig(model="vae", latent=4, hidden=[16]),
        TrainOptions(epochs=1, batch_size=64, device="cpu"),
        tmp_path / "run",
    )
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    ck["config"]["stft"][field] = value
    torch.save(ck, tmp_path / "bad.pt")
    capsys.readouterr()  # the training's own output (its tiny-data warning) is not export's
    one_line_failure(capsys, 1, "STFT", "export", tmp_path / "bad.pt", tmp_path / "rel.pt")
    assert not (tmp_path / "rel.pt").exists()
    ck["config"]["stft"][field] = StftDefault()[field]
    ck["history"] = "x"
    torch.save(ck, tmp_path / "bad2.pt")
    one_line_failure(capsys, 1, "history", "export", tmp_path / "bad2.pt", tmp_path / "run" / "best.pt", tmp_path / "rel.pt")


def StftDefault() -> dict:
    from sdmvae_cli.audio.stft import StftConfig

    return StftConfig().to_dict()


def test_enhance_scales_a_loud_result_to_full_scale_with_a_warning(tmp_path, capsys, monkeypatch):
    """A clipped input's enhancement can peak above 1 (1.39x seen): one gain down to full scale
    and a warning naming the file, as resynth does (it was hard-clipped without a word). The
    enhancement is made 3x louder here so that the case occurs on every machine."""
    import dataclasses

    import sdmvae_cli.inference.enhance as enhance
    from sdmvae_cli.audio.io import FULL_SCALE
    from sdmvae_cli.audio.synthetic import source_filter_speech

    plain = enhance.enhance_audio
    monkeypatch.setattr(enhance, "enhance_audio", lambda *a, **k: dataclasses.replace(r := plain(*a, **k), output=r.output * 3))
    src = tmp_path / "loud.wav"
    sf.write(str(src), source_filter_speech(1.0, seed=3).astype(np.float32), 16000, subtype="FLOAT")
    code, out, err = cli(capsys, "enhance", src, tmp_path / "enh.wav", "--iterations", "2", "--device", "cpu")
    assert code == 0 and out.split() == [str(tmp_path / "enh.wav")], err
    assert "loud.wav: the enhanced speech peaks at" in err and "scaled by" in err
    y, _ = sf.read(str(tmp_path / "enh.wav"))
    assert np.abs(y).max() == pytest.approx(FULL_SCALE, abs=2e-4)


def test_enhance_interrupted_lists_the_outputs_it_kept(tmp_path, capsys, monkeypatch):
    """Ctrl-C during a folder of enhancements (seconds a file): the complete outputs are listed
    on stdout and named in the one interrupted line, exit 130 (it said only "interrupted")."""
    import sdmvae_cli.inference.enhance as enhance
    from sdmvae_cli.audio.synthetic import source_filter_speech

    (tmp_path / "in").mkdir()
    for i in range(3):
        sf.write(str(tmp_path / "in" / f"u{i}.wav"), source_filter_speech(1.0, seed=i).astype(np.float32), 16000, subtype="FLOAT")
    plain, calls = enhance.enhance_file, []

    def second_is_interrupted(*a, **k):
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return plain(*a, **k)

    monkeypatch.setattr(enhance, "enhance_file", second_is_interrupted)
    code, out, err = cli(capsys, "enhance", tmp_path / "in", tmp_path / "out", "--iterations", "2", "--device", "cpu")
    assert code == 130 and "interrupted: 1 of 3 output(s) were complete" in err, err
    assert out.split() == [str(tmp_path / "out" / "u0.wav")] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "u0.wav"
    ]


def test_a_runs_option_its_architecture_does_not_read_is_refused():
    """Hostile run: {"arch": "vae", "k": 3} was stored in config.json; `train --arch vae --k 3`
    is refused. 'common' may hold options of several architectures; a default value is harmless
    (sweep-stacks writes every option out)."""
    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.training.spec import expand_spec

    with pytest.raises(SdmvaeError, match="run 'x': k does not apply to a 'vae' model"):
        expand_spec({"runs": [{"name": "x", "arch": "vae", "k": 3}]})
    with pytest.raises(SdmvaeError, match="alpha does not apply"):
        expand_spec({"grid": {"model": ["sdm"], "alpha": [0.2]}})
    runs = expand_spec(
        {"common": {"k": 32, "latent": 32}, "runs": [{"name": "v", "model": "vae"}, {"name": "s", "model": "sdm"}]}
    )
    assert [r[1].k for r in runs] == [32, 32]
    assert expand_spec({"runs": [{"name": "v", "model": "vae", "k": 64}]})  # the default: what sweep-stacks writes
