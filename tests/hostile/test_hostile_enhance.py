"""Hostile use of `sdmvae enhance` and `sdmvae plot` (issue 23, "found by trying it"): rerunning
an interrupted folder, an output folder inside the input, absurd numbers, a figure written
inside the evaluation it reads. Every refusal is one line, before anything is created."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, cli, one_line, write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noisy_folder(root, n: int = 3):
    rng = np.random.default_rng(0)
    for i in range(n):
        x = 0.3 * source_filter_speech(0.5, seed=i) + 0.02 * rng.standard_normal(8000).astype(np.float32)
        write_wav(root / f"u{i}.wav", x)
    return root


# -- 4: --overwrite replaces, --skip-existing finishes an interrupted folder --------------------------
def test_rerun_of_a_folder_overwrite_and_skip_existing(tmp_path, capsys):
    """--overwrite was ignored (never passed on), so an interrupted folder could not be finished
    without deleting files by hand. Now: a plain rerun refuses and names both ways out;
    --skip-existing keeps the finished outputs and writes the rest; --overwrite replaces all."""
    inp, out = noisy_folder(tmp_path / "in"), tmp_path / "out"
    args = ["enhance", inp, out, "-n", "2", "--device", "cpu"]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert sorted(stdout.split()) == [str(out / f"u{i}.wav") for i in range(3)]
    # as a Ctrl-C after the first two files leaves it (outputs are atomic: complete or absent)
    (out / "u2.wav").unlink()
    marker = np.full(100, 0.125, dtype=np.float32)
    sf.write(str(out / "u0.wav"), marker, 16000, subtype="FLOAT")  # recognisable: must survive a skip
    code, stdout, err = cli(capsys, *args)
    line = one_line(err)
    assert code == 1 and stdout == "" and "--skip-existing" in line and "--overwrite" in line, line
    assert not (out / "u2.wav").exists()
    code, stdout, err = cli(capsys, *args, "--skip-existing")
    assert code == 0, err
    assert stdout.split() == [str(out / "u2.wav")] and "kept 2 existing" in err
    np.testing.assert_array_equal(sf.read(str(out / "u0.wav"), dtype="float32")[0], marker)
    assert sf.info(str(out / "u2.wav")).frames == 8000
    code, stdout, err = cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert sorted(stdout.split()) == [str(out / f"u{i}.wav") for i in range(3)]
    y, _ = sf.read(str(out / "u0.wav"))
    assert y.size == 8000  # the marker was replaced by an enhancement
    code, _, err = cli(capsys, *args, "--overwrite", "--skip-existing")
    assert code == 2 and "contradict" in one_line(err)


def test_overwrite_replaces_one_file_and_an_input_is_still_never_replaced(tmp_path, capsys):
    src = write_wav(tmp_path / "a.wav", 0.3 * source_filter_speech(0.5, seed=1))
    dst = write_wav(tmp_path / "done.wav", np.zeros(50, dtype=np.float32))
    code, stdout, err = cli(capsys, "enhance", src, dst, "-n", "2", "--overwrite", "--device", "cpu")
    assert code == 0 and stdout.split() == [str(dst)], err
    assert sf.info(str(dst)).frames == 8000
    before = src.read_bytes()
    code, _, err = cli(capsys, "enhance", src, src, "-n", "2", "--overwrite", "--device", "cpu")
    assert code == 1 and "is an input" in one_line(err)
    assert src.read_bytes() == before


# -- 8: an output folder inside the input is refused before it is created ----------------------------
@pytest.mark.parametrize("dst", ["sub/", "sub", "deep/er/"])
def test_output_folder_inside_the_input_is_refused_before_creating_it(tmp_path, capsys, dst):
    inp = noisy_folder(tmp_path / "in", 1)
    code, stdout, err = cli(capsys, "enhance", inp, str(inp) + "/" + dst, "-n", "2", "--device", "cpu")
    assert code == 1 and stdout == "" and "inside" in one_line(err), err
    assert sorted(p.name for p in inp.iterdir()) == ["u0.wav"]  # no empty sub/ left in the input


def test_one_file_into_a_new_folder_is_made_when_written(tmp_path, capsys):
    """`OUT/` for one file still means a folder; it is now made by the writer, not up front."""
    src = write_wav(tmp_path / "a.wav", 0.3 * source_filter_speech(0.5, seed=1))
    code, stdout, err = cli(capsys, "enhance", src, str(tmp_path / "new") + "/", "-n", "2", "--device", "cpu")
    assert code == 0 and stdout.split() == [str(tmp_path / "new" / "a.wav")], err
    code, _, err = cli(capsys, "enhance", src, str(tmp_path / "never") + "/", "-n", "2", "-m", "no-such-model")
    assert code == 1 and "no such checkpoint" in one_line(err)
    assert not (tmp_path / "never").exists()


# -- 9: every numeric option has its range in the signature (exit 2 at parse time) ------------------
BAD_NUMBERS = [
    ("--nmf-rank", "99999999999"),
    ("--nmf-rank", "0"),
    ("--nmf-rank", "513"),
    ("--lr", "inf"),
    ("--lr", "nan"),
    ("--lr", "0"),
    ("--lr", "-0.1"),
    ("--lr", "1.5"),
    ("--iterations", "0"),
    ("--iterations", "1001"),
    ("--steps", "-1"),
    ("--steps", "101"),
    ("--chains", "0"),
    ("--chains", "33"),
    ("--mh-steps", "0"),
    ("--mh-steps", "101"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--method", "gibbs"),
    ("--device", "tpu"),
]


@pytest.mark.parametrize("opt,value", BAD_NUMBERS)
def test_out_of_range_options_are_usage_errors_before_any_work(tmp_path, capsys, opt, value):
    """`--nmf-rank 99999999999` was an internal error (a 200 TB allocation), `--lr inf` ran and
    failed with exit 1 (train says 2 for the same value)."""
    src = write_wav(tmp_path / "a.wav", 0.3 * source_filter_speech(0.5, seed=1))
    code, stdout, err = cli(capsys, "enhance", src, tmp_path / "o.wav", opt, value)
    line = one_line(err)
    assert code == 2 and stdout == "" and "internal error" not in line, (opt, value, line)
    assert opt in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_library_refuses_the_same_ranges():
    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.inference.enhance import EnhanceOptions

    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"nmf_rank": 99999999999}, {"iterations": 2.5}, {"seed": -1}):
        with pytest.raises(SdmvaeError, match="must be"):
            EnhanceOptions(**bad).validate()
    EnhanceOptions(lr=1.0, nmf_rank=512, iterations=1000, seed=2**32 - 1).validate()  # the tops are allowed


# -- 10: no figure inside an input folder ------------------------------------------------------------
def test_plot_hoyer_refuses_a_figure_inside_the_evaluation_it_reads(tmp_path, capsys):
    from conftest import MODEL_CFG, fake_eval

    utts = [("a/u0", "a", write_wav(tmp_path / "audio" / "u0.flac", 0.5 * source_filter_speech(1.0, seed=0)))]
    ev = fake_eval(tmp_path / "eval", MODEL_CFG["vae"], utts, 0, np.random.default_rng(0))
    before = sorted(p.name for p in ev.iterdir())
    for fig in (ev / "h.png", ev / "sub" / "h.png"):
        code, stdout, err = cli(capsys, "plot", "hoyer", ev, "--out", fig)
        assert code == 2 and stdout == "" and "inside the input folder" in one_line(err), err
    assert sorted(p.name for p in ev.iterdir()) == before
    code, stdout, err = cli(capsys, "plot", "hoyer", ev, "--out", tmp_path / "h.png")  # outside: fine
    assert code == 0 and (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG", err


def test_plot_dictionary_refuses_a_figure_inside_the_run_it_reads(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(REPO / "models" / "sdm-dct-k64-m64.pt", run_dir / "best.pt")
    code, stdout, err = cli(capsys, "plot", "dictionary", run_dir, run_dir / "atoms.png")
    assert code == 2 and stdout == "" and "inside the input folder" in one_line(err), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt"]


def test_plot_of_audio_refuses_a_figure_inside_an_input_folder(tmp_path, capsys):
    """spectrogram and codes take a file, so a folder given as IN is the folder case (checked first)."""
    d = tmp_path / "in"
    d.mkdir()
    for sub in ("spectrogram", "codes"):
        code, _, err = cli(capsys, "plot", sub, d, d / "f.png")
        assert code == 2 and "inside the input folder" in one_line(err), (sub, err)
    assert not any(d.iterdir())


def test_default_json_names_an_enhancement_prior_of_its_own():
    index = json.loads((REPO / "models" / "default.json").read_text())
    assert (REPO / "models" / index["enhance_default"]).is_file()


def test_mcem_with_a_prior_it_cannot_sample_is_refused_before_any_file(tmp_path, capsys):
    """Hostile run: each file failed with the same message, no file named, exit 1."""
    (tmp_path / "in").mkdir()
    write_wav(tmp_path / "in" / "a.wav", 0.3 * source_filter_speech(1.0, seed=0))
    code, out, err = cli(capsys, "enhance", tmp_path / "in", tmp_path / "out/", "--method", "mcem", "-m", "threshold-m64")
    assert code == 2 and "no prior density" in one_line(err) and not out
    assert not (tmp_path / "out").exists()
