"""`sdmvae sweep`: stacked members are the same computation as separate `train` runs."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig
from sdmvae_cli.nets.checkpoint import load_model, read_checkpoint
from sdmvae_cli.training.spec import expand_spec
from sdmvae_cli.training.sweep import run_sweep
from sdmvae_cli.training.train import TrainOptions, train

CLI = [sys.executable, "-m", "sdmvae_cli"]
COMMON = {"lr": 2e-3, "batch_size": 64, "epochs": 3, "patience": 50}


def _spec(tmp_path, runs):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({"common": COMMON, "runs": runs}))
    return p


@pytest.mark.parametrize(
    "family",
    [
        {"model": "vsc", "latent": 8},
        {"model": "sdm", "latent": 8, "k": 12, "dictionary": "learned", "coherence": 0.1},
        {"model": "threshold", "latent": 8, "learn_threshold": True, "samples": 2},
    ],
)
def test_members_equal_separate_runs(synthetic_prepared, tmp_path, family):
    """Two seeds and two values of a scalar hyper-parameter in one stack; each member's validation
    losses equal those of the same run trained alone."""
    scalar = {"vsc": "alpha", "sdm": "coherence", "threshold": "beta2"}[family["model"]]
    runs = [dict(family, name="a", seed=0), dict(family, name="b", seed=1, **{scalar: 0.3}, lr=1e-3)]
    summary = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu")
    assert summary["stacks"] == [2] and [m["status"] for m in summary["members"]] == ["finished", "finished"]
    for run in runs:
        kw = {k: v for k, v in run.items() if k not in ("name", "seed", "lr")}
        alone = train(
            synthetic_prepared,
            ModelConfig(**kw),
            TrainOptions(**{**COMMON, "seed": run["seed"], "lr": run.get("lr", COMMON["lr"]), "device": "cpu"}),
            tmp_path / f"alone-{run['name']}",
        )
        stacked = json.loads(json.dumps(read_checkpoint(tmp_path / "sw" / run["name"] / "last.pt")["history"]))
        got, want = [h["val_total"] for h in stacked], [h["val_total"] for h in alone.history]
        # a run alone skips vmap (same maths, other kernels): the first epoch agrees to float
        # rounding; with J > 1 samples the max-ELBO choice among them (eq. 9) is discontinuous, so
        # rounding-level differences can flip a choice and grow over later epochs
        later = 2e-3 if family.get("samples", 1) > 1 else 1e-5
        assert got[0] == pytest.approx(want[0], rel=1e-5, abs=1e-3)
        assert got[1:] == pytest.approx(want[1:], rel=later, abs=1e-3)
        a = read_checkpoint(tmp_path / f"alone-{run['name']}" / "last.pt")["model_state"]
        b = load_model(tmp_path / "sw" / run["name"] / "best.pt").model.state_dict()
        assert set(a) == set(b)


def test_early_stopping_per_member_and_resume(synthetic_prepared, tmp_path):
    runs = [
        {"name": "frozen", "model": "vae", "latent": 8, "lr": 0.0, "patience": 2, "epochs": 6},
        {"name": "learns", "model": "vae", "latent": 8, "seed": 1, "epochs": 2},
    ]
    s = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu")
    by = {m["name"]: m for m in s["members"]}
    assert by["frozen"]["status"] == "stopped" and by["frozen"]["epochs"] == 3  # epoch 0 best, then 2 without improvement
    assert by["learns"]["status"] == "finished" and by["learns"]["epochs"] == 2
    with pytest.raises(SdmvaeError, match="already exists"):
        run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu")
    s2 = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu", epochs=4, resume=True)
    by2 = {m["name"]: m for m in s2["members"]}
    assert by2["learns"]["epochs"] == 4 and by2["frozen"]["epochs"] == 3
    full = train(
        synthetic_prepared,
        ModelConfig(model="vae", latent=8),
        TrainOptions(**{**COMMON, "seed": 1, "epochs": 4, "device": "cpu"}),
        tmp_path / "alone",
    )
    resumed = read_checkpoint(tmp_path / "sw" / "learns" / "last.pt")["history"]
    assert [h["val_total"] for h in resumed] == pytest.approx([h["val_total"] for h in full.history], rel=1e-5, abs=1e-3)


def test_resume_starts_the_members_whose_stack_never_ran(synthetic_prepared, tmp_path):
    """Stacks run one after another, so a sweep interrupted in its first stack leaves the later
    stacks' members with only a config.json: --resume must start them (it once refused them as
    existing folders), and a folder holding anything else is still never overwritten."""
    runs = [
        {"name": "first", "model": "vae", "latent": 8, "epochs": 4},
        {"name": "frozen", "model": "vae", "latent": 8, "lr": 0.0, "patience": 1, "epochs": 4},  # stops after epoch 1
        {"name": "second", "model": "vae", "latent": 6, "epochs": 2},
    ]  # another m: another stack

    def interrupt(m, rec):
        if m.name == "first" and rec.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu", on_epoch=interrupt)
    assert {p.name for p in (tmp_path / "sw" / "second").iterdir()} == {"config.json"}
    sw = {m["name"]: m for m in json.loads((tmp_path / "sw" / "sweep.json").read_text())["members"]}
    assert (sw["frozen"]["status"], sw["frozen"]["epochs"]) == ("stopped", 2)  # its own status survives the Ctrl-C
    assert sw["first"]["status"] == "interrupted" and sw["first"]["epochs"] >= 2
    assert (sw["second"]["status"], sw["second"]["epochs"]) == ("interrupted", 0) and "before its stack" in sw["second"][
        "message"
    ]
    s = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu", resume=True)
    assert [(m["name"], m["status"], m["epochs"]) for m in s["members"]] == [
        ("first", "finished", 4),
        ("frozen", "stopped", 2),
        ("second", "finished", 2),
    ]
    alone = train(
        synthetic_prepared,
        ModelConfig(model="vae", latent=6),
        TrainOptions(**{**COMMON, "epochs": 2, "device": "cpu"}),
        tmp_path / "alone",
    )
    hist = read_checkpoint(tmp_path / "sw" / "second" / "last.pt")["history"]
    assert [h["val_total"] for h in hist] == pytest.approx([h["val_total"] for h in alone.history], rel=1e-5, abs=1e-3)
    (tmp_path / "sw2" / "second").mkdir(parents=True)
    (tmp_path / "sw2" / "second" / "notes.txt").write_text("mine")
    with pytest.raises(SdmvaeError, match="already exists"):
        run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw2", device="cpu", resume=True)
    assert (tmp_path / "sw2" / "second" / "notes.txt").read_text() == "mine"


def test_resume_restarts_a_member_killed_during_its_first_save(synthetic_prepared, tmp_path):
    """kill -9 between a member's first best.pt and its last.pt (a torchrun rank killed at that
    moment: found by tests/training/test_distributed.py) leaves config.json, best.pt and a
    temporary but no last.pt: --resume starts the member afresh, equal to an uninterrupted run;
    a finished run without its last.pt, or a file of the user's beside them, is refused."""
    runs = [{"name": "a", "model": "vae", "latent": 8, "epochs": 2}]
    spec = _spec(tmp_path, runs)
    run_sweep(synthetic_prepared, spec, tmp_path / "whole", device="cpu")
    member = tmp_path / "sw" / "a"
    run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", epochs=1)
    (member / "last.pt").unlink()
    (member / "history.csv").unlink()
    (member / ".last.pt.x1y2.tmp").write_bytes(b"cut")
    s = run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", resume=True)
    assert [(m["status"], m["epochs"]) for m in s["members"]] == [("finished", 2)]
    assert not (member / ".last.pt.x1y2.tmp").exists()
    got, want = read_checkpoint(member / "last.pt")["history"], read_checkpoint(tmp_path / "whole" / "a" / "last.pt")["history"]
    assert [h["val_total"] for h in got] == pytest.approx([h["val_total"] for h in want], rel=1e-6)
    best = (member / "best.pt").read_bytes()
    (member / "last.pt").unlink()  # a finished run whose last.pt was removed is not restarted over its best.pt
    with pytest.raises(SdmvaeError, match="already exists"):
        run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", resume=True)
    (member / "history.csv").unlink()
    (member / "notes.txt").write_text("mine")
    with pytest.raises(SdmvaeError, match="already exists"):
        run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", resume=True)
    assert (member / "notes.txt").read_text() == "mine" and (member / "best.pt").read_bytes() == best


def test_spec_grid_and_errors(tmp_path):
    runs = expand_spec(
        {
            "common": {"latent": 16},
            "grid": {"name": "vsc-a{alpha}-s{seed}", "model": "vsc", "alpha": [0.1, 0.5], "seed": [0, 1, 2]},
        }
    )
    assert [r[0] for r in runs][:2] == ["vsc-a0.1-s0", "vsc-a0.1-s1"] and len(runs) == 6
    assert all(r[1].latent == 16 for r in runs) and runs[5][2].seed == 2
    with pytest.raises(SdmvaeError, match="unknown option"):
        expand_spec({"runs": [{"name": "x", "model": "vae", "lattent": 3}]})
    with pytest.raises(SdmvaeError, match="repeated"):
        expand_spec({"runs": [{"name": "x"}, {"name": "x"}]})


def test_spec_keys_take_the_train_flags_spellings(tmp_path):
    """`arch`, `dict`, `batch-size`, ... (the flags of `sdmvae train`) mean the fields they set;
    every flag of the train command is a spec key (the aliases come from its parameter maps)."""
    from sdmvae_cli.cli.train import MODEL_PARAMS, TRAIN_PARAMS
    from sdmvae_cli.training.spec import read_spec, spec_aliases

    flags = {
        "arch": "sdm",
        "dict": "learned",
        "dict-lr": 0.01,
        "input-transform": "power",
        "batch-size": 32,
        "stop-on": "median",
        "cuda-graph": False,
    }
    fields = {
        "model": "sdm",
        "dictionary": "learned",
        "dict_lr": 0.01,
        "input_transform": "power",
        "batch_size": 32,
        "stop_on": "median",
        "cuda_graph": False,
    }
    ((a, cfg_a, opts_a),) = expand_spec({"runs": [{"name": "a-{dict}-{batch_size}", **flags}]})
    ((_, cfg_b, opts_b),) = expand_spec({"runs": [{"name": "b", **fields}]})
    assert (
        a == "a-learned-32" and cfg_a == cfg_b and opts_a == opts_b and cfg_a.dictionary == "learned" and opts_a.batch_size == 32
    )
    # one place: each train flag (but --device, the sweep's own) is a spec key naming its field
    aliases = spec_aliases()
    for param, field in {**MODEL_PARAMS, **TRAIN_PARAMS}.items():
        flag = param.rstrip("_").replace("_", "-")
        if field != "device":
            assert aliases.get(flag, flag) == field, (param, flag)
    # common, a run and a grid each take them; the run's spelling overrides common's
    runs = expand_spec(
        {
            "common": {"arch": "threshold", "learn-threshold": True, "latent": 8},
            "runs": [{"name": "r", "model": "vae"}],
            "grid": {"name": "g{seed}", "seed": [0, 1], "gamma-rate": [3.0]},
        }
    )
    assert [(n, c.model, c.learn_threshold) for n, c, _ in runs] == [
        ("r", "vae", True),
        ("g0", "threshold", True),
        ("g1", "threshold", True),
    ]
    assert runs[1][1].gamma_rate == 3.0
    p = tmp_path / "spec.toml"
    p.write_text('[common]\narch = "vae"\nbatch-size = 16\n\n[[runs]]\nname = "t"\nstop-on = "median"\n')
    ((_, cfg, opts),) = expand_spec(read_spec(p))
    assert (cfg.model, opts.batch_size, opts.stop_on) == ("vae", 16, "median")
    with pytest.raises(SdmvaeError, match="'dictionary' and 'dict' are two spellings of one option"):
        expand_spec({"runs": [{"name": "x", "model": "sdm", "dictionary": "dct", "dict": "learned"}]})
    with pytest.raises(SdmvaeError, match="'grid'.*'stop_on' and 'stop-on'"):
        expand_spec({"grid": {"stop_on": ["mean"], "stop-on": ["median"]}})
    with pytest.raises(SdmvaeError) as exc:
        expand_spec({"runs": [{"name": "x", "dictonary": "dct"}]})
    msg = str(exc.value)
    assert "dictonary (did you mean dictionary?)" in msg and "valid options: activation, alpha," in msg and "arch, dict" in msg


def test_a_sweep_of_another_spec_into_a_sweep_folder(synthetic_prepared, tmp_path, capsys):
    """A second sweep of another spec into a sweep folder once exited 0 and replaced sweep.json:
    the earlier sweep's record was lost. It is refused; --resume refuses a spec of other
    members; --overwrite replaces the earlier sweep as `train --overwrite` replaces a run (its
    members' run files go, a file of the user's stays)."""
    from sdmvae_cli.cli.app import run

    def spec(name, runs):
        p = tmp_path / name
        p.write_text(json.dumps({"common": {**COMMON, "model": "vae", "latent": 4, "hidden": [16], "epochs": 1}, "runs": runs}))
        return str(p)

    def cli(*args):
        code = run(["sweep", str(synthetic_prepared), *args, "--device", "cpu"])
        out, err = capsys.readouterr()
        return code, [ln for ln in err.splitlines() if ln.strip().startswith("error")]

    first, other = spec("first.json", [{"name": "a"}]), spec("other.json", [{"name": "b", "seed": 1}])
    out = tmp_path / "sw"
    assert cli(first, "--out", str(out))[0] == 0
    (out / "a" / "notes.txt").write_text("mine")
    before = (out / "sweep.json").read_bytes()
    code, errs = cli(other, "--out", str(out))
    assert code == 1 and len(errs) == 1 and "sweep.json already exists" in errs[0] and "--overwrite" in errs[0], errs
    code, errs = cli(other, "--out", str(out), "--resume")
    assert code == 1 and "holds another sweep: this spec adds 1 member(s) ('b'); lacks 1 member(s) ('a')" in errs[0], errs
    assert cli(other, "--out", str(out), "--resume", "--overwrite")[0] == 2
    assert (out / "sweep.json").read_bytes() == before and not (out / "b").exists()
    assert cli(other, "--out", str(out), "--overwrite")[0] == 0
    sw = json.loads((out / "sweep.json").read_text())
    assert [(m["name"], m["status"]) for m in sw["members"]] == [("b", "finished")] and sw["spec"].endswith("other.json")
    assert {p.name for p in (out / "a").iterdir()} == {"notes.txt"}  # the earlier member's run files went, the user's file stayed
    assert (out / "b" / "best.pt").is_file()
    # the same spec over its own sweep: --overwrite trains it afresh
    assert cli(other, "--out", str(out), "--overwrite", "--epochs", "2")[0] == 0
    assert len(read_checkpoint(out / "b" / "last.pt")["history"]) == 2


def test_sweep_json_is_written_as_each_stack_starts(synthetic_prepared, tmp_path):
    """A sweep killed mid-way (kill -9 skips every finally) still leaves its record: sweep.json
    is written when a stack starts, so a later sweep of another spec is refused and --resume
    knows the members."""
    runs = [
        {"name": "m4", "model": "vae", "latent": 4, "hidden": [16], "epochs": 2},
        {"name": "m6", "model": "vae", "latent": 6, "hidden": [16], "epochs": 2},
    ]
    seen = []

    def on_epoch(m, rec):
        sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
        seen.append((m.name, rec.epoch, sw["stacks"], [x["name"] for x in sw["members"]]))

    run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu", on_epoch=on_epoch)
    assert seen == [
        ("m4", 0, [1], ["m4", "m6"]),
        ("m4", 1, [1], ["m4", "m6"]),
        ("m6", 0, [1, 1], ["m4", "m6"]),
        ("m6", 1, [1, 1], ["m4", "m6"]),
    ]


def test_two_ranks_of_one_sweep_train_it_once(synthetic_prepared, tmp_path):
    """`torchrun --nproc-per-node 2 -m sdmvae_cli sweep ...` starts the whole sweep twice, at
    once: one process trains it, the other stops with one line (the folder in use, or, if it
    came late, a sweep already there) instead of training every member a second time into it."""
    spec = _spec(tmp_path, [{"name": "v0", "model": "vae", "latent": 4, "hidden": [16], "epochs": 2}])
    args = [*CLI, "sweep", str(synthetic_prepared), str(spec), "--out", str(tmp_path / "sw"), "--device", "cpu"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 1], results
    lines = results[1][1].strip().splitlines()
    assert len(lines) == 1 and ("in use by another sdmvae process" in lines[0] or "sweep.json already exists" in lines[0]), lines
    assert len(read_checkpoint(tmp_path / "sw" / "v0" / "last.pt")["history"]) == 2
    assert {p.name for p in (tmp_path / "sw").iterdir()} == {"v0", "sweep.json"}


def test_cli_sweep_prints_checkpoints(synthetic_prepared, tmp_path):
    spec = _spec(tmp_path, [{"name": "v0", "model": "vae", "latent": 8}, {"name": "v1", "model": "vae", "latent": 8, "seed": 1}])
    r = subprocess.run(
        [*CLI, "sweep", str(synthetic_prepared), str(spec), "--out", str(tmp_path / "sw"), "--device", "cpu", "--epochs", "2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1].endswith("sweep.json") and all(l.endswith("best.pt") for l in lines[:-1]) and len(lines) == 3
    sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert sw["member_frames_per_s"] > 0 and {p.name for p in (tmp_path / "sw" / "v1").iterdir()} >= {
        "best.pt",
        "last.pt",
        "history.csv",
        "config.json",
    }


def _step_alone(alone, refs, g):
    """torch.optim.Adam on each member alone, with member i's slice of the stacked gradients."""
    for i, (a, r) in enumerate(zip(alone, refs)):
        for n in a:
            a[n].grad = g[n][i].clone()
        r.step()


def _assert_moved_as_alone(params, alone, start):
    for i in range(3):
        for n in ("w", "b"):
            torch.testing.assert_close(params[n][i].detach(), alone[i][n].detach(), atol=1e-6, rtol=1e-5)
            assert (params[n][i] - start[n][i]).abs().max() > 1e-4  # it moved


@pytest.mark.parametrize(
    "fused,shared", [(False, False), (True, False), (True, True)], ids=["foreach", "fused-per-member", "fused-shared-lr"]
)
def test_stacked_adam_is_torch_adam_per_member(fused, shared):
    """Adam is elementwise: the stacked update with a learning rate per member and parameter
    equals torch.optim.Adam run on each member alone, in both paths (the foreach kernels, and
    the fused kernel called once per run of members sharing their learning rates: here three
    runs of one, or a run of two and one); a parameter without a gradient is left alone."""
    from sdmvae_cli.training.optim import StackedAdam

    torch.manual_seed(0)
    lrs = {"w": torch.tensor([1e-2, 3e-3, 1e-4]), "b": torch.tensor([1e-3, 3e-3, 1e-2]), "unused": torch.full((3,), 1e-2)}
    if shared:
        lrs = {"w": torch.tensor([3e-3, 3e-3, 1e-4]), "b": torch.tensor([1e-2, 1e-2, 1e-2]), "unused": torch.full((3,), 1e-2)}
    params = {"w": torch.randn(3, 5, 4), "b": torch.randn(3, 4), "unused": torch.randn(3, 2)}
    start = {n: t.clone() for n, t in params.items()}
    params = {n: t.requires_grad_(True) for n, t in params.items()}
    alone = [{n: t[i].detach().clone().requires_grad_(True) for n, t in params.items() if n != "unused"} for i in range(3)]
    opt = StackedAdam(params, lrs, torch.zeros(3), fused=fused)
    assert opt.fused == fused
    assert [(a, b) for a, b, _ in opt._runs] == ([(0, 2), (2, 3)] if shared else [(0, 1), (1, 2), (2, 3)])
    refs = [torch.optim.Adam([{"params": [a[n]], "lr": float(lrs[n][i])} for n in a]) for i, a in enumerate(alone)]
    for _ in range(25):
        g = {"w": torch.randn(3, 5, 4), "b": torch.randn(3, 4)}
        for n in g:
            params[n].grad = g[n].clone()
        opt.step()
        _step_alone(alone, refs, g)
    _assert_moved_as_alone(params, alone, start)
    assert torch.equal(params["unused"].detach(), start["unused"])


def test_adam_as_tensor_ops_is_torch_adam_per_member():
    """The spelling of Adam that the CPU whole-step compile fuses (adam_scales computed outside,
    adam_update_ inside) is torch.optim.Adam per member too, with a learning rate per member and
    parameter; here run eagerly, on a column-major weight as the compiled path lays it out."""
    from sdmvae_cli.training.optim import adam_scales, adam_update_

    torch.manual_seed(1)
    lrs = {"w": torch.tensor([1e-2, 3e-3, 1e-4]), "b": torch.tensor([1e-3, 3e-3, 1e-2])}
    params = {"w": torch.randn(3, 5, 4).transpose(-1, -2).contiguous().transpose(-1, -2), "b": torch.randn(3, 4)}
    start = {n: t.clone() for n, t in params.items()}
    m = {n: torch.zeros_like(t) for n, t in params.items()}
    v = {n: torch.zeros_like(t) for n, t in params.items()}
    assert m["w"].stride() == params["w"].stride() != torch.zeros(3, 5, 4).stride()  # moments follow the layout
    alone = [{n: t[i].clone().requires_grad_(True) for n, t in params.items()} for i in range(3)]
    refs = [torch.optim.Adam([{"params": [a[n]], "lr": float(lrs[n][i])} for n in a]) for i, a in enumerate(alone)]
    steps = torch.zeros(3)
    for _ in range(25):
        g = {"w": torch.randn(3, 5, 4), "b": torch.randn(3, 4)}
        step_size, bc2_sqrt = adam_scales(steps + 1, lrs)
        adam_update_(params, g, m, v, step_size, bc2_sqrt)
        steps += 1
        _step_alone(alone, refs, g)
    _assert_moved_as_alone(params, alone, start)


def test_equal_runs_split_on_learning_rate_and_step():
    """The fused Adam takes one learning rate and one step count per call: members are cut
    into maximal consecutive runs that agree on both, names grouped by learning rate."""
    from sdmvae_cli.training.optim import equal_runs

    lrs = {"w": torch.tensor([1e-3, 1e-3, 1e-3, 1e-3]), "d": torch.tensor([1e-2, 1e-2, 1e-2, 1e-3])}
    runs = equal_runs(lrs, torch.tensor([4.0, 4.0, 7.0, 7.0]))
    assert [(a, b) for a, b, _ in runs] == [(0, 2), (2, 3), (3, 4)]
    assert list(runs[0][2].values()) == [["w"], ["d"]] and list(runs[2][2].values()) == [["w", "d"]]


def test_threaded_permutations_are_each_generators_own():
    """Drawing the members' permutations in threads gives what drawing them in turn gives."""
    from sdmvae_cli.training.stack import permutations

    gens = lambda: [torch.Generator().manual_seed(s) for s in range(6)]  # noqa: E731
    a, b = permutations(1000, gens(), threaded=True), permutations(1000, gens(), threaded=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])


def test_a_diverging_member_stops_alone(synthetic_prepared, tmp_path):
    runs = [
        {"name": "blows-up", "model": "vae", "latent": 8, "lr": 1e8, "epochs": 3},
        {"name": "fine", "model": "vae", "latent": 8, "seed": 1, "epochs": 3},
    ]
    done = []
    s = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu", on_done=done.append)
    by = {m["name"]: m for m in s["members"]}
    assert s["stacks"] == [2]
    assert by["blows-up"]["status"] == "diverged" and "blows-up" in by["blows-up"]["message"]
    assert by["fine"]["status"] == "finished" and by["fine"]["epochs"] == 3
    assert [m.name for m in done if m.status == "diverged"] == ["blows-up"]


def test_cli_sweep_bad_inputs_leave_nothing(synthetic_prepared, tmp_path):
    spec = _spec(tmp_path, [{"name": "v0", "model": "vae", "latent": 8}])
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "afile").write_text("")
    cases = [
        ([str(tmp_path / "nope"), str(spec), "--out", str(tmp_path / "o1")], 1, "does not exist"),
        ([str(synthetic_prepared), str(tmp_path / "missing.json"), "--out", str(tmp_path / "o2")], 1, "does not exist"),
        ([str(synthetic_prepared), str(tmp_path / "bad.json"), "--out", str(tmp_path / "o3")], 1, "not a valid sweep spec"),
        ([str(synthetic_prepared), str(spec), "--out", str(tmp_path / "o4"), "--epochs", "0"], 2, "--epochs"),
        ([str(synthetic_prepared), str(spec), "--out", str(tmp_path / "afile" / "x"), "--device", "cpu"], 1, "afile"),
    ]
    for args, code, words in cases:
        r = subprocess.run([*CLI, "sweep", *args], capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code and len(lines) == 1 and words in lines[0] and not r.stdout, (args, r.stderr)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_validation_mean_and_median_per_member(synthetic_prepared, tmp_path):
    """Stack.validate gives each member's mean (total, recon, kl) and the median per-frame total,
    and the noise-free statistic's (total, recon, kl), equal to the member's model run alone on
    the validation frames with the same noise; with
    stop_on="median" the best epoch is the one of lowest median."""
    import numpy as np

    from sdmvae_cli.data.frames import FrameSource, open_frames
    from sdmvae_cli.nets import build_model
    from sdmvae_cli.training.stack import Member, Stack, init_state

    cfg = ModelConfig(model="vae", latent=8)
    members = []
    for i in range(2):
        m = Member(f"m{i}", cfg, TrainOptions(seed=i, batch_size=64), tmp_path)
        m.perm_gen, m.noise_gen = torch.Generator().manual_seed(i), torch.Generator().manual_seed(9 + i)
        members.append(m)
    src = FrameSource.create(open_frames(synthetic_prepared, "train"), torch.device("cpu"), 1 << 30)
    val = torch.from_numpy(np.array(open_frames(synthetic_prepared, "validation")))
    stack = Stack(members, [init_state(cfg, i) for i in range(2)], [None, None], src, val, torch.device("cpu"), False, False)
    stack.run_epoch(0)
    got = stack.validate()
    for i in range(2):
        alone = build_model(cfg)
        alone.load_state_dict(stack.member_state(i))
        alone.eval()
        with torch.no_grad():
            t = alone.loss(val, {k: v[i] for k, v in stack._val_noise.items()})
            d = alone.mean_code_loss(val)
        want = [t.total.mean(), t.recon.mean(), t.kl.mean(), t.total.median(), d.total.mean(), d.recon.mean(), d.kl.mean()]
        assert got[i].tolist() == pytest.approx([float(w) for w in want], rel=1e-4)
    r = train(
        synthetic_prepared, cfg, TrainOptions(**{**COMMON, "epochs": 4, "device": "cpu", "stop_on": "median"}), tmp_path / "med"
    )
    medians = [h["val_median"] for h in r.history]
    assert r.best_epoch == int(np.argmin(medians)) and r.best_val == pytest.approx(min(medians))
    assert "val_median" in (tmp_path / "med" / "history.csv").read_text().splitlines()[0]
    # one stack may mix the statistics: each member stops on its own
    runs = [
        {"name": "on-mean", "model": "vae", "latent": 8, "epochs": 4, "stop_on": "mean"},
        {"name": "on-median", "model": "vae", "latent": 8, "epochs": 4, "seed": 1, "stop_on": "median"},
        {"name": "on-default", "model": "vae", "latent": 8, "epochs": 4, "seed": 2},
    ]
    s = run_sweep(synthetic_prepared, _spec(tmp_path, runs), tmp_path / "sw", device="cpu")
    assert s["stacks"] == [3]
    for name, key in (("on-mean", "val_total"), ("on-median", "val_median"), ("on-default", "val_pm_total")):
        ck = read_checkpoint(tmp_path / "sw" / name / "last.pt")
        vals = [h[key] for h in ck["history"]]
        assert ck["best_epoch"] == int(np.argmin(vals)) and ck["best_val"] == pytest.approx(min(vals))


def test_the_shipped_table1_specs_expand_to_valid_unique_runs():
    """scripts/reproduce_table1.sh trains these on a GPU nobody here can test on: a typo in an
    option or a repeated name must fail here, not after the machine is lent. Names are unique
    across every spec of a folder (they share one runs/ tree and one eval/ tree)."""
    from pathlib import Path

    from sdmvae_cli.training.spec import read_spec

    root = Path(__file__).resolve().parents[2] / "scripts"
    for folder in ("table1_sweep", "table1_sweep_cpu"):
        names = []
        for f in sorted((root / folder).glob("*.json")):
            runs = expand_spec(read_spec(f))
            assert runs, f
            for name, cfg, opts in runs:
                opts.validate()
                assert opts.epochs == 500 and opts.patience == 20 and opts.batch_size == 128, name  # the paper's schedule
                assert opts.lr == 1e-4 or f"-lr{opts.lr:g}-" in name, name  # swept only where the name says so
                assert (opts.stop_on == "median") == ("median" in name), name
                assert (cfg.input_transform == "power") == name.startswith("power-"), name
            names += [n for n, _, _ in runs]
        assert len(names) == len(set(names)), folder


def test_stopping_on_a_spiky_mean_says_the_median_was_still_improving():
    """The VAE's failure mode: the mean validation loss spikes (a few frames) and stops the run
    while the median per-frame loss keeps falling; the stop message then says so."""
    from sdmvae_cli.training.early_stopping import median_still_improving

    def hist(means, medians):
        return [{"epoch": e, "val_total": a, "val_median": b} for e, (a, b) in enumerate(zip(means, medians))]

    spiky = hist([-10, -12, 5, 90, 40, 70], [-10, -12, -13, -14, -15, -16])
    assert median_still_improving(spiky, best_epoch=1, patience=4) == 5
    plateau = hist([-10, -12, -11, -11, -11, -11], [-10, -12, -11.5, -11.9, -11.8, -11.7])
    assert median_still_improving(plateau, best_epoch=1, patience=4) is None
    assert median_still_improving([{"epoch": 0, "val_total": 1.0}], best_epoch=0, patience=4) is None  # older histories


def test_a_run_stopped_while_its_median_improved_gets_the_note(synthetic_prepared, tmp_path, monkeypatch):
    """End to end through the stack: the note lands in the member's message (sweep.json, the
    CLI's stop line). The validation statistics are forced: mean worsens, median improves."""
    import sdmvae_cli.training.stack as stack_mod

    calls = {"n": 0}
    real = stack_mod.Stack.validate

    def fake(self):
        v = real(self)
        calls["n"] += 1
        v[:, 0] = 100.0 * calls["n"]  # the mean only gets worse after epoch 0
        v[:, 3] = -1.0 * calls["n"]  # the median keeps improving
        return v

    monkeypatch.setattr(stack_mod.Stack, "validate", fake)
    s = run_sweep(
        synthetic_prepared,
        _spec(tmp_path, [{"name": "v", "model": "vae", "latent": 8, "patience": 2, "epochs": 9, "stop_on": "mean"}]),
        tmp_path / "sw",
        device="cpu",
    )
    m = s["members"][0]
    assert (
        m["status"] == "stopped"
        and m["best_epoch"] == 0
        and "median per-frame loss was still improving (best at epoch 2)" in m["message"]
    )
    calls["n"] = 0  # the same through `train` (whose CLI prints the advice as a warning)
    res = train(
        synthetic_prepared,
        ModelConfig(model="vae", latent=8),
        TrainOptions(**{**COMMON, "patience": 2, "epochs": 9, "device": "cpu", "stop_on": "mean"}),
        tmp_path / "alone",
    )
    assert res.stopped_early and res.best_epoch == 0 and "still improving (best at epoch 2)" in res.advice


def test_sweep_stacks_splits_a_spec_into_its_stacks(tmp_path):
    """`sdmvae sweep-stacks`: every run lands in exactly one per-stack spec, with its options
    unchanged, each per-stack spec is one stack, and an existing file is not overwritten."""
    from pathlib import Path

    from sdmvae_cli.training.spec import read_spec
    from sdmvae_cli.training.stack import group_key

    spec = Path(__file__).resolve().parents[2] / "scripts" / "table1_sweep" / "b_sdm.json"
    r = subprocess.run(
        [sys.executable, "-m", "sdmvae_cli", "sweep-stacks", str(spec), "--out-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 7  # identity m32, identity m64, dct k32/k64 x m32/m64, learned
    whole = {n: (c, o) for n, c, o in expand_spec(read_spec(spec))}
    seen = []
    for p in paths:
        runs = expand_spec(read_spec(p))
        assert len({group_key(c, o) for _, c, o in runs}) == 1
        for n, c, o in runs:
            assert (c, o) == whole[n]
            seen.append(n)
    assert sorted(seen) == sorted(whole)
    again = subprocess.run(
        [sys.executable, "-m", "sdmvae_cli", "sweep-stacks", str(spec), "--out-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def _two_member_stack(cfg, frames, val, compile_loss, tmp_path):
    from sdmvae_cli.data.frames import FrameSource
    from sdmvae_cli.training.stack import Member, Stack, init_state

    members = []
    for i, lr in enumerate((1e-3, 3e-3)):
        m = Member(f"m{i}", cfg, TrainOptions(seed=i, lr=lr, batch_size=64), tmp_path)
        m.perm_gen, m.noise_gen = torch.Generator().manual_seed(i), torch.Generator().manual_seed(9 + i)
        members.append(m)
    src = FrameSource.create(frames, torch.device("cpu"), 1 << 30)
    return Stack(
        members, [init_state(cfg, i) for i in range(2)], [None, None], src, val, torch.device("cpu"), False, compile_loss
    )


@pytest.mark.skipif(
    not __import__("shutil").which(__import__("os").environ.get("CXX", "g++")),
    reason="torch.compile on a CPU needs a C++ compiler (g++ or $CXX); none was found",
)
def test_the_compiled_whole_step_on_a_cpu_is_the_eager_step(synthetic_prepared, tmp_path):
    """--compile on a CPU runs forward, backward (torch.func.grad), Adam and the projection as one
    compiled function, with the linear weights laid out column-major. From the same start and
    batch, its first step's gradients (Adam's first moment), loss sums, weights and projection
    equal the eager step's to float rounding, for the family with the most moving parts (a
    learned dictionary with its own learning rate, a coherence penalty, unit-norm atoms); its
    checkpoints come out in the usual layout; and a sweep through it trains."""
    import numpy as np

    from sdmvae_cli.data.frames import open_frames

    cfg = ModelConfig(model="sdm", latent=8, k=12, dictionary="learned", coherence=0.1)
    frames = np.array(open_frames(synthetic_prepared, "train"))
    val = torch.from_numpy(np.array(open_frames(synthetic_prepared, "validation")))
    eager, fused = (_two_member_stack(cfg, frames, val, c, tmp_path) for c in (False, True))
    assert fused.whole_step and not eager.whole_step
    w = fused.params["encoder.0.weight"]
    assert w.stride()[-2:] == (1, w.shape[-2]) and fused.opt.exp_avg["encoder.0.weight"].stride() == w.stride()
    idx = torch.randint(0, frames.shape[0], (2, 64), generator=torch.Generator().manual_seed(3))
    noise = {k: v[:, 0] for k, v in eager._draw_block(1).items()}
    for st in (eager, fused):
        st.step(idx, noise)
    assert fused.whole_step, "the compile fell back to eager"
    for n in eager.param_names:
        g_f, g_e = fused.opt.exp_avg[n], eager.opt.exp_avg[n]  # 0.1 x the first gradient
        assert (g_f - g_e).abs().max() <= 1e-5 * g_e.abs().max(), n
        # Adam's first step moves each weight by about lr x sign(gradient): rounding can flip the
        # sign of a near-zero gradient (a bounded 2 lr), every other weight agrees to rounding
        d = (fused.params[n] - eager.params[n]).detach().abs()
        assert d.max() <= 2 * 3e-3 + 1e-6 and d.median() <= 1e-7, n
    torch.testing.assert_close(fused.acc, eager.acc, rtol=1e-5, atol=1e-3)
    assert torch.equal(fused.opt.steps, eager.opt.steps)
    torch.testing.assert_close(fused.params["D"].norm(dim=-2), torch.ones(2, 12))  # atoms projected
    state = fused.member_state(1)
    assert state["encoder.0.weight"].is_contiguous() and torch.equal(
        state["encoder.0.weight"], fused.params["encoder.0.weight"][1]
    )
    # a sweep through the compiled path (the same shapes: inductor's cache serves the compile)
    runs = [dict(model="sdm", latent=8, k=12, dictionary="learned", coherence=0.1, name=f"s{i}", seed=i) for i in range(2)]
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({"common": {**COMMON, "epochs": 4, "compile": "on"}, "runs": runs}))
    s = run_sweep(synthetic_prepared, p, tmp_path / "sw", device="cpu")
    for m in s["members"]:
        hist = read_checkpoint(tmp_path / "sw" / m["name"] / "last.pt")["history"]
        assert m["status"] == "finished" and hist[-1]["train_total"] < hist[0]["train_total"]
        assert load_model(tmp_path / "sw" / m["name"] / "best.pt").model.state_dict()["D"].shape == (8, 12)  # z = D a


def test_without_a_cpp_compiler_compile_on_falls_back_to_eager(synthetic_prepared, tmp_path):
    """Inductor needs a C++ compiler on a CPU. Without one, `--compile on` (or auto on a large
    split) says so in one warning line and trains eagerly: same outputs, exit status 0. A member
    that stops first shrinks the stack, whose rebuilt step must stay eager (it once tried to
    compile again and crashed); every epoch's history row says how it ran."""
    import os

    runs = [{"name": f"v{i}", "model": "vae", "latent": 5, "seed": i, "epochs": 1 if i == 0 else 3} for i in range(3)]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"common": {**COMMON, "compile": "on"}, "runs": runs}))
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-c++"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),
    }
    r = subprocess.run(
        [*CLI, "sweep", str(synthetic_prepared), str(spec), "--out", str(tmp_path / "sw"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    warned = [l for l in r.stderr.splitlines() if "torch.compile of the training step failed" in l]
    assert len(warned) == 1 and "C++ compiler" in warned[0], r.stderr
    sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [m["status"] for m in sw["members"]] == ["finished"] * 3
    assert [m["engine"] for m in sw["members"]] == ["cpu:eager"] * 3
    rows = list(csv.DictReader((tmp_path / "sw" / "v1" / "history.csv").open()))
    assert [(r["engine"], r["stack_members"]) for r in rows] == [("cpu:eager", "3"), ("cpu:eager", "2"), ("cpu:eager", "2")]


@pytest.mark.parametrize("whole_step", [True, False], ids=["whole-step", "loss-alone"])
def test_a_failed_compile_trains_as_the_eager_stack(synthetic_prepared, tmp_path, monkeypatch, caplog, whole_step):
    """When inductor cannot build (no C++ compiler), the first step warns once and the stack
    trains eagerly from then on, through a compaction too, and its epochs say ``eager``; and it
    trains exactly as a stack built with compile off. Both compiled paths: the whole step (the
    CPU's, whose column-major weights and Adam moments must go back to the layout torch's fused
    Adam kernel reads: it once paired weights with other elements' gradients) and the loss alone
    (CUDA's, run here on a CPU). A later stack in the process does not try again."""
    import numpy as np
    import torch._inductor.config as inductor_config

    from sdmvae_cli.training.loop import StackCallbacks, train_stack
    from sdmvae_cli.training.stack import Stack

    monkeypatch.setattr(Stack, "whole_step_on_cpu", whole_step)
    monkeypatch.setattr(Stack, "compile_failed", None)
    # inductor's own patch (restored on exit): monkeypatching the config proxy's attribute failed
    # on a fresh install ("has no attribute 'cxx'" on the second case)
    with inductor_config.patch({"cpp.cxx": (str(tmp_path / "no-such-c++"),), "fx_graph_cache": False}):
        frames = np.load(synthetic_prepared / "train" / "frames.npy")
        val = torch.from_numpy(np.load(synthetic_prepared / "validation" / "frames.npy"))
        cfg = ModelConfig(model="vae", latent=5, hidden=(16,))
        stacks = {}
        for compile_loss in (False, True):
            stack = _two_member_stack(cfg, frames, val, compile_loss, tmp_path)
            assert stack.engine == (
                "cpu:eager" if not compile_loss else "cpu:compiled-step" if whole_step else "cpu:compiled-loss"
            )
            stack.members[0].opts.epochs, stack.members[1].opts.epochs = 1, 3  # member 0 stops first: the stack shrinks
            with caplog.at_level("WARNING"):
                train_stack(stack, StackCallbacks())
            stacks[compile_loss] = stack
        warned = [r for r in caplog.records if "torch.compile of the training step failed" in r.getMessage()]
        assert len(warned) == 1 and Stack.compile_failed
        fell_back, eager = stacks[True], stacks[False]
        assert [m.status for m in fell_back.members] == ["finished"] and len(fell_back.members) == 1
        hist = fell_back.members[0].history
        assert [(h["engine"], h["stack_members"]) for h in hist] == [("cpu:eager", 2), ("cpu:eager", 1), ("cpu:eager", 1)]
        for h, ref in zip(hist, eager.members[0].history, strict=True):
            for k in ("train_total", "val_total", "val_median"):
                assert h[k] == pytest.approx(ref[k], rel=1e-5), (h["epoch"], k)
        for n, v in fell_back.member_state(0).items():
            torch.testing.assert_close(v, eager.member_state(0)[n], rtol=1e-4, atol=1e-6)
        assert _two_member_stack(cfg, frames, val, True, tmp_path).engine == "cpu:eager"  # a later stack does not try again


def test_compile_auto_follows_the_planned_work():
    """auto: always with CUDA; on a CPU once the stack's planned work (members x the epochs each
    will run at least x frames) repays the compile (docs/benchmarks.md); on and off are what
    they say. A 3-epoch sweep of three members on a full split stays eager (issue 23.20)."""
    from sdmvae_cli.training.options import AUTO_COMPILE_MEMBER_FRAMES, TrainOptions, compile_enabled, planned_epochs

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert planned_epochs(TrainOptions(epochs=500, patience=20)) == 21  # early stopping cannot end it sooner
    assert planned_epochs(TrainOptions(epochs=3, patience=20)) == 3
    assert planned_epochs(TrainOptions(epochs=30, patience=20), done=25) == 5  # a resumed run's remaining epochs
    assert compile_enabled("auto", cuda, [1], 10) and not compile_enabled("off", cuda, [21] * 64, 10**6)
    assert not compile_enabled("auto", cpu, [3, 3, 3], 200_000)  # the short sweep
    assert not compile_enabled("auto", cpu, [21], 30_000) and not compile_enabled("auto", cpu, [21] * 3, 30_000)
    assert compile_enabled("auto", cpu, [21] * 4, 30_000) and compile_enabled("auto", cpu, [1], AUTO_COMPILE_MEMBER_FRAMES)
    assert not compile_enabled("auto", cpu, [1], AUTO_COMPILE_MEMBER_FRAMES - 1)
    assert compile_enabled("on", cpu, [1], 10)


def test_a_sweep_started_before_the_default_statistic_changed_resumes_on_its_own(synthetic_prepared, tmp_path):
    """A member started when the default was the mean resumes with the same spec, on the mean
    (the default changed under it, the spec did not); a spec that sets another value is refused."""
    from sdmvae_cli.nets.checkpoint import save_checkpoint

    spec = _spec(tmp_path, [{"name": "v", "model": "vae", "latent": 8, "epochs": 2}])
    run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu")
    member = tmp_path / "sw" / "v"
    for f in ("last.pt", "best.pt"):  # as the previous version wrote them: stop_on absent (its default, the mean)
        d = read_checkpoint(member / f)
        del d["config"]["train"]["stop_on"]
        save_checkpoint(member / f, {k: v for k, v in d.items() if k not in ("format", "format_version", "package_version")})
    cfg = json.loads((member / "config.json").read_text())
    cfg["train"]["stop_on"] = "mean"
    (member / "config.json").write_text(json.dumps(cfg))
    run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", epochs=3, resume=True)
    ck = read_checkpoint(member / "last.pt")
    assert ck["epoch"] == 2 and ck["config"]["train"]["stop_on"] == "mean"
    assert ck["best_val"] == min(h["val_total"] for h in ck["history"])  # still stopping on the mean
    other = _spec(tmp_path, [{"name": "v", "model": "vae", "latent": 8, "epochs": 2, "stop_on": "median"}])
    with pytest.raises(SdmvaeError, match="stop_on"):
        run_sweep(synthetic_prepared, other, tmp_path / "sw", device="cpu", epochs=4, resume=True)


def test_a_resume_with_nothing_left_reports_no_throughput(synthetic_prepared, tmp_path):
    """sweep.json's member-frames/s is this process's: a --resume of finished members trained
    no frame (it once divided every earlier epoch's frames by the resume's 0.04 s)."""
    spec = _spec(tmp_path, [{"name": "a", "model": "vae", "latent": 8, "epochs": 2}])
    first = run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu")
    assert first["member_frames_per_s"] > 0
    again = run_sweep(synthetic_prepared, spec, tmp_path / "sw", device="cpu", resume=True)
    assert again["members"][0]["epochs"] == 2 and again["member_frames_per_s"] == 0
