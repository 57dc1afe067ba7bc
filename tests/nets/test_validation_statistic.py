"""The noise-free validation statistic (issue 24.1): the ELBO with the posterior-mean code decoded
and the KL in closed form, the default for early stopping and best.pt."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from sdmvae_cli.nets import REGISTRY, ModelConfig, build_model
from sdmvae_cli.nets.base import gaussian_kl_std, itakura_saito
from sdmvae_cli.nets.laplace import gaussian_laplace_kl
from sdmvae_cli.training.options import STOP_COLUMNS, TrainOptions

FAMILIES = {
    "vae": {},
    "sdm": {"dictionary": "dct", "k": 24},
    "vsc": {},
    "threshold": {"learn_threshold": True},
    "laplace": {},
    "cauchy": {},
    "cauchy-gauss": {},
}


def frames(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 513), generator=g).square() * 10 + 1e-4


def test_it_is_the_closed_form_for_a_vae():
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="vae", latent=8, beta=0.7)).eval()
    x = frames()
    with torch.no_grad():
        post = m.encode(x)
        recon = itakura_saito(x, m.decode(post["mu"]))
        kl = gaussian_kl_std(post["mu"], post["logvar"]).sum(-1)
        t = m.mean_code_loss(x)
    torch.testing.assert_close(t.recon, recon)
    torch.testing.assert_close(t.kl, kl)
    torch.testing.assert_close(t.total, recon + 0.7 * kl)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_it_does_not_depend_on_the_noise_where_the_one_sample_elbo_does(family):
    torch.manual_seed(1)
    m = build_model(ModelConfig(model=family, latent=8, **FAMILIES[family])).eval()
    x = frames()
    with torch.no_grad():
        sampled = [m.loss(x).total for _ in range(2)]  # fresh noise each call
        noise_free = [m.mean_code_loss(x).total for _ in range(2)]
    assert not torch.equal(sampled[0], sampled[1])
    assert torch.equal(noise_free[0], noise_free[1]) and torch.isfinite(noise_free[0]).all()


def test_every_family_has_a_closed_form_kl_at_the_training_weights():
    """kl_exact is the expectation of what training estimates: equal to the mean of many
    one-sample KLs (Monte Carlo), for every family (the thresholded model's is already weighted)."""
    torch.manual_seed(2)
    for family, extra in FAMILIES.items():
        m = build_model(ModelConfig(model=family, latent=4, **extra)).eval()
        x = frames(4)
        with torch.no_grad():
            post = m.encode(x)
            exact = m.kl_exact(post)
            z = m.sample({k: v.expand(20000, *v.shape) for k, v in post.items()})
            mc = m.kl({k: v.expand(20000, *v.shape) for k, v in post.items()}, z).mean(0)
        torch.testing.assert_close(mc, exact, rtol=0.05, atol=0.05, msg=family)


def test_the_gaussian_laplace_kl_against_numerical_integration():
    mu = torch.tensor([0.0, 0.8, -2.0, 3.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, -1.5, 0.7, -4.0], dtype=torch.float64)
    z = torch.linspace(-30, 30, 600001, dtype=torch.float64)[:, None]
    sd = torch.exp(0.5 * logvar)
    q = torch.exp(-0.5 * ((z - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    log_q = -0.5 * ((z - mu) / sd) ** 2 - torch.log(sd * math.sqrt(2 * math.pi))
    log_p = -math.log(2.0) - z.abs()
    numeric = torch.trapezoid(q * (log_q - log_p), z[:, 0], dim=0)
    torch.testing.assert_close(gaussian_laplace_kl(mu, logvar), numeric, rtol=1e-6, atol=1e-8)


def test_the_default_stops_on_it_and_history_records_every_statistic(synthetic_prepared, tmp_path):
    from sdmvae_cli.cli.app import run

    assert TrainOptions().stop_on == "posterior-mean"
    run_dir = tmp_path / "r"
    assert (
        run(
            [
                "train",
                str(synthetic_prepared),
                "--arch",
                "vae",
                "--latent",
                "8",
                "--epochs",
                "4",
                "--lr",
                "3e-3",
                "--device",
                "cpu",
                "--no-plot",
                "-q",
                "--out",
                str(run_dir),
            ]
        )
        == 0
    )
    assert json.loads((run_dir / "config.json").read_text())["train"]["stop_on"] == "posterior-mean"
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    pm = [float(r["val_pm_total"]) for r in rows]
    assert all(math.isfinite(v) for v in pm) and pm[-1] < pm[0]  # it falls as the model learns
    best = [int(r["epoch"]) for r in rows if r["best"] == "True"][-1]
    assert best == min(range(len(pm)), key=pm.__getitem__)  # best.pt is the epoch of the lowest statistic
    ck = torch.load(run_dir / "best.pt", weights_only=True)
    assert ck["epoch"] == best


def test_the_cli_offers_every_statistic():
    import typing

    from sdmvae_cli.cli import train as cli_train

    ann = typing.get_type_hints(cli_train.train)["stop_on"]
    assert set(typing.get_args(ann)) == set(STOP_COLUMNS)
    assert set(REGISTRY) >= set(FAMILIES)
