"""What `--help` shows (issue 23.17): no type beside a flag, one --device everywhere."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from sdmvae_cli.cli.app import app

COMMANDS = [
    ["prepare"],
    ["models"],
    ["train"],
    ["info"],
    ["mix"],
    ["sweep"],
    ["sweep-stacks"],
    ["resynth"],
    ["evaluate"],
    ["table"],
    ["demo"],
    ["report"],
    ["enhance"],
    ["export"],
    ["plot", "spectrogram"],
    ["plot", "codes"],
    ["plot", "dictionary"],
    ["plot", "hoyer"],
    [],
]


def help_text(argv: list[str]) -> str:
    r = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "sdmvae")
def test_no_flag_shows_a_type(argv):
    out = help_text(argv)
    assert "<bool>" not in out and "--help" in out


def test_every_device_option_is_the_same():
    """One default (auto), one check, one help line: resynth and evaluate defaulted to cpu."""
    rows = {}
    for argv in COMMANDS:
        cmd = typer.main.get_command(app)
        for a in argv:
            cmd = cmd.commands[a]
        for p in cmd.params:
            if "--device" in getattr(p, "opts", ()):
                rows[" ".join(argv)] = (p.default, p.metavar, p.callback.__name__)
    assert {"train", "sweep", "resynth", "evaluate", "enhance"} <= set(rows)
    assert set(rows.values()) == {("auto", "auto|cpu|cuda[:N]", "device_name")}
    assert re.search(r"auto \(GPU when present", help_text(["resynth"]))


def test_train_parameters_are_their_flags():
    """One spelling table (core.flags.FIELD_FLAGS): each train parameter is named as its flag, so
    error messages, `sdmvae models` and sweep-spec aliases all spell an option the same way."""
    from sdmvae_cli.cli.train import MODEL_PARAMS, TRAIN_PARAMS
    from sdmvae_cli.core.flags import flag_of

    cmd = typer.main.get_command(app).commands["train"]
    opts = {p.name: p.opts for p in cmd.params}
    switches = {p.name: "/".join(p.opts + p.secondary_opts) for p in cmd.params if p.secondary_opts}
    for param, field in {**MODEL_PARAMS, **TRAIN_PARAMS}.items():
        assert flag_of(field) in opts[param] or flag_of(field) == switches.get(param), (param, field, opts[param])


def test_the_tb_every_default_of_the_cli_is_the_librarys():
    """cli/common repeats TensorBoard's example interval so that `--help` loads no torch."""
    from sdmvae_cli.cli.common import TB_EVERY
    from sdmvae_cli.training.tensorboard_log import TB_EVERY as LIBRARY

    assert TB_EVERY == LIBRARY


def test_a_switch_is_shown_by_the_spelling_that_sets_its_default():
    """`sdmvae models` lists an option with its default as it is typed: `--latent 64`, and a
    switch by its spelling, `--causal`, never `--non-causal/--causal False`."""
    from sdmvae_cli.core.flags import flag_of, flag_with_value

    assert flag_with_value("latent", "64") == "--latent 64" and flag_with_value("dictionary", "dct") == "--dict dct"
    assert flag_with_value("non_causal", "False") == "--causal" and flag_with_value("non_causal", "True") == "--non-causal"
    assert flag_of("non_causal") == "--non-causal/--causal"  # what an error names: either spelling
