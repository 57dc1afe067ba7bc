"""Training a sequence family (`dkf`) end to end through the frame-wise engine: tiles of --seq-len
frames cut inside utterances, resume, sweeps (one stack per member), refusals, per-frame
accounting, and the trained checkpoint through `resynth` and `evaluate`.

Every run is tiny (m = 8, LSTMs of 16, 20-frame tiles, ~2000 frames, --compile off): a few
seconds each on one CPU core. The runs go through the CLI in-process (``conftest.cli``).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli, one_line

from sdmvae_cli.nets.checkpoint import load_model, read_checkpoint

T, M, HIDDEN, BATCH = 20, 8, 16, 8
#: the options of every tiny DKF run here (the prepared folder, --out and the epochs vary)
DKF = ["--model", "dkf", "--latent", M, "--seq-len", T, "--rnn-hidden", HIDDEN, "--batch-size", BATCH, "--lr", 2e-3]
QUIET = ["--compile", "off", "--device", "cpu", "--no-plot", "--no-tensorboard"]
LOSS_COLUMNS = (
    "train_total",
    "train_recon",
    "train_kl",
    "val_total",
    "val_recon",
    "val_kl",
    "val_median",
    "val_pm_total",
    "val_pm_recon",
    "val_pm_kl",
)


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> Path:
    """Synthetic frames whose manifests list utterances of 251 frames (the last one shorter):
    train 2000 frames (8 utterances: 96 tiles of 20), validation 500 (2 utterances: 24 tiles)."""
    from sdmvae_cli.audio.synthetic import make_synthetic_prepared

    return make_synthetic_prepared(tmp_path_factory.mktemp("seq") / "p", n_train=2000, n_val=500, n_test=300, utterances=True)


def train_dkf(capsys, prep: Path, out: Path, epochs: int, *extra) -> Path:
    code, _, err = cli(capsys, "train", prep, *DKF, *QUIET, "--epochs", epochs, "--out", out, *extra)
    assert code == 0, err
    return out


def history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


def losses(rows: list[dict[str, str]]) -> list[list[float]]:
    return [[float(r[k]) for k in LOSS_COLUMNS] for r in rows]


def validation_tiles(prep: Path) -> torch.Tensor:
    """Every validation tile, (n_tiles, T, bins), built as training/sequence_data.data_for builds
    them: the manifest's utterances cut into consecutive tiles of T, the frames gathered."""
    from sdmvae_cli.data.sequences import gather_sequences, sequence_index

    frames = torch.from_numpy(np.load(prep / "validation" / "frames.npy"))
    idx = sequence_index(prep, "validation", T, frames.shape[0])
    return gather_sequences(frames, idx.windows(torch.arange(idx.n_sequences)))


def test_a_tiny_dkf_run_learns_and_its_checkpoint_reconstructs_an_utterance(prep, tmp_path, capsys):
    run = train_dkf(capsys, prep, tmp_path / "run", 3)
    rows = history(run)
    assert len(rows) == 3 and float(rows[-1]["train_total"]) < float(rows[0]["train_total"])
    assert all(r["stack_members"] == "1" and r["engine"] == "cpu:eager" for r in rows)
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert (cfg["model"], cfg["latent"], cfg["seq_len"], cfg["rnn_hidden"]) == ("dkf", M, T, HIDDEN)
    lm = load_model(run / "best.pt", expect_model="dkf")
    assert lm.model.SEQUENTIAL and lm.model_config.seq_len == T
    # a whole utterance (251 frames, longer than the training tiles) is one sequence
    x = torch.from_numpy(np.load(prep / "validation" / "frames.npy")[:251])
    power, codes = lm.model.reconstruct(x)
    assert power.shape == (251, 513) and codes.shape == (251, M)
    assert torch.isfinite(power).all() and (power > 0).all() and torch.isfinite(codes).all()
    assert codes.std(dim=0).max() > 0  # the code moves along the utterance
    # it is the mean chain the noise-free statistic scores: its IS term is that of the power returned
    terms = lm.model.mean_code_loss(x[None])
    is_of_power = (x / power + torch.log(power)).sum(-1)
    torch.testing.assert_close(terms.recon, is_of_power, rtol=1e-4, atol=1e-2)


def test_resume_equals_an_uninterrupted_run(prep, tmp_path, capsys):
    """As for the frame-wise families (test_train.py): bit-reproducible on a CPU, so the resumed
    run's losses and final weights equal the uninterrupted run's exactly."""
    full = train_dkf(capsys, prep, tmp_path / "full", 3)
    part = train_dkf(capsys, prep, tmp_path / "part", 2)
    assert len(history(part)) == 2
    code, _, err = cli(capsys, "train", prep, "--resume", part, "--epochs", 3, *QUIET)
    assert code == 0, err
    assert [r["epoch"] for r in history(part)] == ["0", "1", "2"]
    assert losses(history(part)) == losses(history(full))
    a, b = read_checkpoint(full / "last.pt")["model_state"], read_checkpoint(part / "last.pt")["model_state"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sweep_trains_each_dkf_member_alone_and_as_train_would(prep, tmp_path, capsys):
    """DKF does not stack (no vmap rule for its recursion): two seeds are two stacks of one, each
    member the same computation as `train` with that seed."""
    common = {"model": "dkf", "latent": M, "seq-len": T, "rnn-hidden": HIDDEN, "batch-size": BATCH}
    common |= {"lr": 2e-3, "epochs": 2, "compile": "off"}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"common": common, "runs": [{"name": "s0", "seed": 0}, {"name": "s1", "seed": 1}]}))
    code, _, err = cli(capsys, "sweep", prep, spec, "--out", tmp_path / "sw", "--device", "cpu")
    assert code == 0, err
    sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert sw["stacks"] == [1, 1]
    assert [(m["name"], m["status"], m["epochs"]) for m in sw["members"]] == [("s0", "finished", 2), ("s1", "finished", 2)]
    got = {}
    for seed in (0, 1):
        member = tmp_path / "sw" / f"s{seed}"
        assert [r["stack_members"] for r in history(member)] == ["1", "1"]
        alone = train_dkf(capsys, prep, tmp_path / f"alone{seed}", 2, "--seed", seed)
        got[seed] = np.array(losses(history(member)))
        # the same code path (a stack of one, eager), the same seed: the same numbers
        np.testing.assert_allclose(got[seed], np.array(losses(history(alone))), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], got[1])  # the seeds made two runs, not one twice


def edited_copy(prep: Path, dst: Path, split: str, rows: list[dict]) -> Path:
    """A copy of a prepared folder whose ``split`` manifest lists ``rows`` (the frames unchanged)."""
    shutil.copytree(prep, dst)
    (dst / split / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


@pytest.fixture(scope="module")
def no_utterances(prep, tmp_path_factory) -> Path:
    """The same frames with an empty train manifest (as `make_synthetic_prepared` writes by default)."""
    return edited_copy(prep, tmp_path_factory.mktemp("flat") / "p", "train", [])


@pytest.fixture(scope="module")
def short_validation(prep, tmp_path_factory) -> Path:
    """The same train split (16 tiles of 120 frames), one validation utterance of 100 frames."""
    row = {"id": "v0", "speaker": "synthetic", "path": "", "frame_offset": 0, "n_frames": 100}
    return edited_copy(prep, tmp_path_factory.mktemp("short") / "p", "validation", [row])


@pytest.fixture(scope="module")
def long_validation(prep, tmp_path_factory) -> Path:
    """A validation manifest claiming 700 frames of a 500-frame split (manifest and frames disagree)."""
    row = {"id": "v0", "speaker": "synthetic", "path": "", "frame_offset": 0, "n_frames": 700}
    return edited_copy(prep, tmp_path_factory.mktemp("long") / "p", "validation", [row])


@pytest.mark.parametrize(
    "case, argv, status, needles",
    [
        ("val-past-end", [], 1, ["validation/manifest.jsonl", "but frames.npy has 500"]),
        ("prior", ["--alpha", 0.2], 2, ["--alpha does not apply to --arch dkf --prior gaussian"]),
        ("prior", ["--alpha", 0.5], 2, ["--alpha does not apply to --arch dkf --prior gaussian"]),  # its default, given
        ("prior", ["--prior", "vsc", "--k", 64], 2, ["--k does not apply to --arch dkf --prior vsc", "--alpha"]),
        ("no-utterances", [], 1, ["train/manifest.jsonl", "no utterances listed"]),
        ("seq", ["--seq-len", 300], 1, ["no sequence of 300 frames", "longest utterance has 251 frames"]),
        ("seq-val", ["--seq-len", 120], 1, ["'validation'", "no sequence of 120 frames", "has 100 frames"]),
        ("seq", ["--batch-size", 97], 1, ["96 sequences of 20 frames", "fewer than one batch (97)"]),
        ("vae", ["--seq-len", T], 2, ["--seq-len does not apply to --arch vae"]),
        ("causal", ["--causal"], 2, ["--non-causal/--causal does not apply to --arch dkf"]),  # either spelling
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    prep, no_utterances, short_validation, long_validation, tmp_path, capsys, case, argv, status, needles
):
    where = {"no-utterances": no_utterances, "seq-val": short_validation, "val-past-end": long_validation}.get(case, prep)
    model = ["--model", "vae", "--latent", M] if case == "vae" else DKF
    code, out, err = cli(capsys, "train", where, *model, *QUIET, "--epochs", 1, *argv, "--out", tmp_path / "r")
    line = one_line(err)
    assert code == status and all(n in line for n in needles), line
    assert "internal error" not in line and out == ""
    assert not (tmp_path / "r").exists()


def test_the_history_counts_frames_not_sequences(prep, tmp_path, capsys):
    """Validation statistics are means per FRAME over every validation tile, recomputed here from
    best.pt with the model's own losses; an epoch's throughput counts the frames of the tiles
    it trained on (whole batches of tiles x T)."""
    from sdmvae_cli.training.validation import fixed_noise

    run = train_dkf(capsys, prep, tmp_path / "run", 2)
    ck = read_checkpoint(run / "best.pt")
    rec = next(h for h in ck["history"] if h["epoch"] == ck["epoch"])
    model = load_model(run / "best.pt").model.eval()
    x = validation_tiles(prep)
    assert x.shape == (24, T, 513)  # 2 utterances of 251 and 249 frames: 12 tiles each
    with torch.no_grad():
        pm = model.mean_code_loss(x)
        noise = {
            k: v[0] for k, v in fixed_noise(model, [ck["config"]["train"]["seed"] + 1], x.shape[0], torch.device("cpu")).items()
        }
        one = model.loss(x, noise)
    assert pm.total.shape == (24 * T,)  # one value per frame
    for col, value in (("val_pm_total", pm.total), ("val_pm_recon", pm.recon), ("val_pm_kl", pm.kl)):
        assert rec[col] == pytest.approx(float(value.double().mean()), rel=1e-4, abs=1e-3), col
    assert ck["best_val"] == pytest.approx(float(pm.total.double().mean()), rel=1e-4)  # stop_on posterior-mean
    assert rec["val_total"] == pytest.approx(float(one.total.double().mean()), rel=1e-4, abs=1e-3)
    assert rec["val_median"] == pytest.approx(float(one.total.median()), rel=1e-4, abs=1e-3)
    # training frames: 96 tiles in 12 whole batches of 8, each tile 20 frames
    for r in history(run):
        frames = float(r["frames_per_s"]) * float(r["seconds"])
        assert frames == pytest.approx(96 * T, rel=2e-2), r


@pytest.fixture(scope="module")
def real_prep(small_corpus, tmp_path_factory) -> Path:
    """`sdmvae prepare folder` of 8 real speakers x 2 utterances (4 train, 2 validation, 2 test
    speakers): about 2700 train frames."""
    from sdmvae_cli.cli.app import run

    out = tmp_path_factory.mktemp("real") / "prep"
    args = ["prepare", "folder", small_corpus, out, "--val-speakers", "2", "--test-speakers", "2", "-j", "1"]
    assert run([str(a) for a in args]) == 0
    return out


def test_resynth_and_evaluate_a_dkf_checkpoint_on_real_speech(real_prep, tmp_path, capsys):
    from sdmvae_cli.data.prepared import read_manifest

    run = train_dkf(capsys, real_prep, tmp_path / "run", 2)
    src = Path(read_manifest(real_prep, "test")[0]["path"])
    code, _, err = cli(capsys, "resynth", src, tmp_path / "o.wav", "--model", run / "best.pt", "--device", "cpu", "--save-codes")
    assert code == 0, err
    y, rate = sf.read(str(tmp_path / "o.wav"))
    assert rate == 16000 and y.shape == (sf.info(str(src)).frames,) and np.isfinite(y).all() and np.abs(y).max() > 0
    codes = np.load(tmp_path / "o.codes.npz")["codes"]  # every STFT frame of the file (one sequence)
    hop = read_checkpoint(run / "best.pt")["config"]["stft"]["hop_length"]
    assert codes.shape == (1 + y.size // hop, M) and np.isfinite(codes).all()
    # the codes decode back through the dynamics to the same audio (resynth --from-codes)
    code, _, err = cli(capsys, "resynth", tmp_path / "o.codes.npz", tmp_path / "back.wav", "--from-codes", "--device", "cpu")
    assert code == 0, err
    assert np.abs(sf.read(str(tmp_path / "back.wav"))[0] - y).max() < 1e-4
    code, out, err = cli(
        capsys, "evaluate", run / "best.pt", real_prep, "--split", "test", "--limit", 2, "-j", 1, "--device", "cpu"
    )
    assert code == 0, err
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    assert summary["model"]["model"] == "dkf" and summary["scored"] == 2 and summary["failed"] == 0
    assert 0 <= summary["metrics"]["hoyer"]["mean"] <= 1 and summary["metrics"]["hoyer"]["n"] == 2
    assert np.isfinite(summary["metrics"]["si_sdr"]["mean"])


def test_a_learned_dictionary_on_the_innovation_keeps_unit_atoms_and_plots(prep, tmp_path, capsys):
    """--prior sdm --dict learned: the dictionary moves from its DCT start under its own lr, its
    atoms stay unit-norm (the prior's projection after each step), and `plot dictionary` draws it."""
    from sdmvae_cli.nets.dictionary import dct_dictionary

    run = train_dkf(capsys, prep, tmp_path / "r", 2, "--prior", "sdm", "--dict", "learned", "--k", 12, "--dict-lr", 1e-2)
    d = load_model(run / "best.pt").model.dictionary()
    assert d.shape == (M, 12)
    torch.testing.assert_close(d.norm(dim=0), torch.ones(12), rtol=0, atol=1e-5)
    assert (d - dct_dictionary(M, 12)).abs().max() > 1e-3
    code, out, err = cli(capsys, "plot", "dictionary", run / "best.pt", tmp_path / "d.png")
    assert code == 0, err
    assert (tmp_path / "d.png").stat().st_size > 1000 and out.strip() == str(tmp_path / "d.png")


def test_export_refuses_candidates_validated_on_other_frames(prep, tmp_path, capsys):
    """A sequence model's validation loss averages whole tiles, a frame-wise model's every frame
    (and another --seq-len other tiles): no common yardstick to release the lowest by."""
    dkf = train_dkf(capsys, prep, tmp_path / "d", 1)
    dkf10 = train_dkf(capsys, prep, tmp_path / "d10", 1, "--seq-len", 10)
    code, _, err = cli(capsys, "train", prep, "--model", "vae", "--latent", M, *QUIET, "--epochs", 1, "--out", tmp_path / "v")
    assert code == 0, err
    for other in (tmp_path / "v", dkf10):
        code, out, err = cli(capsys, "export", dkf / "best.pt", other / "best.pt", tmp_path / "x.pt")
        assert code == 1 and "validate on different frames" in one_line(err) and out == ""
        assert not (tmp_path / "x.pt").exists()


def test_evaluate_never_writes_inside_the_prepared_folder(prep, tmp_path, capsys):
    run = train_dkf(capsys, prep, tmp_path / "d", 1)
    code, out, err = cli(capsys, "evaluate", run / "best.pt", prep, "--split", "test", "--out", prep / "test" / "ev")
    assert code == 1 and "inside" in one_line(err) and out == ""
    assert not (prep / "test" / "ev").exists()


def test_enhance_with_a_dkf_prior_writes_the_file_and_srnn_is_refused(real_prep, tmp_path, capsys):
    """`enhance` with a sequence prior (DVAE_SE's VEM, the encoder fine-tuned on the file): an
    output of the input's length; a teacher-forced SRNN prior is refused in one line."""
    from sdmvae_cli.data.prepared import read_manifest

    run = train_dkf(capsys, real_prep, tmp_path / "run", 1)
    x, rate = sf.read(read_manifest(real_prep, "test")[0]["path"])
    x = x[: rate * 2]
    noise = np.random.default_rng(0).standard_normal(x.size) * np.sqrt((x**2).mean())
    sf.write(tmp_path / "noisy.wav", x + noise, rate)
    code, out, err = cli(capsys, "enhance", tmp_path / "noisy.wav", tmp_path / "e.wav", "-m", run / "best.pt", "-n", 3)
    assert code == 0, err
    y, r2 = sf.read(tmp_path / "e.wav")
    assert r2 == rate and y.shape == x.shape and np.isfinite(y).all()
    code, _, err = cli(
        capsys,
        "train",
        real_prep,
        "--model",
        "srnn",
        "--latent",
        M,
        "--seq-len",
        T,
        "--rnn-hidden",
        HIDDEN,
        "--batch-size",
        BATCH,
        *QUIET,
        "--epochs",
        1,
        "--out",
        tmp_path / "s",
    )
    assert code == 0, err
    code, out, err = cli(capsys, "enhance", tmp_path / "noisy.wav", tmp_path / "s.wav", "-m", tmp_path / "s" / "best.pt")
    assert code == 1 and "teacher-forced" in one_line(err) and not (tmp_path / "s.wav").exists()


def test_a_config_of_another_family_does_not_pass_on_its_training_defaults(prep, tmp_path, capsys):
    """`--config <a DKF run> --arch vae` trains the VAE at the VAE's lr and patience, not at the
    DKF's defaults the file holds (and the reverse); one line says so; a value given is kept."""
    tiny = ["--latent", M, "--batch-size", BATCH, *QUIET, "--epochs", 1]
    dkf = ["--model", "dkf", "--seq-len", T, "--rnn-hidden", HIDDEN]
    assert cli(capsys, "train", prep, *dkf, *tiny, "--out", tmp_path / "dkf")[0] == 0
    assert cli(capsys, "train", prep, "--model", "vae", *tiny, "--out", tmp_path / "vae")[0] == 0

    def train_opts(run):
        return json.loads((run / "config.json").read_text())["train"]

    assert (train_opts(tmp_path / "dkf")["lr"], train_opts(tmp_path / "dkf")["patience"]) == (2e-3, 50)
    code, _, err = cli(capsys, "train", "--config", tmp_path / "dkf", "--model", "vae", *QUIET, "--out", tmp_path / "a")
    assert code == 0 and "lr 0.002, patience 50 were --arch dkf's defaults" in err, err
    assert (train_opts(tmp_path / "a")["lr"], train_opts(tmp_path / "a")["patience"]) == (1e-4, 20)
    code, _, err = cli(capsys, "train", "--config", tmp_path / "vae", *dkf, *QUIET, "--out", tmp_path / "b")
    assert code == 0 and "were --arch vae's defaults" in err, err
    assert (train_opts(tmp_path / "b")["lr"], train_opts(tmp_path / "b")["patience"]) == (2e-3, 50)
    code, _, err = cli(
        capsys, "train", "--config", tmp_path / "dkf", "--model", "vae", "--lr", 2e-3, *QUIET, "--out", tmp_path / "c"
    )
    assert code == 0 and (train_opts(tmp_path / "c")["lr"], train_opts(tmp_path / "c")["patience"]) == (2e-3, 20)
