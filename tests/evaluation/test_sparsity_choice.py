"""`export --at-hoyer`: the lowest validation loss among candidates at least as sparse as a
target (a number or another model's own validation Hoyer), on candidates whose sparsity and
loss are set by construction: the same tiny VAE with 0, 4 or 6 of its 8 code units switched off
(exact zeros: a higher Hoyer) and validation losses that favour the densest, as a threshold's do."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sdmvae_cli.audio.synthetic import make_synthetic_prepared
from sdmvae_cli.cli.app import run
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.prepared import read_manifest
from sdmvae_cli.evaluation.metrics import hoyer
from sdmvae_cli.evaluation.sparsity_choice import best_at_sparsity, validation_hoyer
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.nets.checkpoint import load_model, read_checkpoint, save_checkpoint
from sdmvae_cli.training.options import STOP_COLUMNS, stop_on_of
from sdmvae_cli.training.train import TrainOptions, train

LATENT = 8


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparsity")
    prep = make_synthetic_prepared(d / "prep", 600, 500, 100, utterances=True)
    train(
        prep, ModelConfig(model="vae", latent=LATENT, hidden=[32]), TrainOptions(epochs=1, batch_size=64, device="cpu"), d / "run"
    )
    base = read_checkpoint(d / "run" / "best.pt")
    files = []
    for off, loss in ((0, -30.0), (4, -20.0), (6, -10.0)):  # units off -> sparser; loss worse, as lambda grows
        c = copy.deepcopy({k: v for k, v in base.items() if k not in ("format", "format_version", "package_version")})
        for name in ("heads.linear.weight", "heads.linear.bias"):
            c["model_state"][name][:off] = 0.0  # mu_j = 0 for the first `off` units: exact zeros in the code
        col = STOP_COLUMNS[stop_on_of(c["config"]["train"])]
        c["history"] = [dict(h, **{col: loss}) if h["epoch"] == c["epoch"] else h for h in c["history"]]
        save_checkpoint(d / f"off{off}" / "best.pt", c)
        files.append(d / f"off{off}" / "best.pt")
    return prep, files


def _direct_hoyer(path, prep) -> float:
    """Per utterance, the mean of eq. 12 over its validation frames; then the mean over utterances."""
    model = load_model(path).model.eval()
    frames = np.load(prep / "validation" / "frames.npy")
    per = []
    for r in read_manifest(prep, "validation"):
        with torch.no_grad():
            code = model.code_of(torch.from_numpy(frames[r["frame_offset"] : r["frame_offset"] + r["n_frames"]]))
        per.append(hoyer(code.numpy()).mean())
    return float(np.mean(per))


def test_validation_hoyer_is_the_per_utterance_mean_and_grows_with_the_units_off(candidates):
    prep, files = candidates
    h = [validation_hoyer(f) for f in files]
    assert h == pytest.approx([_direct_hoyer(f, prep) for f in files], rel=1e-9)
    assert h[0] < h[1] < h[2]


def test_the_choice_is_the_best_loss_among_the_sparse_enough(candidates):
    prep, files = candidates
    h = [validation_hoyer(f) for f in files]
    assert best_at_sparsity(files, 0.0).best == files[0]  # no constraint: the plain (degenerate) rule
    c = best_at_sparsity(files, h[1])
    assert c.best == files[1] and c.target == h[1]  # files[2] is sparse enough too, but worse
    assert c.record()["validation_hoyer"][str(files[2])] == pytest.approx(h[2])
    with pytest.raises(SdmvaeError, match="no candidate reaches a validation Hoyer of"):
        best_at_sparsity(files, min(1.0, h[2] + 0.01))


def test_export_at_a_models_sparsity(candidates, tmp_path, capsys):
    prep, files = candidates
    assert run(["export", *map(str, files), str(tmp_path / "rel.pt"), "--at-hoyer", str(files[2])]) == 0
    rel = read_checkpoint(tmp_path / "rel.pt")
    assert rel["chosen_by"]["chosen"] == str(files[2]) and "validation Hoyer >=" in rel["chosen_by"]["rule"]
    assert "validation Hoyer" in capsys.readouterr().err
    assert run(["export", str(files[0]), str(tmp_path / "x.pt"), "--data", str(prep)]) == 2
    assert run(["export", *map(str, files), str(tmp_path / "y.pt"), "--at-hoyer", "1.5"]) == 2
    assert run(["export", *map(str, files), str(tmp_path / "y.pt"), "--at-hoyer", "nan"]) == 2
    assert run(["export", *map(str, files), str(tmp_path / "y.pt"), "--at-hoyer", "no-such-model"]) == 1
    assert "--at-hoyer no-such-model:" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_export_never_writes_over_what_it_reads(candidates, tmp_path):
    """--at-hoyer reads the prepared data and the target model: neither is ever a destination,
    not even with --overwrite; nor are the files of a candidate's run folder; an empty target is usage."""
    prep, files = candidates
    before = (prep / "prepare.json").read_bytes()
    args = ["export", *map(str, files)]
    assert run([*args, str(prep / "prepare.json"), "--at-hoyer", "0.1", "--overwrite"]) in (1, 2)
    assert (prep / "prepare.json").read_bytes() == before
    target = tmp_path / "target.pt"
    target.write_bytes(files[2].read_bytes())
    assert run([*args, str(target), "--at-hoyer", str(target), "--overwrite"]) == 1
    assert target.read_bytes() == files[2].read_bytes()
    assert run([*args, str(tmp_path / "z.pt"), "--at-hoyer", ""]) == 2 and not (tmp_path / "z.pt").exists()
