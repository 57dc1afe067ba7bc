"""SRNN and RVAE (causal, non-causal) with every prior: shapes, the mean chain, batch
independence, the summed step KLs against Monte Carlo, causality, the LSTM cell step, labels,
and one tiny CLI training run of each."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from sdmvae_cli.audio.synthetic import make_synthetic_prepared
from sdmvae_cli.cli.app import run
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.nets import ModelConfig, build_model, foreign_options
from sdmvae_cli.nets.checkpoint import load_model
from sdmvae_cli.nets.lstm import LSTMLayer
from sdmvae_cli.training.train import default_run_name

FAMILIES = {"srnn": ("srnn", False), "rvae": ("rvae", False), "rvae-nc": ("rvae", True)}
PRIORS = ["gaussian", "sdm", "vsc"]
T = 7


@pytest.fixture(autouse=True)
def _one_thread():
    """Sequences of 7 frames in batches of 3: intra-op threads only add synchronisation, which
    costs far more than the arithmetic when the cores are shared (0.5 s instead of 7 ms a step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family: str, prior: str, **kw):
    name, nc = FAMILIES[family]
    torch.manual_seed(0)
    cfg = ModelConfig(
        model=name,
        latent=6,
        seq_len=T,
        rnn_hidden=12,
        prior=prior,
        k=kw.pop("k", 9 if prior == "sdm" else 64),
        non_causal=nc,
        **kw,
    )
    return build_model(cfg).eval()


def _frames(b: int = 3, t: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand((b, t, 513), generator=g) * torch.exp(-torch.linspace(0, 6, 513))


def _noise(model, b: int, t: int = T, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = model.step_noise_spec(b, t)
    return {k: torch.rand(s, generator=g) if kind == "uniform" else torch.randn(s, generator=g) for k, (kind, s) in spec.items()}


def _log_normal(x, mu, logvar):
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu).square() / logvar.exp())


# -- shapes, the mean chain, batches ---------------------------------------------------------
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_and_reconstruction_of_an_utterance(family, prior):
    model = _model(family, prior)
    terms = model.loss(_frames(), _noise(model, 3))
    assert all(v.shape == (3 * T,) and torch.isfinite(v).all() for v in terms)
    power, code = model.reconstruct(_frames(1, 23)[0])
    assert power.shape == (23, 513) and code.shape == (23, model.code_dim)
    assert model.code_dim == (9 if prior == "sdm" else 6)
    assert torch.isfinite(power).all() and (power > 0).all()


@pytest.mark.parametrize("prior", ["gaussian", "sdm"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_noise_free_statistic_is_the_chain_at_zero_noise(family, prior):
    model = _model(family, prior)
    x = _frames()
    zero = {"eps": torch.zeros((3, T, model.prior.code_dim))}
    torch.testing.assert_close(model.mean_code_loss(x).total, model.loss(x, zero).total)
    assert not torch.allclose(model.loss(x, _noise(model, 3)).total, model.mean_code_loss(x).total)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_sequences_of_a_batch_do_not_interact(family, prior):
    model = _model(family, prior)
    x, noise = _frames(), _noise(model, 3)
    together = model.loss(x, noise).total.view(3, T)
    for i in range(3):
        alone = model.loss(x[i : i + 1], {k: v[i : i + 1] for k, v in noise.items()}).total
        torch.testing.assert_close(alone, together[i], rtol=1e-5, atol=1e-4)


# -- the KL: summed closed-form steps against the sequence KL ----------------------------------
@pytest.mark.parametrize("family", ["srnn", "rvae"])
def test_summed_step_kls_estimate_the_sequence_kl(family):
    """E_q[sum_t KL_t(z_<t)] = E_q[log q(z_1:T) - log p(z_1:T)]: both from the same 4,000 sampled
    chains, within 4 standard errors of their difference. SRNN's prior N(f_t, v_t) is read off
    its transition net by a hook; RVAE's is N(0, I)."""
    model = _model(family, "gaussian")
    with torch.no_grad():  # posteriors away from the prior: means and variances of every size
        model.prior.heads.linear.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    heads, trans = [], []
    model.prior.heads.register_forward_hook(lambda m, i, o: heads.append(o))
    if family == "srnn":
        model.transition.register_forward_hook(lambda m, i, o: trans.append(o))
    n = 4000
    with torch.no_grad():
        out = model.chain(_frames(1).expand(n, -1, -1), _noise(model, n))
    log_ratio = torch.zeros(n)
    for t in range(T):
        z, mu, logvar = out["z"][:, t], heads[t]["mu"], heads[t]["logvar"]
        f, logv = trans[t] if trans else (torch.zeros_like(z), torch.zeros_like(z))
        log_ratio += (_log_normal(z, mu, logvar) - _log_normal(z, f, logv)).sum(-1)
    summed = out["kl"].sum(-1)
    diff = (summed - log_ratio).double()
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(n) + 1e-4
    assert summed.mean() > 0.01
    if trans:  # the prior does move with z_{t-1}: not a fixed N(f, v) in disguise
        assert trans[1][0].std(0).mean() > 1e-3


# -- causality ---------------------------------------------------------------------------------
def test_srnn_deterministic_chain_sees_only_the_past():
    """h_t depends on x_{<t} only: perturbing x_t leaves h_{1..t} as they were and changes h_{t+1}."""
    model = _model("srnn", "gaussian")
    x = _frames(1)
    with torch.no_grad():
        h = model.chain(x, None)["h"][0]
        for t in range(T - 1):
            y = x.clone()
            y[0, t] *= 10.0
            h2 = model.chain(y, None)["h"][0]
            torch.testing.assert_close(h2[: t + 1], h[: t + 1], rtol=0, atol=1e-6)
            assert (h2[t + 1] - h[t + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("input_transform", ["log", "power"])
def test_srnn_first_input_is_silence(input_transform):
    """h_1 is the chain's output on a zero-power frame in either input mode."""
    model = _model("srnn", "gaussian", input_transform=input_transform)
    with torch.no_grad():
        h1 = model.chain(_frames(2), None)["h"][:, 0]
        silent = model.rnn_h(model.x_to_h(model.transform(torch.zeros(1, 1, 513))))[0, 0]
    torch.testing.assert_close(h1, silent.expand(2, -1))


def _decoder_jacobian(model) -> torch.Tensor:
    """|d sum_f y_t,f / d z_s| summed over z's dimensions: (t, s)."""
    z = torch.randn(T, 6, generator=torch.Generator().manual_seed(3))
    jac = torch.autograd.functional.jacobian(lambda v: model.decode(v).sum(-1), z)  # (T, T, m)
    return jac.abs().sum(-1)


def test_causal_rvae_decoder_ignores_the_future():
    j = _decoder_jacobian(_model("rvae", "gaussian"))
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    assert (j[future] == 0).all()  # structurally zero: no path from z_s to y_t for s > t
    assert (j[~future] > 1e-6).all()


def test_non_causal_rvae_decoder_sees_the_whole_sequence():
    j = _decoder_jacobian(_model("rvae-nc", "gaussian"))
    assert j[0, T - 1] > 1e-6 and (j > 1e-6).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_first_code_depends_on_the_last_frame(family):
    """Inference runs backward in time over x (all three): q(z_1 | .) sees x_T."""
    model = _model(family, "gaussian")
    x = _frames(1)
    y = x.clone()
    y[0, -1] *= 10.0
    with torch.no_grad():
        c1, c2 = model.chain(x, None)["code"], model.chain(y, None)["code"]
    assert (c1[0, 0] - c2[0, 0]).abs().max() > 1e-5


# -- the LSTM cell step ------------------------------------------------------------------------
@pytest.mark.parametrize("unrolled", [False, True], ids=["fused", "unrolled"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_lstm_cell_step_equals_the_whole_sequence(reverse, unrolled):
    """Stepping the cell through time (backwards for a reverse layer) gives the layer's outputs,
    and the same gradients."""
    torch.manual_seed(0)
    layer = LSTMLayer(5, 6, reverse=reverse, unrolled=unrolled)
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(3, T, 5, generator=g), torch.randn(3, T, 6, generator=g)
    y = layer(x)
    state, out = None, [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        state = layer.step(x[:, t], state)
        out[t] = state[0]
    stepped = torch.stack(out, 1)
    torch.testing.assert_close(stepped, y, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad((y * w).sum(), list(layer.parameters()))
    gb = torch.autograd.grad((stepped * w).sum(), list(layer.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    h, c = layer.step(x[0, 0])  # unbatched
    assert h.shape == c.shape == (6,)
    torch.testing.assert_close(h, layer.step(x[:1, 0])[0][0])


class _Step(torch.nn.Module):
    """A layer's cell step as a module's forward (what ``functional_call`` calls)."""

    def __init__(self, layer: LSTMLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.step(x)[0]


def test_lstm_cell_step_under_vmap_and_refused_when_bidirectional():
    """RVAE's stepped g^z LSTM must run in a stack too: the step under vmap over 3 members'
    stacked parameters equals each member's own step."""
    torch.manual_seed(0)
    members = [_Step(LSTMLayer(5, 6)) for _ in range(3)]
    params, _ = stack_module_state(members)
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    stepped = vmap(lambda p, xi: functional_call(members[0], p, (xi,)))(params, x)
    with torch.no_grad():
        for i, m in enumerate(members):
            torch.testing.assert_close(stepped[i], m(x[i]), atol=1e-6, rtol=1e-5)
    assert (stepped[0] - stepped[1]).abs().max() > 1e-3  # the members' own weights were used
    with pytest.raises(ValueError, match="bidirectional"):
        LSTMLayer(5, 6, bidirectional=True).step(x[0])


# -- labels, names, options --------------------------------------------------------------------
def test_labels_names_and_options():
    srnn, rvae, nc = (_model(f, "sdm").cfg for f in FAMILIES)
    labels = [build_model(c).family_label(c) for c in (srnn, rvae, nc)]
    assert labels == ["SRNN + SDM (DCT, k=9)", "RVAE + SDM (DCT, k=9)", "RVAE (non-causal) + SDM (DCT, k=9)"]
    assert default_run_name(nc, 0) == "rvae-m6-nc-sdm-dct-k9-T7-rnn-hidden12-s0"
    assert "nc" not in default_run_name(rvae, 0).split("-")
    assert foreign_options("srnn", ["non_causal", "prior"]) == ["non_causal"]
    assert foreign_options("dkf", ["non_causal"]) == ["non_causal"]
    assert foreign_options("rvae", ["non_causal", "prior", "rnn_hidden"]) == []


# -- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_synthetic_prepared(tmp_path_factory.mktemp("seq") / "p", 1500, 400, 200, utterances=True)


@pytest.mark.parametrize("extra", [["--model", "srnn"], ["--model", "rvae", "--non-causal"]], ids=["srnn", "rvae-nc"])
def test_cli_trains_a_tiny_run(prepared, tmp_path, extra, capsys):
    out = tmp_path / "run"
    argv = ["train", str(prepared), *extra, "--latent", "8", "--rnn-hidden", "16", "--seq-len", "10"]
    argv += ["--batch-size", "8", "--epochs", "2", "--compile", "off", "--device", "cpu", "--no-plot", "--out", str(out)]
    assert run(argv) == 0, capsys.readouterr().err
    assert (out / "best.pt").exists()
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 2 and all(math.isfinite(float(r["val_total"])) for r in rows)
    lm = load_model(out / "best.pt")
    assert lm.model_config.model == extra[1] and lm.model_config.non_causal == ("--non-causal" in extra)
    power, code = lm.model.reconstruct(_frames(1, 13)[0])
    assert power.shape == (13, 513) and code.shape == (13, 8) and torch.isfinite(power).all()


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("name, nc", [("dkf", False), ("rvae", False), ("rvae", True)], ids=["dkf", "rvae", "rvae-nc"])
def test_codes_decode_through_the_dynamics_back_to_the_resynthesis(name, nc, prior):
    """`resynth --from-codes` of a sequence model: the generative recursion z_t = f(z_{t-1}) +
    D a_t on the mean chain's own codes gives back its decoded power; an innovation edited at
    frame 3 changes frame 3 and leaves the frames before it alone where the decoder is causal."""
    torch.manual_seed(0)
    cfg = ModelConfig(model=name, latent=6, seq_len=T, rnn_hidden=12, prior=prior, k=9 if prior == "sdm" else 64, non_causal=nc)
    model = build_model(cfg).eval()
    x = _frames(1, 12)[0]
    power, code = model.reconstruct(x)
    with torch.no_grad():
        back = torch.exp(model.decode(model.codes_to_latent(code)))
        edited = code.clone()
        edited[3] += 1.0
        moved = torch.exp(model.decode(model.codes_to_latent(edited)))
    torch.testing.assert_close(back, power, rtol=1e-5, atol=1e-6 * float(power.max()))
    change = (moved - back).abs().amax(-1) / back.amax(-1)
    assert change[3] > 1e-3
    assert (change[:3].max() < 1e-6) == (not nc)  # the non-causal decoder carries it backwards too


def test_srnn_codes_are_refused_with_the_reason():
    model = _model("srnn", "sdm")
    code = model.reconstruct(_frames(1)[0])[1]
    with pytest.raises(SdmvaeError, match="h_t, an LSTM over the audio's own past frames"):
        model.codes_to_latent(code)


def _ss_model(prior: str = "gaussian"):
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="srnn", latent=6, seq_len=T, rnn_hidden=12, prior=prior, k=9 if prior == "sdm" else 64, ss_start=2, ss_end=6
    )
    return build_model(cfg)


def test_scheduled_sampling_picks_the_decoders_h_by_the_schedule():
    """--ss-start 2 --ss-end 6: before epoch 2 the decoder reads the teacher-forced h (the
    deterministic LSTM over x_{t-1}), from epoch 6 on, and outside training, the h stepped on
    its own predictions; at epoch 4 (p = 0.5) each step's coin decides."""
    model = _ss_model().train()
    x = _frames(2)
    h_inf = model.deterministic(model.transform(x))
    noise = _noise(model, 2)
    assert set(noise) == {"eps", "coin"} and noise["coin"].shape == (2, T, 1)
    model.set_epoch(0)
    h0 = model.chain(x, noise)["h"]
    torch.testing.assert_close(h0, h_inf)
    model.set_epoch(6)
    h1 = model.chain(x, noise)["h"]
    assert not torch.allclose(h1[:, 1:], h_inf[:, 1:])  # t = 0 reads silence either way
    torch.testing.assert_close(model.eval().chain(x, noise)["h"], h1)  # outside training: always its predictions
    model.train().set_epoch(4)
    h_half = model.chain(x, noise)["h"]
    pick = (noise["coin"] < 0.5).expand_as(h_half).clone()
    pick[:, 0] = False  # t = 0: both chains read silence
    assert pick.any() and (~pick[:, 1:]).any()
    torch.testing.assert_close(h_half[~pick], h_inf[~pick])  # the coin said teacher-forced
    assert not torch.allclose(h_half[pick], h_inf[pick])  # it said: its own predictions


def test_a_scheduled_sampling_srnn_is_an_enhancement_prior_and_others_refuse_the_options():
    model = _ss_model("sdm").eval()
    assert model.encoder_prefixes() == ("hx_to_g.", "rnn_g.", "g_to_z.", "prior.heads.")
    assert _model("srnn", "gaussian").encoder_prefixes() is None  # teacher-forced: no prior for a noisy file
    tuned = [n for n, _ in model.named_parameters() if n.startswith(model.encoder_prefixes())]
    assert tuned and not any(n.startswith(("rnn_h.", "x_to_h.", "decoder.", "transition.")) for n in tuned)
    assert model.family_label(model.cfg).startswith("SRNN (scheduled sampling 2-6) + SDM")
    assert foreign_options("dkf", ["ss_end"]) == ["ss_end"]
    with pytest.raises(SdmvaeError, match="--ss-start must be below --ss-end"):
        build_model(ModelConfig(model="srnn", latent=6, ss_start=5, ss_end=5))


def test_cli_trains_a_scheduled_sampling_srnn_and_enhances_with_it(prepared, tmp_path, capsys):
    """--ss-start 0 --ss-end 2: trains (the loss falls), and the run is an `enhance` prior, which
    a teacher-forced SRNN is not."""
    import numpy as np
    import soundfile as sf

    from sdmvae_cli.audio.synthetic import source_filter_speech

    out = tmp_path / "run"
    argv = ["train", str(prepared), "--model", "srnn", "--ss-start", "0", "--ss-end", "2", "--latent", "8", "--rnn-hidden"]
    argv += ["16", "--seq-len", "10", "--batch-size", "8", "--epochs", "3", "--compile", "off", "--device", "cpu", "--no-plot"]
    assert run([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert float(rows[-1]["train_total"]) < float(rows[0]["train_total"])
    assert load_model(out / "best.pt").model_config.ss_end == 2
    x = source_filter_speech(1.0, seed=3)
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.size)
    sf.write(str(tmp_path / "noisy.wav"), (0.5 * noisy / np.abs(noisy).max()).astype(np.float32), 16000)
    enh = ["enhance", str(tmp_path / "noisy.wav"), str(tmp_path / "e.wav"), "--iterations", "2", "--device", "cpu"]
    assert run([*enh, "-m", str(out / "best.pt")]) == 0, capsys.readouterr().err
    assert np.isfinite(sf.read(str(tmp_path / "e.wav"))[0]).all()


def test_no_epoch_before_the_schedule_ends_counts_against_the_patience():
    """Validation measures the model at p = 1, which training reaches at --ss-end: a worse
    validation figure before then keeps the best but does not use up the patience."""
    from types import SimpleNamespace

    from sdmvae_cli.training.early_stopping import record_validation

    cfg = ModelConfig(model="srnn", latent=6, ss_start=2, ss_end=6)
    m = SimpleNamespace(cfg=cfg, best_val=math.inf, best_epoch=-1, since_best=0)
    for epoch, val in enumerate([5.0, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 4.0, 4.5]):
        record_validation(m, epoch, val)
    assert (m.best_epoch, m.since_best) == (7, 1)  # epochs 1-5 never counted; 6 did, then 7 improved, 8 counts
    tf = SimpleNamespace(cfg=ModelConfig(model="srnn", latent=6), best_val=math.inf, best_epoch=-1, since_best=0)
    for epoch, val in enumerate([5.0, 6.0, 7.0]):
        record_validation(tf, epoch, val)
    assert tf.since_best == 2


def test_the_scheduled_chain_decodes_once_and_refuses_noise_without_its_coin():
    model = _ss_model().train()
    x = _frames(2)
    out = model.chain(x, _noise(model, 2))
    torch.testing.assert_close(out["y"], model.decode(out["dec"]))
    with pytest.raises(SdmvaeError, match="has no 'coin'"):
        model.chain(x, {"eps": torch.randn(2, T, 6)})
