import csv
import json
import subprocess
import sys

import pytest
import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets import LossTerms, ModelConfig
from sdmvae_cli.nets.checkpoint import load_model, read_checkpoint
from sdmvae_cli.nets.vae import VAE
from sdmvae_cli.training.train import TrainingDiverged, TrainOptions, train

CLI = [sys.executable, "-m", "sdmvae_cli"]
SMALL = ModelConfig(model="sdm", latent=16, k=32)


def opts(**kw):
    base = dict(epochs=6, patience=50, lr=2e-3, batch_size=64, device="cpu")
    base.update(kw)
    return TrainOptions(**base)


def test_tiny_run_learns_and_writes_a_loadable_checkpoint(synthetic_prepared, tmp_path):
    r = train(synthetic_prepared, SMALL, opts(), tmp_path / "run")
    val = [h["val_total"] for h in r.history]
    assert len(val) == 6 and val[-1] < val[0] - 50  # nats per frame (the IS term has no constant: values can be < 0)
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # only tensors and JSON-able values
    assert ck["config"]["model"]["model"] == "sdm" and ck["config"]["stft"]["n_fft"] == 1024
    assert ck["config"]["train"]["lr"] == 2e-3 and ck["data_fingerprint"].startswith("synthetic")
    assert "D" in ck["model_state"] and ck["epoch"] == r.best_epoch
    lm = load_model(tmp_path / "run" / "best.pt")
    assert lm.model_config.k == 32 and lm.model.D.shape == (16, 32)
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert len(rows) == 6 and float(rows[-1]["val_total"]) == pytest.approx(val[-1])


def test_early_stopping_triggers_at_the_patience(synthetic_prepared, tmp_path):
    # lr = 0: the validation loss never improves after epoch 0 -> stop after `patience` more
    r = train(synthetic_prepared, SMALL, opts(lr=0.0, patience=3, epochs=50), tmp_path / "run")
    assert r.stopped_early and len(r.history) == 4 and r.best_epoch == 0


def test_resume_equals_uninterrupted_run(synthetic_prepared, tmp_path):
    full = train(synthetic_prepared, SMALL, opts(epochs=4), tmp_path / "full")
    train(synthetic_prepared, SMALL, opts(epochs=2), tmp_path / "part")
    stale = tmp_path / "part" / ".best.pt.x1y2z3.pt.tmp"  # a checkpoint write cut by kill -9
    stale.write_bytes(b"half a checkpoint")
    resumed = train(synthetic_prepared, None, opts(epochs=4), tmp_path / "part", resume=True)
    assert not stale.exists()
    assert [h["val_total"] for h in resumed.history] == [h["val_total"] for h in full.history]
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    b = read_checkpoint(tmp_path / "part" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_the_precision_a_run_was_trained_with(synthetic_prepared, tmp_path):
    """TF32 is a training option of the run: resume takes it from the checkpoint, and a checkpoint
    written before the option existed (trained in full fp32) resumes in fp32, not in the new
    default."""
    train(synthetic_prepared, SMALL, opts(epochs=1), tmp_path / "old")
    last = tmp_path / "old" / "last.pt"
    ck = torch.load(last, weights_only=True)
    assert ck["config"]["train"]["tf32"] is True  # the default, recorded
    del ck["config"]["train"]["tf32"]  # as an older sdmvae wrote it
    torch.save(ck, last)
    train(synthetic_prepared, None, opts(epochs=2), tmp_path / "old", resume=True)
    assert read_checkpoint(last)["config"]["train"]["tf32"] is False
    train(synthetic_prepared, SMALL, opts(epochs=1, tf32=False), tmp_path / "new")
    train(synthetic_prepared, None, opts(epochs=2), tmp_path / "new", resume=True)  # opts() says tf32=True: not taken
    assert read_checkpoint(tmp_path / "new" / "last.pt")["config"]["train"]["tf32"] is False


def test_streaming_chunks_train_too(synthetic_prepared, tmp_path):
    r = train(synthetic_prepared, SMALL, opts(epochs=3, max_device_bytes=700 * 513 * 4), tmp_path / "run")
    assert r.history[-1]["val_total"] < r.history[0]["val_total"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic_prepared, tmp_path, monkeypatch):
    cfg = ModelConfig(model="vae", latent=8)
    train(synthetic_prepared, cfg, opts(epochs=2), tmp_path / "run")
    good = read_checkpoint(tmp_path / "run" / "last.pt")
    nan = torch.tensor(float("nan"))
    monkeypatch.setattr(
        VAE, "loss", lambda self, x, noise=None: LossTerms(*(self.heads.linear.weight.sum() * nan + torch.zeros(len(x)),) * 3)
    )
    with pytest.raises(TrainingDiverged, match="last completed epoch is kept in .*last.pt"):
        train(synthetic_prepared, None, opts(epochs=4), tmp_path / "run", resume=True)
    after = read_checkpoint(tmp_path / "run" / "last.pt")
    assert after["epoch"] == good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in after["model_state"].values())


def test_ctrl_c_saves_and_reports_interrupted(synthetic_prepared, tmp_path):
    def stop(rec):
        if rec.epoch == 1:
            raise KeyboardInterrupt

    r = train(synthetic_prepared, SMALL, opts(epochs=5), tmp_path / "run", on_epoch=stop)
    assert r.interrupted and read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_bad_inputs(synthetic_prepared, tmp_path):
    with pytest.raises(SdmvaeError, match="does not exist"):
        train(tmp_path / "missing", SMALL, opts(), tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SdmvaeError, match="prepare.json"):
        train(tmp_path / "empty", SMALL, opts(), tmp_path / "r")
    with pytest.raises(SdmvaeError, match="--resume"):
        train(synthetic_prepared, None, opts(), tmp_path / "nothing-here", resume=True)
    with pytest.raises(SdmvaeError, match="no CUDA|cuda"):
        if torch.cuda.is_available():
            raise SdmvaeError("cuda present: nothing to test")
        train(synthetic_prepared, SMALL, opts(device="cuda"), tmp_path / "r")


def test_checkpoint_of_another_kind_is_rejected(synthetic_prepared, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(SdmvaeError, match="not an sdmvae checkpoint"):
        load_model(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(SdmvaeError, match="not a readable"):
        load_model(tmp_path / "junk.pt")
    train(synthetic_prepared, ModelConfig(model="vae", latent=8), opts(epochs=1), tmp_path / "run")
    with pytest.raises(SdmvaeError, match="expected 'sdm'"):
        load_model(tmp_path / "run" / "best.pt", expect_model="sdm")
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    ck["config"]["model"]["latent"] = 12  # weights no longer fit the stored architecture
    torch.save(ck, tmp_path / "mismatch.pt")
    with pytest.raises(SdmvaeError, match="do not fit"):
        load_model(tmp_path / "mismatch.pt")


def test_cli_train_end_to_end(synthetic_prepared, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [
            *CLI,
            "train",
            str(synthetic_prepared),
            "--model",
            "vsc",
            "--alpha",
            "0.5",
            "--latent",
            "8",
            "--epochs",
            "3",
            "--lr",
            "1e-3",
            "--device",
            "cpu",
            "--no-tf32",
            "--out",
            str(run),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert {"best.pt", "last.pt", "history.csv", "loss.png", "config.json"} <= {p.name for p in run.iterdir()}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["alpha"] == 0.5 and cfg["train"]["tf32"] is False
    rows = (run / "history.csv").read_text().splitlines()  # a tiny split: --compile auto stays eager, and says so
    assert [r.split(",")[-2:] for r in rows] == [["engine", "stack_members"]] + [["cpu:eager", "1"]] * 3
    assert "epoch    2" in r.stderr and "done" in r.stderr and r.stdout.splitlines() == [str(run), str(run / "best.pt")]
    bad = subprocess.run(
        [
            *CLI,
            "train",
            str(synthetic_prepared),
            "--model",
            "sdm",
            "--dict",
            "identity",
            "--k",
            "32",
            "--latent",
            "64",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "identity" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1  # a usage error
    assert not (tmp_path / "bad").exists()


def test_default_run_folders_differ_by_seed_and_never_spell_a_release(synthetic_prepared, tmp_path, monkeypatch):
    """Issue 23.3: the default --out was runs/vae-m64, the name of a release, and a second seed
    with the default --out was refused."""
    from sdmvae_cli.cli.app import run
    from sdmvae_cli.nets.released import released_names

    common = [
        "train",
        str(synthetic_prepared),
        "--arch",
        "vae",
        "--latent",
        "8",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-plot",
        "-q",
    ]
    monkeypatch.chdir(tmp_path)
    assert run([*common, "--seed", "0"]) == 0
    assert run([*common, "--seed", "1"]) == 0
    made = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert made == ["vae-m8-s0", "vae-m8-s1"]
    assert not set(made) & set(released_names())


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--arch", "vae", "--dict", "identity", "--k", "32"], "--dict, --k"),
        (["--arch", "sdm", "--alpha", "0.3"], "--alpha"),
        (["--arch", "vsc", "--samples", "4"], "--samples"),
    ],
)
def test_an_option_the_architecture_does_not_read_is_refused(synthetic_prepared, tmp_path, argv, flags, capsys):
    """Issue 23.17: `--arch vae --dict identity` was stored in config.json and never used."""
    from sdmvae_cli.cli.app import run

    assert run(["train", str(synthetic_prepared), *argv, "--out", str(tmp_path / "r")]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and flags in line and "not apply" in line
    assert not (tmp_path / "r").exists()


def test_options_of_a_config_architecture_are_accepted(synthetic_prepared, tmp_path):
    """The check reads the architecture from --config when --arch is not given."""
    from sdmvae_cli.cli.app import run

    base = ["train", str(synthetic_prepared), "--epochs", "1", "--device", "cpu", "--no-plot", "-q", "--latent", "8"]
    assert run([*base, "--arch", "vsc", "--out", str(tmp_path / "a")]) == 0
    assert run([*base, "--config", str(tmp_path / "a"), "--alpha", "0.2", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"]["alpha"] == 0.2


def test_default_run_names_say_every_non_default_option():
    """Two runs that differ in any model option get two default folders (issue 23.3)."""
    from sdmvae_cli.training.train import default_run_name

    assert default_run_name(ModelConfig(model="sdm"), 1) == "sdm-m64-dct-k64-s1"
    assert default_run_name(ModelConfig(model="vae", beta=0.5, hidden=[256, 128]), 0) == "vae-m64-hidden256x128-beta0.5-s0"
    names = {
        default_run_name(ModelConfig(model="threshold", **kw), 0)
        for kw in ({}, {"spread_prior": 0.1}, {"code": "sample"}, {"samples": 20}, {"learn_threshold": True})
    }
    assert len(names) == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["--arch", "threshold", "--kl-warmup", "99999999999999999999"],
        ["--arch", "threshold", "--samples", "100000"],
        ["--arch", "vae", "--latent", "99999999999"],
        ["--arch", "vae", "--hidden", "10000000"],
    ],
)
def test_absurd_sizes_are_one_line_not_an_internal_error(synthetic_prepared, tmp_path, argv, capsys):
    """Issue 23 (hostile run): sizes that would overflow or ask for terabytes."""
    from sdmvae_cli.cli.app import run

    assert run(["train", str(synthetic_prepared), *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("must be in [" in err or "each in [1, " in err) and "internal error" not in err
    assert not (tmp_path / "r").exists()


def test_overwrite_removes_the_replaced_runs_evaluations_not_the_users_files(synthetic_prepared, tmp_path):
    """Hostile run: after `--overwrite`, the old eval-test/ sat beside the new best.pt and a
    report showed the replaced model's scores as the new one's."""
    from sdmvae_cli.cli.app import run

    base = [
        "train",
        str(synthetic_prepared),
        "--arch",
        "vae",
        "--latent",
        "8",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-plot",
        "-q",
        "--out",
        str(tmp_path / "r"),
    ]
    assert run(base) == 0
    (tmp_path / "r" / "eval-test").mkdir()
    (tmp_path / "r" / "eval-test" / "summary.json").write_text(
        json.dumps({"checkpoint": str((tmp_path / "r" / "best.pt").resolve())})
    )
    (tmp_path / "r" / "eval-mine").mkdir()
    (tmp_path / "r" / "eval-mine" / "summary.json").write_text(json.dumps({"checkpoint": "/elsewhere/best.pt"}))
    (tmp_path / "r" / "notes.txt").write_text("mine")
    assert run([*base, "--overwrite"]) == 0
    assert not (tmp_path / "r" / "eval-test").exists()
    assert (tmp_path / "r" / "eval-mine" / "summary.json").exists() and (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_a_fresh_runs_options_are_checked_before_anything_is_read_or_written(tmp_path):
    """Issue 22: the options are checked once, where they enter (train), as a usage error, before
    the prepared data is read (here it does not exist) or the run folder made."""
    from sdmvae_cli.core.errors import UsageError

    with pytest.raises(UsageError, match="--patience must be >= 1"):
        train(tmp_path / "no-such-prepared", ModelConfig(model="vae", latent=8), opts(patience=0), tmp_path / "r")
    with pytest.raises(UsageError, match="unknown model"):
        train(tmp_path / "no-such-prepared", ModelConfig(model="nope"), opts())
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_early_stopping_bookkeeping_of_one_member(tmp_path):
    """training/early_stopping.py alone: best epoch, patience, epoch cap, divergence, and the
    status of a member reopened with nothing left to train."""
    from sdmvae_cli.training.early_stopping import check_stop, diverged, record_validation, resumed_status, stop_statistic
    from sdmvae_cli.training.stack import Member

    m = Member("r", ModelConfig(model="vae", latent=8), opts(patience=2, epochs=10, stop_on="median"), tmp_path)
    assert stop_statistic(m, {"val_total": 1.0, "val_median": 2.0, "val_pm_total": 3.0}) == 2.0
    for epoch, v in enumerate([3.0, 2.0, 2.5, 2.1]):
        assert record_validation(m, epoch, v) == (v in (3.0, 2.0))
        m.history.append({"epoch": epoch})
        m.epoch = epoch + 1
        check_stop(m)
        assert m.done == (epoch == 3)
    assert (m.best_epoch, m.best_val, m.since_best, m.status) == (1, 2.0, 2, "stopped")
    capped = Member("c", m.cfg, opts(patience=5, epochs=1), tmp_path)
    record_validation(capped, 0, 1.0)
    capped.epoch = 1
    check_stop(capped)
    assert capped.status == "finished" and "epoch cap (1)" in capped.message
    fresh = Member("d", m.cfg, opts(), tmp_path)
    assert not diverged(fresh, 0, [1.0, 1.0, 0.0], 1.0) and not fresh.done
    assert diverged(fresh, 0, [1.0, 1.0, 0.0], float("nan")) and fresh.status == "diverged"
    assert "validation loss became nan at epoch 0" in fresh.message and "no checkpoint was written" in fresh.message
    again = Member("e", m.cfg, opts(patience=2), tmp_path, epoch=3, since_best=2)
    resumed_status(again)
    assert again.status == "stopped" and again.message == "had already stopped early"
