"""Live logs of `train` and `sweep`: TensorBoard events that repeat history.csv, examples at the
chosen interval, loss.png as the run goes (also interrupted), never a failure; the tiny-data warning."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import sys

import numpy as np
from conftest import cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.training import live_logs, tensorboard_log
from sdmvae_cli.training import train as train_module
from sdmvae_cli.training.live_logs import LiveOptions
from sdmvae_cli.training.sweep import run_sweep
from sdmvae_cli.training.tensorboard_log import MISSING, TERM_SECTIONS
from sdmvae_cli.training.train import TrainOptions, train

TINY = ["--arch", "vae", "--latent", "4", "--hidden", "8", "--batch-size", "64", "--device", "cpu", "--compile", "off"]
LOSSES = ("train_total", "train_recon", "train_kl", "val_total", "val_recon", "val_kl", "val_median")
LOSSES += ("val_pm_total", "val_pm_recon", "val_pm_kl")


def _events(tb) -> EventAccumulator:
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0})
    ea.Reload()
    return ea


def _history(run) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _tag(col: str) -> str:
    term = col.rsplit("_", 1)[1] if col != "val_median" else "total"
    return f"{TERM_SECTIONS[term]}/{col}"


def _assert_scalars_equal_history(run, lr: float) -> None:
    ea, hist = _events(run / "tb"), _history(run)
    for col in LOSSES:
        got = [(s.step, s.value) for s in ea.Scalars(_tag(col))]
        assert got == [(int(h["epoch"]), float(np.float32(float(h[col])))) for h in hist], col
    assert [s.value for s in ea.Scalars("optim/lr")] == [float(np.float32(lr))] * len(hist)
    assert [s.value for s in ea.Scalars("speed/frames_per_s")] == [float(np.float32(float(h["frames_per_s"]))) for h in hist]


def test_train_writes_history_as_events_examples_at_the_interval_and_loss_png(synthetic_prepared, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "3", "--lr", "1e-3", "--tb-every", "2", "-o", run)
    assert code == 0, err
    assert "min of speech" in err  # the synthetic split is 48 s: the tiny-data warning, once
    assert err.count("min of speech") == 1
    _assert_scalars_equal_history(run, 1e-3)
    ea = _events(run / "tb")
    assert [e.step for e in ea.Images("example/spectrogram")] == [0, 2]
    assert [e.step for e in ea.Audio("example/resynthesis")] == [0, 2] and [e.step for e in ea.Audio("example/input")] == [0]
    assert all(e.sample_rate == 16000 for e in ea.Audio("example/resynthesis"))
    assert (run / "loss.png").stat().st_size > 0
    # --overwrite: the replaced run's events go with it (appended, TensorBoard would show both as one run)
    code, _, err = cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "2", "--tb-every", "0", "-o", run, "--overwrite")
    assert code == 0, err
    assert len(list((run / "tb").iterdir())) == 1
    ea = _events(run / "tb")
    assert [s.step for s in ea.Scalars("total/val_total")] == [0, 1] and not ea.Tags()["images"]


def test_no_tensorboard_writes_no_events_and_the_same_run(synthetic_prepared, tmp_path, capsys):
    on, off, bare = tmp_path / "on", tmp_path / "off", tmp_path / "bare"
    assert cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "2", "--tb-every", "1", "-o", on)[0] == 0
    assert cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "2", "--no-tensorboard", "-o", off)[0] == 0
    assert cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "1", "--no-tensorboard", "--no-plot", "-o", bare)[0] == 0
    assert not (off / "tb").exists() and (off / "loss.png").exists()
    assert not (bare / "tb").exists() and not (bare / "loss.png").exists()
    # showing a run does not change it (the example's network is built without touching the training's generators)
    for a, b in zip(_history(on), _history(off)):
        assert {k: a[k] for k in LOSSES} == {k: b[k] for k in LOSSES}


def test_a_sweep_member_writes_its_own_events_and_loss_png(synthetic_prepared, tmp_path, caplog):
    spec = tmp_path / "spec.json"
    common = {"model": "vae", "latent": 4, "hidden": [8], "batch_size": 64, "epochs": 2, "compile": "off"}
    runs = [{"name": "a", "seed": 0}, {"name": "b", "seed": 1, "lr": 1e-3}, {"name": "blows-up", "seed": 2, "lr": 1e8}]
    spec.write_text(json.dumps({"common": common, "runs": runs}))
    with caplog.at_level(logging.WARNING, logger="sdmvae"):
        summary = run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", live=LiveOptions(tb_every=1))
    assert summary["stacks"] == [3] and [m["status"] for m in summary["members"]] == ["finished", "finished", "diverged"]
    assert sum("min of speech" in r.getMessage() for r in caplog.records) == 1  # once per sweep
    for name, lr in (("a", 1e-4), ("b", 1e-3)):
        run = tmp_path / "sw" / name
        _assert_scalars_equal_history(run, lr)
        assert [e.step for e in _events(run / "tb").Images("example/spectrogram")] == [0, 1]
        assert (run / "loss.png").exists()
    assert _history(tmp_path / "sw" / "a")[0]["val_total"] != _history(tmp_path / "sw" / "b")[0]["val_total"]


def test_loss_png_is_drawn_as_the_run_goes_and_when_it_is_interrupted(synthetic_prepared, tmp_path, monkeypatch):
    drawn = []
    real = live_logs.plot_history
    monkeypatch.setattr(live_logs, "plot_history", lambda d, h: drawn.append(len(h)) or real(d, h))
    monkeypatch.setattr(live_logs, "PLOT_SECONDS", 1e9)  # after the first epoch's figure, only the last one
    run = tmp_path / "run"

    def stop(rec):
        assert (run / "loss.png").exists()  # there from the first epoch on
        if rec.epoch == 2:
            raise KeyboardInterrupt

    cfg, opts = ModelConfig(model="vae", latent=4, hidden=[8]), TrainOptions(epochs=9, batch_size=64, compile="off", device="cpu")
    r = train(synthetic_prepared, cfg, opts, run, on_epoch=stop, live=LiveOptions(tensorboard=False))
    assert r.interrupted and drawn == [1, 3]  # the first epoch's, then the interrupted run's last: all 3 epochs
    assert (run / "loss.png").exists()


def test_little_speech_is_one_warning_and_the_threshold_is_a_constant(synthetic_prepared, tmp_path, caplog, monkeypatch):
    cfg, opts = ModelConfig(model="vae", latent=4, hidden=[8]), TrainOptions(epochs=1, batch_size=64, compile="off", device="cpu")
    with caplog.at_level(logging.WARNING, logger="sdmvae"):
        train(synthetic_prepared, cfg, opts, tmp_path / "a")
    warned = [r.getMessage() for r in caplog.records if "min of speech" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("the train split holds 0.8 min of speech (3000 frames), under 10 min")
    caplog.clear()
    monkeypatch.setattr(train_module, "LITTLE_SPEECH_MINUTES", 0.5)
    with caplog.at_level(logging.WARNING, logger="sdmvae"):
        train(synthetic_prepared, cfg, opts, tmp_path / "b")
    assert not [r for r in caplog.records if "min of speech" in r.getMessage()]


def test_without_the_tensorboard_package_one_line_and_no_events(synthetic_prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "2", "-o", run)
    assert code == 0, err
    assert err.count("pip install 'sdmvae[tensorboard]'") == 1 and MISSING in err
    assert not (run / "tb").exists() and (run / "best.pt").exists() and (run / "loss.png").exists()


def test_a_tb_folder_that_cannot_be_written_is_one_line_and_the_run_goes_on(synthetic_prepared, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("a file of the user's where the events would go")
    code, _, err = cli(capsys, "train", synthetic_prepared, *TINY, "--epochs", "2", "-o", run)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "TensorBoard logs stop" in line]
    assert len(warned) == 1 and str(run / "tb") in warned[0]
    assert (run / "tb").read_text().startswith("a file") and len(_history(run)) == 2 and (run / "loss.png").exists()


def test_a_writer_failing_mid_run_stops_the_events_not_the_run(synthetic_prepared, tmp_path, caplog, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    class DiskFull(SummaryWriter):
        def add_scalar(self, tag, value, step):
            if step == 1:
                raise OSError(28, "No space left on device")
            super().add_scalar(tag, value, step)

    monkeypatch.setattr(live_logs, "summary_writer_class", lambda: DiskFull)
    cfg, opts = ModelConfig(model="vae", latent=4, hidden=[8]), TrainOptions(epochs=3, batch_size=64, compile="off", device="cpu")
    with caplog.at_level(logging.WARNING, logger="sdmvae"):
        r = train(synthetic_prepared, cfg, opts, tmp_path / "run", live=LiveOptions())
    assert len(r.history) == 3
    assert sum("TensorBoard logs stop ([Errno 28] No space left on device)" in m.getMessage() for m in caplog.records) == 1
    assert [s.step for s in _events(tmp_path / "run" / "tb").Scalars("total/val_total")] == [0]


def test_the_commands_default_interval_is_the_modules():
    from sdmvae_cli.cli.sweep import sweep
    from sdmvae_cli.cli.train import train as train_cmd

    for cmd in (train_cmd, sweep):
        assert inspect.signature(cmd).parameters["tb_every"].default.default == tensorboard_log.TB_EVERY == LiveOptions().tb_every
