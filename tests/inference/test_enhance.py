"""`sdmvae enhance`: the NMF updates, the EM on known mixtures, every model family, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import needs_shared, write_wav

from sdmvae_cli.audio.io import Audio, load_audio
from sdmvae_cli.audio.stft import StftConfig, stft
from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.evaluation.metrics import si_sdr
from sdmvae_cli.inference.enhance import EnhanceOptions, enhance_audio, enhance_power
from sdmvae_cli.inference.nmf import NoiseNMF, fit_is_nmf, init_nmf, is_objective, update_gain, update_H, update_W
from sdmvae_cli.nets import ModelConfig, build_model
from sdmvae_cli.nets.checkpoint import load_model
from sdmvae_cli.nets.released import released_dir

CLI = [sys.executable, "-m", "sdmvae_cli"]
CFG = StftConfig()
RELEASED = ["vae-m64", "sdm-identity-m64", "sdm-dct-k64-m64", "vsc-a0.5-m64"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The EM is many small tensor operations: on a shared 2-core machine a second torch thread
    only adds synchronisation (measured 80x slower NMF under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noisy_audio(clean: np.ndarray, snr_db: float, seed: int = 0) -> tuple[Audio, np.ndarray]:
    noise = np.random.default_rng(seed).standard_normal(clean.size)
    mix = clean + noise * np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    peak = float(np.abs(mix).max())
    return Audio((mix / peak).astype(np.float32), peak, 16000, 1, mix.size), mix


def test_nmf_updates_never_increase_the_is_cost():
    g = torch.Generator().manual_seed(0)
    frames, bins, samples = 40, 33, 3
    power = torch.rand(frames, bins, generator=g, dtype=torch.float64) ** 3 * 10  # spiky, like |STFT|^2
    speech = torch.rand(samples, frames, bins, generator=g, dtype=torch.float64)
    gain = torch.rand(frames, generator=g, dtype=torch.float64) + 0.1
    nmf = init_nmf(power, 4, g)
    cost = float(is_objective(power, speech, gain, nmf))
    start = cost
    for _ in range(30):
        for update in (update_H, update_W, update_gain):
            update(power, speech, gain, nmf)
            new = float(is_objective(power, speech, gain, nmf))
            assert new <= cost + 1e-9 * abs(cost), f"{update.__name__} increased the cost {cost} -> {new}"
            cost = new
    assert cost < start - 1.0  # and they do descend
    assert (nmf.W > 0).all() and (nmf.H > 0).all() and (gain > 0).all()


def test_is_nmf_fits_a_low_rank_power():
    g = torch.Generator().manual_seed(1)
    truth = NoiseNMF(
        torch.rand(3, 20, generator=g, dtype=torch.float64) + 0.1, torch.rand(60, 3, generator=g, dtype=torch.float64) + 0.1
    )
    power = truth.variance
    fit = fit_is_nmf(power, 3, 300, g)
    rel = ((fit.variance - power).abs() / power).mean()
    assert rel < 0.05


def test_enhancement_raises_si_sdr_on_a_known_mixture():
    clean = source_filter_speech(2.0, seed=3).astype(np.float64)
    audio, mix = noisy_audio(clean, 0.0)
    lm = load_model(released_dir() / "sdm-identity-m64.pt")
    res = enhance_audio(audio, lm, EnhanceOptions(iterations=15))
    before, after = si_sdr(clean, mix), si_sdr(clean, res.output)
    assert after > before + 5.0, (before, after)
    assert res.output.shape == mix.shape
    assert res.objective[-1] < res.objective[0]
    # same seed, same result; the residual is what was removed
    again = enhance_audio(audio, lm, EnhanceOptions(iterations=15))
    np.testing.assert_array_equal(res.output, again.output)
    np.testing.assert_allclose(res.samples_16k + res.noise_16k, audio.samples, atol=1e-6)


@needs_shared
@pytest.mark.parametrize("name,method", [(n, "vem") for n in RELEASED] + [("sdm-identity-m64", "mcem"), ("vsc-a0.5-m64", "mcem")])
def test_every_released_prior_enhances_real_speech(real_utterance, name, method):
    clean = load_audio(real_utterance, CFG).samples[: 3 * 16000].astype(np.float64)
    audio, mix = noisy_audio(clean, 0.0, seed=1)
    lm = load_model(released_dir() / f"{name}.pt")
    res = enhance_audio(audio, lm, EnhanceOptions(method=method, iterations=10))
    # every prior must help; how much (VSC least on white noise) is measured in the benchmark
    assert si_sdr(clean, res.output) > si_sdr(clean, mix) + 1.0


@pytest.mark.parametrize("kind", ["laplace", "cauchy", "threshold", "sdm-learned"])
def test_every_family_runs_through_the_common_interface(kind):
    """Untrained networks of the families without a released checkpoint: finite output, and
    MCEM either works (explicit prior) or says it has none."""
    torch.manual_seed(0)
    cfg = (
        ModelConfig(model="sdm", dictionary="learned", k=12, latent=8, hidden=[16])
        if kind == "sdm-learned"
        else ModelConfig(model=kind, latent=8, hidden=[16])
    )
    model = build_model(cfg).eval()
    spec = stft(torch.from_numpy(source_filter_speech(0.5, seed=1)), CFG)
    est, hist = enhance_power(model, spec, EnhanceOptions(iterations=3))
    assert est.shape == spec.shape and torch.isfinite(est).all() and len(hist) == 3
    assert (est.abs() <= spec.abs() + 1e-6).all()  # a Wiener filter only attenuates
    if kind == "threshold":
        with pytest.raises(SdmvaeError, match="mcem"):
            enhance_power(model, spec, EnhanceOptions(method="mcem", iterations=2))
    else:
        est, _ = enhance_power(model, spec, EnhanceOptions(method="mcem", iterations=2, mh_steps=2, keep=1))
        assert torch.isfinite(est).all()


def test_cli_round_trip_keeps_rate_and_length(tmp_path):
    x = source_filter_speech(1.2, rate=22050, seed=2)
    x = 0.3 * x + 0.02 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    src = write_wav(tmp_path / "in" / "a.wav", np.stack([x, x], axis=1), 22050)
    write_wav(tmp_path / "in" / "sub" / "b.flac", x, 22050)
    r = subprocess.run(
        [*CLI, "enhance", str(src), str(tmp_path / "out.wav"), "-n", "3", "-m", "vae-m64"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "out.wav")
    y, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == 22050 and y.shape == (x.size,)
    assert np.isfinite(y).all() and 0 < np.abs(y).max() <= 0.4
    # a folder is mirrored, one written path per line
    r = subprocess.run(
        [*CLI, "enhance", str(tmp_path / "in"), str(tmp_path / "dir"), "-n", "2", "--method", "mcem", "--mh-steps", "2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted([str(tmp_path / "dir" / "a.wav"), str(tmp_path / "dir" / "sub" / "b.wav")])
    assert sf.info(str(tmp_path / "dir" / "sub" / "b.wav")).frames == x.size
    # a trailing / means a folder, also for one file (the one CLI grammar)
    r = subprocess.run(
        [*CLI, "enhance", str(src), str(tmp_path / "one.wav") + "/", "-n", "2", "-q"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "one.wav" / "a.wav") and (tmp_path / "one.wav" / "a.wav").is_file()


def test_cli_bad_inputs_are_one_line_errors(tmp_path):
    src = write_wav(tmp_path / "a.wav", source_filter_speech(0.6, seed=1))
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    done = write_wav(tmp_path / "done.wav", np.zeros(100, dtype=np.float32))
    before = done.read_bytes()
    cases = [
        ([str(tmp_path / "missing.wav"), str(tmp_path / "o1.wav")], 1, "no such file"),
        ([str(tmp_path / "bad.wav"), str(tmp_path / "o2.wav")], 1, "cannot read audio"),
        ([str(src), str(tmp_path / "o3.wav"), "--iterations", "0"], 2, "'--iterations'"),
        ([str(src), str(tmp_path / "o4.wav"), "--method", "gibbs"], 2, "'--method'"),
        ([str(src), str(tmp_path / "o5.wav"), "--model", "no-such-model"], 1, "no such checkpoint or released model"),
        ([str(src), str(done)], 1, "already exist"),
        ([str(src), str(src), "--overwrite"], 1, "is an input"),
    ]
    for args, code, msg in cases:
        r = subprocess.run([*CLI, "enhance", *args], capture_output=True, text=True)
        assert r.returncode == code, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
        assert r.stdout == ""
    assert done.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "bad.wav", "done.wav"]


def test_cli_ranges_are_the_library_ranges():
    """The option signatures (parse time, exit 2) and EnhanceOptions.validate (Python callers)
    hold the same numbers: one set of ranges, written twice only to keep torch out of --help.
    Every numeric option has a range."""
    import inspect
    import typing

    from sdmvae_cli.cli.enhance import enhance
    from sdmvae_cli.inference.enhance import LIMITS, LR_MAX

    hints = typing.get_type_hints(enhance)
    numeric = {n: p.default for n, p in inspect.signature(enhance).parameters.items() if hints[n] in (int, float)}
    assert set(numeric) == {"iterations", "nmf_rank", "steps", "lr", "chains", "mh_steps", "seed"}
    for name, opt in numeric.items():
        if name == "lr":
            assert opt.max == LR_MAX and opt.callback is not None  # (0, LR_MAX]: > 0 by the callback
        else:
            assert (opt.min, opt.max) == LIMITS[name], name


def test_enhance_without_model_uses_the_enhancement_default(tmp_path, capsys):
    """`enhance` without --model is the enhancement default (chosen on validation mixtures), not
    the resynthesis default: same output as -m <enhance_default>, another than -m <default>."""
    import json

    from sdmvae_cli.cli.app import run
    from sdmvae_cli.inference.enhance import resolve_prior
    from sdmvae_cli.nets.released import default_model_path

    index = json.loads((released_dir() / "default.json").read_text())
    assert resolve_prior(None) == released_dir() / index["enhance_default"]
    assert index["enhance_default"] != index["default"]  # chosen for enhancement, apart (models/README.md)
    x = 0.3 * source_filter_speech(0.6, seed=4) + 0.03 * np.random.default_rng(1).standard_normal(9600).astype(np.float32)
    src = write_wav(tmp_path / "a.wav", x)
    outs = {}
    for label, extra in (("none", []), ("enh", ["-m", index["enhance_default"]]), ("resynth", ["-m", str(default_model_path())])):
        outs[label] = tmp_path / f"{label}.wav"
        assert run(["enhance", str(src), str(outs[label]), "-n", "3", "--device", "cpu", *extra]) == 0, capsys.readouterr().err
    y = {k: sf.read(str(v))[0] for k, v in outs.items()}
    np.testing.assert_array_equal(y["none"], y["enh"])
    assert np.abs(y["none"] - y["resynth"]).max() > 1e-3
