import math

import numpy as np
import pytest
import torch

from sdmvae_cli.audio.stft import StftConfig, istft, make_window, power_spectrogram, stft

CFG = StftConfig()


def test_config_is_the_papers():
    assert (CFG.sample_rate, CFG.win_length, CFG.hop_length, CFG.n_fft, CFG.n_bins) == (16000, 1024, 256, 1024, 513)
    assert CFG.win_length / CFG.sample_rate == pytest.approx(0.064)
    assert StftConfig.from_dict(CFG.to_dict()) == CFG


def test_sine_window_formula_and_wola_constant():
    w = make_window("sine", 1024).double().numpy()
    n = np.arange(1024)
    np.testing.assert_allclose(w, np.sin(np.pi * (n + 0.5) / 1024), atol=1e-7)
    # squared windows at hop 256 sum to a constant: the condition for exact inversion
    acc = np.zeros(256)
    for k in range(4):
        acc += w[k * 256 : (k + 1) * 256] ** 2
    np.testing.assert_allclose(acc, 2.0, atol=1e-6)


@pytest.mark.parametrize("length", [513, 1000, 16000, 16000 * 3 + 77])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_exact(length, dtype):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, generator=g, dtype=dtype)
    y = istft(stft(x, CFG), CFG, length=length)
    assert y.shape == x.shape
    rel = (y - x).norm() / x.norm()
    assert rel < 1e-5


def test_batched_equals_single():
    x = torch.randn(2, 5000)
    both = stft(x, CFG)
    np.testing.assert_allclose(both[1].numpy(), stft(x[1], CFG).numpy(), rtol=1e-5, atol=1e-5)
    assert both.shape == (2, CFG.n_frames(5000), 513)


def test_power_matches_independent_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(7777).astype(np.float64)
    pad = np.pad(x, CFG.n_fft // 2, mode="reflect")
    n_frames = 1 + len(x) // CFG.hop_length
    idx = np.arange(CFG.n_fft)[None, :] + CFG.hop_length * np.arange(n_frames)[:, None]
    w = np.sin(np.pi * (np.arange(1024) + 0.5) / 1024)
    ref = np.abs(np.fft.rfft(pad[idx] * w, n=CFG.n_fft, axis=1)) ** 2
    got = power_spectrogram(torch.from_numpy(x), CFG).numpy()
    assert got.shape == ref.shape == (n_frames, 513)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * ref.max())


def test_full_scale_tone_exceeds_float16():
    """Why frames are float32: a full-scale tone's power is above float16's max (65504)."""
    t = torch.arange(16000) / 16000
    p = power_spectrogram(torch.sin(2 * math.pi * 1000 * t), CFG)
    assert p.max() > 65504


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        StftConfig(window="hann"),
        StftConfig(pad_mode="constant"),
        StftConfig(pad_mode="replicate"),
        StftConfig(pad_mode="circular"),
        StftConfig(n_fft=512, win_length=400, hop_length=160),
    ],
    ids=["paper", "hann", "constant", "replicate", "circular", "400-160-512"],
)
@pytest.mark.parametrize("length", [16000 * 3, 16000 * 3 + 77])
def test_blocks_of_frames_equal_the_whole_signal(cfg, length):
    """Issue 23 (18): STFT -> any change of each frame -> inverse STFT, block by block with
    context frames, equals the whole signal's, including the padded edges."""
    from sdmvae_cli.audio.stft import block_istft, block_stft, frame_blocks

    rng = np.random.default_rng(length)
    x = rng.standard_normal(length).astype(np.float32)
    gains = torch.from_numpy(rng.uniform(0.2, 2.0, (cfg.n_frames(length), cfg.n_bins)).astype(np.float32))  # frames differ
    whole = istft(stft(torch.from_numpy(x), cfg) * gains, cfg, length=length).numpy()
    blocks = frame_blocks(length, cfg, 7)
    assert len(blocks) > 20 and [b.out_start for b in blocks[1:]] == [b.out_stop for b in blocks[:-1]]
    rows, out = [], []
    for b in blocks:
        spec = block_stft(lambda lo, hi: x[lo:hi], b, length, cfg)
        rows.append(spec[b.core_first - b.first : b.core_stop - b.first])
        out.append(block_istft(spec * gains[b.first : b.stop], b, cfg).numpy())
    np.testing.assert_allclose(torch.cat(rows).numpy(), stft(torch.from_numpy(x), cfg).numpy(), rtol=0, atol=1e-4)
    y = np.concatenate(out)
    assert y.shape == whole.shape and np.abs(y - whole).max() <= 1e-6 * np.abs(whole).max()


def test_one_block_is_the_plain_stft():
    from sdmvae_cli.audio.stft import frame_blocks

    (b,) = frame_blocks(16000, CFG)
    assert b.whole and (b.first, b.stop, b.out_start, b.out_stop) == (0, CFG.n_frames(16000), 0, 16000)
    (b,) = frame_blocks(160000, StftConfig(center=False), 7)  # no padding: no block boundaries to hide
    assert b.whole
