"""The DKF and its priors: closed-form KLs against Monte Carlo, the mean chain, batch independence."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sdmvae_cli.nets import ModelConfig, build_model
from sdmvae_cli.nets.seqpriors import VscPrior, gaussian_kl


def _model(prior: str, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="dkf", latent=6, seq_len=7, rnn_hidden=12, prior=prior, k=kw.pop("k", 9 if prior == "sdm" else 64), **kw
    )
    return build_model(cfg).eval()


def _frames(b: int = 3, t: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand((b, t, 513), generator=g) * torch.exp(-torch.linspace(0, 6, 513))


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mq, mp, lq, lp = (torch.randn(50, generator=g) for _ in range(4))
    want = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), want, rtol=1e-5, atol=1e-6)


def _capture(model):
    """Per-step posterior heads' outputs and the transition's (f, log v), by forward hooks."""
    heads, trans = [], []
    model.prior.heads.register_forward_hook(lambda m, i, o: heads.append(o))
    model.transition.register_forward_hook(lambda m, i, o: trans.append(o))
    return heads, trans


def _log_normal(x, mu, logvar):
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu).square() / logvar.exp())


@pytest.mark.parametrize("prior", ["gaussian", "sdm"])
def test_summed_step_kls_estimate_the_sequence_kl(prior):
    """E_q[sum_t KL_t(z_<t)] is the KL of the whole sequences, E_q[log q(.) - log p(.)]: both
    estimated from the same 4,000 sampled chains, within 4 standard errors of their difference."""
    model = _model(prior)
    with torch.no_grad():  # posteriors away from N(0, 1): variances and means of every size
        model.prior.heads.linear.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    x = _frames(1).expand(4000, -1, -1)
    heads, trans = _capture(model)
    with torch.no_grad():
        noise = {"eps": torch.randn((4000, 7, model.prior.code_dim))}
        out = model.chain(x, noise)
    summed = out["kl"].sum(-1)
    log_ratio = torch.zeros(4000)
    for t in range(7):
        mu, logvar = heads[t]["mu"], heads[t]["logvar"]
        if prior == "gaussian":  # z_t against the transition's N(f_t, v_t)
            f, logv = trans[t]
            log_ratio += (_log_normal(out["z"][:, t], mu, logvar) - _log_normal(out["z"][:, t], f, logv)).sum(-1)
        else:  # the code a_t against N(0, gamma_t), gamma_t = mu^2 + sigma^2 (eq. 9)
            a = out["code"][:, t]
            gamma = mu.square() + logvar.exp()
            log_ratio += (_log_normal(a, mu, logvar) - _log_normal(a, torch.zeros_like(a), gamma.log())).sum(-1)
    diff = (summed - log_ratio).double()
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(4000) + 1e-4
    assert summed.mean() > 0.01  # a KL that is not trivially zero


def test_spike_and_slab_step_kl_against_exact_monte_carlo():
    """The VSC step's closed-form KL (Bernoulli KL + pi x slab KL against N(0, v_t)) against
    log q(a) - log p(a) averaged over exact spike-and-slab samples (the spike's mass at 0)."""
    torch.manual_seed(3)
    cfg = ModelConfig(model="dkf", latent=4, prior="vsc", alpha=0.3)
    prior = VscPrior(cfg, 5)
    h, f = torch.randn(1, 5), torch.zeros(1, 4)
    logv = torch.tensor([[0.3, -0.5, 0.0, 1.0]])
    with torch.no_grad():
        _, _, kl = prior.step(h, f, logv, None, lambda n: getattr(cfg, n), torch.zeros(()))
        p = prior.heads(h)
    mu, logvar = p["mu"][0], p["logvar"][0]
    pi = torch.sigmoid(p["spike_logit"][0])
    n = 200_000
    g = torch.Generator().manual_seed(4)
    slab = torch.rand((n, 4), generator=g) < pi
    a = mu + (0.5 * logvar).exp() * torch.randn((n, 4), generator=g)
    on = (torch.log(pi) + _log_normal(a, mu, logvar)) - (math.log(0.3) + _log_normal(a, torch.zeros(4), logv[0]))
    off = torch.log(1 - pi) - math.log(0.7)
    ratio = torch.where(slab, on, off).sum(-1).double()
    assert abs(ratio.mean() - kl.item()) < 4 * ratio.std() / math.sqrt(n)


@pytest.mark.parametrize("prior", ["gaussian", "sdm"])
def test_the_noise_free_statistic_is_the_chain_at_zero_noise(prior):
    model = _model(prior)
    x = _frames()
    zero = {"eps": torch.zeros((3, 7, model.prior.code_dim))}
    torch.testing.assert_close(model.mean_code_loss(x).total, model.loss(x, zero).total)
    assert not torch.allclose(model.loss(x).total, model.mean_code_loss(x).total)


@pytest.mark.parametrize("prior", ["gaussian", "sdm", "vsc"])
def test_sequences_of_a_batch_do_not_interact(prior):
    """Each sequence's per-frame loss is the same alone as in its batch (the recurrences run
    over time, never over the batch)."""
    model = _model(prior)
    x = _frames()
    noise = {k: torch.rand(v[1]) if v[0] == "uniform" else torch.randn(v[1]) for k, v in model.prior.noise_spec(3, 7).items()}
    together = model.loss(x, noise).total.view(3, 7)
    for i in range(3):
        alone = model.loss(x[i : i + 1], {k: v[i : i + 1] for k, v in noise.items()}).total
        torch.testing.assert_close(alone, together[i], rtol=1e-5, atol=1e-4)


def test_the_inference_lstm_runs_backward_in_time():
    """The first step's code depends on the last frame: its only path from x_T is the backward
    LSTM (z_0 = 0), so g_1 sees x_{1:T}, as q(z_t | z_{t-1}, x_{t:T}) says."""
    model = _model("gaussian")
    x = _frames(1)
    y = x.clone()
    y[0, -1] *= 10.0
    with torch.no_grad():
        c1, c2 = model.chain(x, None)["code"], model.chain(y, None)["code"]
    assert not torch.allclose(c1[0, 0], c2[0, 0])


def test_reconstruct_keeps_the_utterance_length():
    model = _model("sdm")
    power, code = model.reconstruct(_frames(1, 31)[0])
    assert power.shape == (31, 513) and code.shape == (31, 9)
    assert torch.isfinite(power).all()


def test_another_priors_options_are_refused():
    """--alpha under the Gaussian prior would name the run and change nothing: one line."""
    from sdmvae_cli.core.errors import SdmvaeError

    with pytest.raises(SdmvaeError, match="--alpha does not apply to --prior gaussian"):
        build_model(ModelConfig(model="dkf", prior="gaussian", alpha=0.2))
    with pytest.raises(SdmvaeError, match="--dict, --k do not apply to --prior vsc"):
        build_model(ModelConfig(model="dkf", prior="vsc", dictionary="identity", k=64 + 1))


def test_the_gamma_update_minimises_each_step_kl():
    """gamma = mu^2 + sigma^2 (eq. 9) is where the step's KL is lowest: moving it either way
    raises the KL, and there the KL is 1/2 sum log(1 + mu^2 / sigma^2)."""
    from sdmvae_cli.nets.sdm import gamma_update, sdm_kl

    g = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(200, 9, generator=g), torch.randn(200, 9, generator=g)
    gamma = gamma_update(mu, logvar)
    at = sdm_kl(mu, logvar, gamma)
    torch.testing.assert_close(at, 0.5 * torch.log1p(mu.square() / logvar.exp()).sum(-1))
    for factor in (0.9, 1.1):
        assert (sdm_kl(mu, logvar, gamma * factor) > at).all()


def test_a_configuration_reads_its_own_priors_options_only():
    from sdmvae_cli.nets.dkf import DKF

    sdm, vsc = ModelConfig(model="dkf", prior="sdm"), ModelConfig(model="dkf", prior="vsc")
    assert {"dictionary", "k"} <= set(DKF.reads(sdm)) and "alpha" not in DKF.reads(sdm)
    assert "alpha" in DKF.reads(vsc) and "k" not in DKF.reads(vsc)
    assert set(DKF.reads()) == set(DKF.reads(sdm)) | set(DKF.reads(vsc))


@pytest.mark.parametrize("prior", ["gaussian", "sdm"])
def test_the_kl_warm_up_weighs_the_training_objective_only(prior):
    """--kl-warmup 4: at epoch 0 the training loss is IS + KL / 4, from epoch 3 on IS + KL; the
    reported KL and the eval-mode loss (validation) are never weighted."""
    model = _model(prior, kl_warmup=4).train()
    x = _frames()
    noise = {k: torch.randn(s, generator=torch.Generator().manual_seed(3)) for k, (_, s) in model.noise_spec(3).items()}
    for epoch, w in ((0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)):
        model.set_epoch(epoch)
        t = model.loss(x, noise)
        torch.testing.assert_close(t.total, t.recon + w * t.kl)
    model.set_epoch(0)
    t = model.eval().loss(x, noise)
    torch.testing.assert_close(t.total, t.recon + t.kl)
    assert model.family_label(model.cfg).endswith("(KL warm-up 4)")  # its own row in tables
