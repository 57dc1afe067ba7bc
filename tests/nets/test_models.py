"""Closed-form KLs against Monte Carlo, the SDM-VAE equations, and learning on real-shaped data."""

import math

import numpy as np
import pytest
import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets import REGISTRY, ModelConfig, build_model
from sdmvae_cli.nets.base import gaussian_kl_std, log_laplace, log_normal
from sdmvae_cli.nets.cauchy import cauchy_kl
from sdmvae_cli.nets.dictionary import dct_dictionary, make_dictionary, mutual_coherence_penalty
from sdmvae_cli.nets.sdm import gamma_update, sdm_kl
from sdmvae_cli.nets.threshold import gamma_kl, laplace_kl_std, shifted_soft_threshold, straight_through
from sdmvae_cli.nets.vsc import spike_slab_kl

N = 400_000
torch.set_default_dtype(torch.float32)


def mc(x: torch.Tensor):
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-0.8, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(N, generator=g, dtype=torch.float64)
    est, se = mc(log_normal(z, mu, logvar) - log_normal(z, torch.zeros(()), torch.zeros(())))
    assert abs(float(gaussian_kl_std(mu, logvar)) - est) < 5 * se


def test_sdm_kl_matches_monte_carlo_and_gamma_update_minimises_it():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.5, -1.2, 0.05], dtype=torch.float64)
    logvar = torch.tensor([-1.0, 0.3, -2.0], dtype=torch.float64)
    gamma = torch.tensor([0.4, 2.0, 0.9], dtype=torch.float64)
    a = mu + torch.exp(0.5 * logvar) * torch.randn(N, 3, generator=g, dtype=torch.float64)
    log_p = log_normal(a, torch.zeros(3, dtype=torch.float64), torch.log(gamma))
    est, se = mc((log_normal(a, mu, logvar) - log_p).sum(-1))
    assert abs(float(sdm_kl(mu, logvar, gamma)) - est) < 5 * se
    # eq. 9: gamma = mu^2 + sigma^2 minimises eq. 8a; any perturbation increases the KL
    g_star = gamma_update(mu, logvar)
    kl_star = sdm_kl(mu, logvar, g_star)
    for f in (0.5, 0.9, 1.1, 2.0):
        for j in range(3):
            gp = g_star.clone()
            gp[j] *= f
            assert sdm_kl(mu, logvar, gp) > kl_star
    assert not g_star.requires_grad


def test_spike_and_slab_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(2)
    mu, logvar, gam, alpha = (
        torch.tensor(0.8, dtype=torch.float64),
        torch.tensor(-0.5, dtype=torch.float64),
        torch.tensor(0.3, dtype=torch.float64),
        0.2,
    )
    slab = torch.rand(N, generator=g, dtype=torch.float64) < gam
    z = mu + torch.exp(0.5 * logvar) * torch.randn(N, generator=g, dtype=torch.float64)
    # densities w.r.t. (Lebesgue + point mass at 0): slab draws use the Gaussian parts
    log_q = torch.where(slab, torch.log(gam) + log_normal(z, mu, logvar), torch.log(1 - gam))
    log_p = torch.where(
        slab,
        math.log(alpha) + log_normal(z, torch.zeros(()), torch.zeros(())),
        torch.log(torch.tensor(1 - alpha, dtype=torch.float64)),
    )
    est, se = mc(log_q - log_p)
    closed = float(spike_slab_kl(mu[None], logvar[None], gam[None], alpha))
    assert abs(closed - est) < 5 * se


def test_laplace_and_gamma_kls_match_monte_carlo():
    torch.manual_seed(3)  # the distributions sample from the global generator
    mu, log_b = torch.tensor(-0.6, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    d = torch.distributions.Laplace(mu, log_b.exp())
    z = d.sample((N,))
    est, se = mc(d.log_prob(z) - log_laplace(z))
    assert abs(float(laplace_kl_std(mu, log_b)) - est) < 5 * se
    q = torch.distributions.Gamma(torch.tensor(3.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64))
    p = torch.distributions.Gamma(torch.tensor(2.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64))
    lam = q.sample((N,))
    est, se = mc(q.log_prob(lam) - p.log_prob(lam))
    assert abs(float(gamma_kl(q.concentration, q.rate, 2.0, 4.0)) - est) < 5 * se


def test_cauchy_kl_matches_monte_carlo():
    torch.manual_seed(4)
    q = torch.distributions.Cauchy(torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64))
    p = torch.distributions.Cauchy(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    z = q.sample((N,))
    est, se = mc(q.log_prob(z) - p.log_prob(z))
    assert abs(float(cauchy_kl(q.loc, q.scale)) - est) < 5 * se


def test_laplace_vae_kl_is_an_unbiased_single_sample_estimate():
    torch.manual_seed(5)
    m = build_model(ModelConfig(model="laplace", latent=4))
    post = {"mu": torch.full((N // 10, 4), 0.3), "logvar": torch.full((N // 10, 4), -1.0)}
    z = m.sample(post)
    kl = m.kl(post, z)  # one sample per frame
    # exact value by quadrature of E_q[log q - log p] for one dimension
    s = math.exp(-0.5)
    grid = torch.linspace(0.3 - 10 * s, 0.3 + 10 * s, 200001, dtype=torch.float64)
    qd = torch.exp(log_normal(grid, torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)))
    exact = 4 * float(torch.trapezoid(qd * (torch.log(qd) - log_laplace(grid)), grid))
    est, se = mc(kl.double())
    assert abs(exact - est) < 5 * se


def test_dct_dictionary_is_eq_11_with_unit_norm_columns():
    m, k = 32, 64
    d = dct_dictionary(m, k).double()
    np.testing.assert_allclose(d.norm(dim=0).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(d[:, 0].numpy(), 1 / math.sqrt(m), atol=1e-7)
    l = np.arange(1, m + 1)
    for r in (1, 5, 63):
        v = np.cos((l - 1) * np.pi * r / k)
        v = v - v.mean()
        np.testing.assert_allclose(d[:, r].numpy(), v / np.linalg.norm(v), atol=1e-6)
    assert torch.equal(make_dictionary("identity", 8, 8), torch.eye(8))
    with pytest.raises(SdmvaeError):
        make_dictionary("identity", 8, 16)
    assert float(mutual_coherence_penalty(torch.eye(8))) == 0.0
    assert float(mutual_coherence_penalty(d.float())) > 0.0


def test_sdm_identity_with_unit_gamma_is_the_plain_vae():
    torch.manual_seed(0)
    vae = build_model(ModelConfig(model="vae", latent=16))
    sdm = build_model(ModelConfig(model="sdm", latent=16, k=16, dictionary="identity"))
    sdm.load_state_dict({**vae.state_dict(), "D": torch.eye(16)})
    sdm.fixed_gamma = 1.0
    x = torch.rand(32, 513) * 5
    torch.manual_seed(1)
    a = vae.loss(x)
    torch.manual_seed(1)
    b = sdm.loss(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_shifted_soft_threshold_and_straight_through():
    s = torch.tensor([-2.0, 0.4, 0.6, 1.05, 3.0])
    mu = torch.tensor([0.5])
    t = shifted_soft_threshold(s, torch.tensor([0.5]), mu)
    torch.testing.assert_close(t, torch.tensor([-1.5, 0.0, 0.0, 0.55, 2.5]))
    s.requires_grad_(True)
    z = straight_through(s, torch.tensor([0.5]), mu)
    z.sum().backward()
    torch.testing.assert_close(s.grad, torch.ones(5))  # identity gradient through T


@pytest.mark.parametrize("base", ["gaussian", "laplace"])
@pytest.mark.parametrize("learn", [False, True])
def test_thresholded_samples_have_exact_zeros_and_gradients_reach_encoder(base, learn):
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="threshold", base=base, learn_threshold=learn, threshold=1.0, samples=3))
    x = torch.rand(64, 513) * 3
    m.loss(x).total.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    with torch.no_grad():
        z = m.sample(m.encode(x))
    assert (z == 0).any()


@pytest.mark.parametrize("base", ["gaussian", "laplace"])
def test_thresholded_posterior_mean_is_the_mean_of_samples(base):
    """The resynthesis code is E[T(s)] = (1 - p0) mu: check it against a Monte Carlo mean."""
    torch.manual_seed(1)
    m = build_model(ModelConfig(model="threshold", base=base, threshold=0.3, latent=8))
    with torch.no_grad():
        post = m.encode(torch.rand(4, 513) * 3)
        post["log_scale"] = torch.full_like(post["mu"], -1.0)  # sigma^2 (or b) of a moderate size
        post["mu"] = torch.linspace(-1, 1, 32).view(4, 8)
        n = 200_000
        big = {k: v.expand(n, *v.shape).reshape(-1, v.shape[-1]) for k, v in post.items()}
        mc = m.sample(big).view(n, 4, 8).mean(0)
        code = m.mean_code(post)
        p0 = m.spike_probability(post)
    assert (p0 > 0.05).any() and (p0 < 0.95).any()  # a regime where both spike and slab matter
    torch.testing.assert_close(code, (1 - p0) * post["mu"])
    torch.testing.assert_close(code, mc, atol=6e-3, rtol=0)


def test_learned_threshold_gamma_sampler_matches_the_gamma_distribution():
    """The capturable reparameterised Gamma sampler: mean and variance of Gamma(a, b)."""
    from sdmvae_cli.nets.threshold import gamma_reparam

    g = torch.Generator().manual_seed(0)
    for a, b in [(0.5, 1.0), (2.0, 4.0), (5.0, 2.0)]:
        n = 400_000
        shape, rate = torch.full((n,), a), torch.full((n,), b)
        x = gamma_reparam(shape, rate, torch.randn(n, generator=g), torch.rand(n, generator=g))
        assert float(x.mean()) == pytest.approx(a / b, rel=0.02)
        assert float(x.var()) == pytest.approx(a / b**2, rel=0.06)


@pytest.mark.parametrize("m_dim", [32, 64])
@pytest.mark.parametrize("k", [32, 64, 128])
def test_shapes(m_dim, k):
    x = torch.rand(10, 513)
    for cfg in (
        ModelConfig(model="sdm", latent=m_dim, k=k, dictionary="dct"),
        ModelConfig(model="sdm", latent=m_dim, k=k, dictionary="learned"),
        *([ModelConfig(model="sdm", latent=m_dim, k=k, dictionary="identity")] if k == m_dim else []),
    ):
        model = build_model(cfg)
        post = model.encode(x)
        assert model.sample(post).shape == (10, m_dim) and model.mean_code(post).shape == (10, m_dim)
        assert model.interpretable_code(post).shape == (10, k) and model.decode(model.mean_code(post)).shape == (10, 513)
        t = model.loss(x)
        assert t.total.shape == t.recon.shape == t.kl.shape == (10,)
    for name in ("vae", "vsc", "threshold", "laplace", "cauchy"):
        model = build_model(ModelConfig(model=name, latent=m_dim))
        post = model.encode(x)
        assert model.interpretable_code(post).shape == (10, m_dim)
        assert model.loss(x).total.shape == (10,)


def test_invalid_options_are_clear_errors():
    with pytest.raises(SdmvaeError, match="identity"):
        build_model(ModelConfig(model="sdm", latent=64, k=32, dictionary="identity"))
    with pytest.raises(SdmvaeError, match="alpha"):
        build_model(ModelConfig(model="vsc", alpha=1.5))
    with pytest.raises(SdmvaeError, match="unknown model"):
        build_model(ModelConfig(model="nope"))


def test_learned_dictionary_stays_unit_norm_and_gets_its_own_lr():
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="sdm", dictionary="learned", k=96, coherence=0.5, dict_lr=3e-3))
    groups = m.param_groups(1e-4)
    assert groups[1]["lr"] == 3e-3 and groups[1]["params"][0] is m.D
    opt = torch.optim.Adam(groups)
    d0 = m.D.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        m.loss(torch.rand(32, 513) * 4).total.mean().backward()
        opt.step()
        m.post_step()
    torch.testing.assert_close(m.D.norm(dim=0), torch.ones(96))
    assert not torch.allclose(m.D, d0)


def speechlike_frames(n: int) -> torch.Tensor:
    from sdmvae_cli.audio.stft import StftConfig, power_spectrogram
    from sdmvae_cli.audio.synthetic import source_filter_speech

    x = np.concatenate([source_filter_speech(2.0, seed=s) for s in range(3)])
    return power_spectrogram(torch.from_numpy(x), StftConfig())[:n].float()


@pytest.mark.parametrize(
    "name,extra",
    [
        ("vae", {}),
        ("sdm", {}),
        ("sdm", {"dictionary": "learned", "k": 96}),
        ("vsc", {}),
        ("threshold", {}),
        ("threshold", {"learn_threshold": True, "base": "laplace"}),
        ("laplace", {}),
        ("cauchy", {}),
    ],
)
def test_every_model_learns(name, extra):
    torch.manual_seed(0)
    x = speechlike_frames(256)
    m = build_model(ModelConfig(model=name, latent=16, **extra))
    opt = torch.optim.Adam(m.param_groups(3e-3))

    def eval_loss():
        torch.manual_seed(123)
        with torch.no_grad():
            return float(m.loss(x).total.mean())

    before = eval_loss()
    for step in range(300):
        m.set_epoch(step // 30)
        idx = torch.randint(0, x.shape[0], (64,))
        opt.zero_grad()
        m.loss(x[idx]).total.mean().backward()
        opt.step()
        m.post_step()
    after = eval_loss()
    # the IS loss of these frames spans a few hundred nats; learning must remove a good part of it
    assert after < before - 0.25 * abs(before), (before, after)


def test_registry_lists_all_issue_models():
    assert {"vae", "sdm", "vsc", "threshold", "laplace", "cauchy"} <= set(REGISTRY)
