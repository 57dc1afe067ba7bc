import logging

import numpy as np
import pytest
import soundfile as sf
from conftest import write_wav

from sdmvae_cli.audio.io import load_audio, restore, write_audio
from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.atomic import atomic_path
from sdmvae_cli.core.errors import AudioError

CFG = StftConfig()


def test_peak_normalised_and_gain_remembered(tmp_path):
    x = 0.3 * source_filter_speech(1.0)
    a = load_audio(write_wav(tmp_path / "a.wav", x), CFG)
    assert np.max(np.abs(a.samples)) == pytest.approx(1.0)
    np.testing.assert_allclose(a.samples * a.gain, x, atol=1e-6)
    np.testing.assert_allclose(restore(a.samples, a, CFG), x, atol=1e-6)


def test_stereo_is_mixed_down_with_warning(tmp_path, caplog):
    x = source_filter_speech(1.0)
    st = np.stack([x, 0.5 * x], axis=1)
    with caplog.at_level(logging.WARNING, logger="sdmvae"):
        a = load_audio(write_wav(tmp_path / "s.wav", st), CFG)
    assert "mixed down" in caplog.text
    assert a.source_channels == 2 and a.samples.ndim == 1


def test_other_rate_resampled_and_restored(tmp_path):
    x = source_filter_speech(1.0, rate=8000)
    a = load_audio(write_wav(tmp_path / "r.wav", x, 8000), CFG)
    assert a.source_rate == 8000 and abs(a.samples.size - 16000) <= 2
    back = restore(a.samples, a, CFG)
    assert back.size == x.size
    assert np.corrcoef(back, x)[0, 1] > 0.99


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"RIFF....not audio at all"), "cannot read audio"),
        (lambda p: sf.write(str(p), np.zeros(0, dtype=np.float32), 16000), "empty audio"),
        (lambda p: sf.write(str(p), np.zeros(16000, dtype=np.float32), 16000), "silent"),
        (lambda p: sf.write(str(p), 0.5 * np.ones(300, dtype=np.float32), 16000), "too short"),
        (lambda p: sf.write(str(p), np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT"), "NaN"),
    ],
)
def test_bad_audio_one_line_errors(tmp_path, make, needle):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(AudioError) as e:
        load_audio(p, CFG)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_shortest_length_is_stated_in_samples(tmp_path):
    """One sample below the STFT's minimum is refused, naming both counts (in seconds they would
    print alike); the minimum itself loads."""
    need = CFG.n_fft // 2 + 1
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, need).astype(np.float32)
    sf.write(str(tmp_path / "short.wav"), noise[:-1], CFG.sample_rate)
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "short.wav", CFG)
    assert f"({need - 1} samples" in str(e.value) and f"need at least {need} " in str(e.value)
    sf.write(str(tmp_path / "ok.wav"), noise, CFG.sample_rate)
    assert load_audio(tmp_path / "ok.wav", CFG).samples.size == need


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.wav"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_write_audio_round_trip(tmp_path):
    x = source_filter_speech(0.5)
    write_audio(tmp_path / "o.wav", x, 16000)
    y, r = sf.read(str(tmp_path / "o.wav"), dtype="float32")
    assert r == 16000
    np.testing.assert_array_equal(x, y)
    assert [p.name for p in tmp_path.iterdir()] == ["o.wav"]
