"""Long files (issue 23, point 18): resynthesis in blocks of frames, and `resynth` of a file
streamed, give what the whole-file computation gives, in memory that does not grow with the
file's length."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from conftest import needs_shared

from sdmvae_cli.audio import stream as audio_mod
from sdmvae_cli.audio.io import FULL_SCALE, load_audio, write_within_full_scale
from sdmvae_cli.audio.stft import frame_blocks
from sdmvae_cli.audio.stream import scan_audio, stream_samples
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.inference.resynth import (
    _stream_file,
    load_for_resynth,
    model_power_fn,
    resynthesise_audio,
    resynthesise_file,
    resynthesise_from_codes,
)

WHOLE = 10**9  # block_frames: one block for any file, i.e. the whole-file STFT and inverse STFT


@pytest.fixture(scope="module")
def model():
    return load_for_resynth(None)  # the released default


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@needs_shared
def test_blocked_resynthesis_equals_the_whole_file(real_utterance, model):
    audio = load_audio(real_utterance, model.stft)
    fn = model_power_fn(model)
    whole = resynthesise_audio(audio, model.stft, fn, block_frames=WHOLE)
    assert len(frame_blocks(audio.samples.size, model.stft, 8)) > 20  # many blocks, each with context on both sides
    blocked = resynthesise_audio(audio, model.stft, fn, block_frames=8)
    assert blocked.samples_16k.shape == whole.samples_16k.shape and blocked.codes.shape == whole.codes.shape
    assert rel_err(blocked.samples_16k, whole.samples_16k) < 1e-5
    assert rel_err(blocked.output, whole.output) < 1e-5
    assert rel_err(blocked.codes, whole.codes) < 1e-5
    assert np.corrcoef(whole.samples_16k, audio.samples)[0, 1] > 0.9  # a real resynthesis, not two equal failures


def _stereo_44k(x: np.ndarray, path: Path, level: float) -> Path:
    """``x`` (16 kHz) as a 44.1 kHz two-channel float WAV peaking at ``level``: the streamed
    front-end has to mix down and resample, and past full scale the writer has to rescale."""
    y = librosa.resample(x, orig_sr=16000, target_sr=44100)
    st = np.stack([y, 0.5 * y], axis=1) * (level / np.abs(y).max())
    sf.write(str(path), st.astype(np.float32), 44100, subtype="FLOAT")
    return path


@needs_shared
def test_streamed_front_end_equals_load_audio(real_utterance, tmp_path, monkeypatch, model):
    monkeypatch.setattr(audio_mod, "STREAM_BLOCK", 10007)  # many reads, none aligned with anything
    x, _ = sf.read(str(real_utterance), dtype="float32")
    for src in (real_utterance, _stereo_44k(x, tmp_path / "st.wav", 0.8)):
        a = load_audio(src, model.stft, warn_stereo=False)
        info = scan_audio(src, model.stft, warn_stereo=False)
        streamed = np.concatenate(list(stream_samples(info, model.stft)))
        assert (info.gain, info.source_rate, info.source_length, info.n_samples) == (
            a.gain,
            a.source_rate,
            a.source_length,
            a.samples.size,
        )
        np.testing.assert_allclose(streamed, a.samples, rtol=0, atol=1e-6)


@needs_shared
@pytest.mark.parametrize("name,subtype,level", [("o.wav", None, 0.8), ("o.flac", "PCM_24", 1.0)])
def test_streamed_resynth_file_equals_the_whole_file(real_utterance, tmp_path, monkeypatch, model, name, subtype, level):
    monkeypatch.setattr(audio_mod, "STREAM_BLOCK", 10007)
    x, _ = sf.read(str(real_utterance), dtype="float32")
    src = _stereo_44k(
        np.clip(1.6 * x / np.abs(x).max(), -1, 1) if level == 1.0 else x, tmp_path / "in.wav", level
    )  # clipped: past full scale
    a = load_audio(src, model.stft, warn_stereo=False)
    whole = resynthesise_audio(a, model.stft, model_power_fn(model), block_frames=WHOLE)
    write_within_full_scale(tmp_path / f"ref_{name}", whole.output, a.source_rate, src, "resynthesis", subtype)
    resynthesise_file(src, tmp_path / name, model, save_codes=True, subtype=subtype, block_frames=24)
    ref, rate = sf.read(str(tmp_path / f"ref_{name}"))
    got, got_rate = sf.read(str(tmp_path / name))
    assert got_rate == rate == 44100 and got.shape == ref.shape == (a.source_length,)
    assert sf.info(str(tmp_path / name)).subtype == sf.info(str(tmp_path / f"ref_{name}")).subtype
    assert rel_err(got, ref) < 1e-5
    assert np.abs(got).max() <= FULL_SCALE + 1e-6
    codes = np.load(tmp_path / name.replace(Path(name).suffix, ".codes.npz"))["codes"]
    assert rel_err(codes, whole.codes) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.wav", f"ref_{name}", name, Path(name).stem + ".codes.npz"])


@needs_shared
def test_streamed_from_codes_equals_decode_of_the_whole_file(real_utterance, tmp_path, model):
    resynthesise_file(real_utterance, tmp_path / "o.wav", model, save_codes=True, block_frames=24)
    resynthesise_from_codes(tmp_path / "o.codes.npz", tmp_path / "back.wav")
    o, _ = sf.read(str(tmp_path / "o.wav"))
    back, _ = sf.read(str(tmp_path / "back.wav"))
    assert rel_err(back, o) < 1e-4  # decode(encode) is the resynthesis


@needs_shared
def test_a_failure_midway_leaves_no_output_and_no_temporary(real_utterance, tmp_path, model):
    calls = []

    def fails_on_the_third_block(power, frames):
        calls.append(frames)
        if len(calls) == 3:
            raise SdmvaeError("the model produced NaN/inf power (corrupt or incompatible checkpoint)")
        return power, None

    with pytest.raises(SdmvaeError, match="NaN/inf"):
        _stream_file(
            real_utterance, tmp_path / "o.wav", model.stft, fails_on_the_third_block, real_utterance, None, block_frames=16
        )
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


MEASURE = """
import resource, sys
from sdmvae_cli.cli.app import run
code = run(["resynth", sys.argv[1], sys.argv[2]])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(code, peak * (1 if sys.platform == "darwin" else 1024))
"""


def _peak_rss(src: Path, dst: Path) -> int:
    """Peak resident memory (bytes) of `sdmvae resynth src dst` in a fresh process."""
    r = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(dst)], capture_output=True, text=True)
    code, peak = r.stdout.split()[-2:]  # after the written path resynth prints
    assert code == "0", r.stderr
    return int(peak)


@needs_shared
def test_resynth_memory_does_not_grow_with_the_file(real_utterance, tmp_path):
    """The whole-file path needed ~110 MB per minute of audio: 5 minutes cost ~550 MB more than
    20 s. Streamed, the difference is the codes' and buffers' noise (measured: a few MB)."""
    x, rate = sf.read(str(real_utterance), dtype="float32")
    short = tmp_path / "short.flac"
    sf.write(str(short), np.tile(x, -(-20 * rate // x.size))[: 20 * rate], rate, subtype="PCM_16")
    long = tmp_path / "long.flac"
    sf.write(str(long), np.tile(x, -(-300 * rate // x.size))[: 300 * rate], rate, subtype="PCM_16")
    grew = _peak_rss(long, tmp_path / "long.wav") - _peak_rss(short, tmp_path / "short.wav")
    assert grew < 100 * 2**20, f"peak RSS grew by {grew / 2**20:.0f} MB from 20 s to 5 min"
    assert sf.info(str(tmp_path / "long.wav")).frames == 300 * rate


@needs_shared
def test_from_codes_refuses_codes_of_another_file_or_model_before_writing(real_utterance, tmp_path, model):
    resynthesise_file(real_utterance, tmp_path / "o.wav", model, save_codes=True)
    x, rate = sf.read(str(real_utterance), dtype="float32")
    sf.write(str(tmp_path / "other.wav"), x[: x.size // 2], rate)
    with pytest.raises(SdmvaeError, match="frames but the source audio has .*: not its codes"):
        resynthesise_from_codes(tmp_path / "o.codes.npz", tmp_path / "a.wav", source=tmp_path / "other.wav")
    d = dict(np.load(tmp_path / "o.codes.npz"))
    np.savez(tmp_path / "wide.codes.npz", **{**d, "codes": np.concatenate([d["codes"], d["codes"]], axis=1)})
    with pytest.raises(SdmvaeError, match="dimensions but the model's code has"):
        resynthesise_from_codes(tmp_path / "wide.codes.npz", tmp_path / "b.wav")
    np.savez(tmp_path / "empty.codes.npz", **{**d, "codes": d["codes"][:0]})  # every frame edited away
    with pytest.raises(SdmvaeError, match="at least one frame"):
        resynthesise_from_codes(tmp_path / "empty.codes.npz", tmp_path / "c.wav")
    assert not any((tmp_path / f).exists() for f in ("a.wav", "b.wav", "c.wav")) and not list(tmp_path.glob(".*"))
    np.savez(tmp_path / "text.codes.npz", **{**d, "codes": d["codes"].astype(str)})  # edited into strings
    with pytest.raises(SdmvaeError, match="must be real numbers"):
        resynthesise_from_codes(tmp_path / "text.codes.npz", tmp_path / "d.wav")
    src = tmp_path / "source.wav"  # the recorded phase source is an input: never overwritten
    src.write_bytes(open(str(d["source"]), "rb").read())
    np.savez(tmp_path / "mine.codes.npz", **{**d, "source": str(src)})
    with pytest.raises(SdmvaeError, match="is an input"):
        resynthesise_from_codes(tmp_path / "mine.codes.npz", src, overwrite=True)
    assert src.read_bytes() == open(str(d["source"]), "rb").read()
    np.savez(tmp_path / "gone.codes.npz", **{**d, "checkpoint": str(tmp_path / "gone.pt")})  # its model moved away
    with pytest.raises(SdmvaeError, match="which is not here: give the model with -m"):
        resynthesise_from_codes(tmp_path / "gone.codes.npz", tmp_path / "e.wav")
