"""Sequences of T frames inside one utterance: tiles, random phases, the index of a prepared
split (made by the real `sdmvae prepare` on synthetic audio) and the batch gather."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_wav

from sdmvae_cli.audio.synthetic import source_filter_speech
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.sequences import gather_sequences, random_phase_starts, sequence_index, tile_starts

T = 50
#: the train utterances of the prepared folder, in frames: shorter than T, exactly T, T + 1, 2T, 2T + 32
TRAIN_FRAMES = [13, 50, 51, 100, 132]
SHORT = 32  # the one utterance of validation and of test


def reference_starts(offsets, lengths, seq_len) -> list[int]:
    """The plain per-utterance loop the vectorised tiles must equal."""
    return [o + j * seq_len for o, n in zip(offsets, lengths) for j in range(n // seq_len)]


def utterance_of_frame(offsets: torch.Tensor, lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    """For each frame of a split, its utterance (-1 for frames no utterance covers)."""
    owner = torch.full((n_frames,), -1, dtype=torch.int64)
    for u, (o, n) in enumerate(zip(offsets.tolist(), lengths.tolist())):
        owner[o : o + n] = u
    return owner


def random_split(rng: np.random.Generator, n_utts: int, seq_len: int, gaps: bool = False):
    """Utterance lengths covering the edges (1, T - 1, T, T + 1, 2T) and random ones (from 1 to
    4T), end to end as prepare writes them, or with gaps between them."""
    edges = [1, max(seq_len - 1, 1), seq_len, seq_len + 1, 2 * seq_len]
    lengths = np.concatenate([edges, rng.integers(1, 4 * seq_len + 1, n_utts - len(edges))])
    rng.shuffle(lengths)
    spaces = rng.integers(0, 7, len(lengths)) if gaps else np.zeros(len(lengths), dtype=np.int64)
    offsets = np.cumsum(spaces + lengths) - lengths
    return torch.from_numpy(offsets).long(), torch.from_numpy(lengths).long()


@pytest.mark.parametrize("seq_len", [1, 3, T])
@pytest.mark.parametrize("gaps", [False, True])
def test_tiles_equal_the_per_utterance_loop_and_never_cross_an_utterance(seq_len, gaps):
    offsets, lengths = random_split(np.random.default_rng(seq_len), 300, seq_len, gaps)
    starts = tile_starts(offsets, lengths, seq_len)
    assert starts.dtype == torch.int64
    assert starts.tolist() == reference_starts(offsets.tolist(), lengths.tolist(), seq_len)
    owner = utterance_of_frame(offsets, lengths, int((offsets + lengths).max()))
    first, last = owner[starts], owner[starts + seq_len - 1]
    assert (first >= 0).all() and torch.equal(first, last)  # every sequence inside one utterance
    assert (torch.diff(starts) >= seq_len).all()  # disjoint, in manifest order
    per_utt = torch.bincount(first, minlength=len(lengths))
    assert torch.equal(per_utt, lengths // seq_len)  # floor(n / T) each; shorter ones give none


def test_tiles_at_the_edges_of_the_length():
    offsets, lengths = torch.tensor([0, 1, 50, 100, 149]), torch.tensor([1, 49, 50, 49, 101])
    assert tile_starts(offsets, lengths, T).tolist() == [50, 149, 199]
    assert tile_starts(offsets[:2], lengths[:2], T).numel() == 0
    assert tile_starts(offsets, lengths, 1).numel() == int(lengths.sum())


def phases_of(offsets, lengths, seq_len, starts) -> torch.Tensor:
    """Each tile's shift from its fixed place (random phases: the same for all of an utterance's tiles)."""
    return starts - tile_starts(offsets, lengths, seq_len)


def test_random_phases_keep_tiles_disjoint_inside_their_utterance_and_reproducible():
    offsets, lengths = random_split(np.random.default_rng(7), 2000, T)
    counts = lengths // T
    utt = torch.repeat_interleave(torch.arange(len(lengths)), counts)
    slack = (lengths - counts * T)[utt]
    starts = random_phase_starts(offsets, lengths, T, torch.Generator().manual_seed(1))
    assert starts.numel() == int(counts.sum())
    owner = utterance_of_frame(offsets, lengths, int((offsets + lengths).max()))
    assert torch.equal(owner[starts], utt) and torch.equal(owner[starts + T - 1], utt)
    phase = phases_of(offsets, lengths, T, starts)
    assert (phase >= 0).all() and (phase <= slack).all()
    same_utt = utt[1:] == utt[:-1]
    assert (torch.diff(starts)[same_utt] == T).all()  # one phase per utterance: still disjoint
    # uniform over {0..slack}: both ends are drawn, and the mean fraction is near 1/2
    first_tile = torch.cat([torch.tensor([True]), ~same_utt])
    frac = phase[first_tile].double() / slack[first_tile].double()
    frac = frac[slack[first_tile] > 0]
    assert (phase[first_tile] == 0).any() and (phase[first_tile] == slack[first_tile]).any()
    assert abs(float(frac.mean()) - 0.5) < 0.05
    again = random_phase_starts(offsets, lengths, T, torch.Generator().manual_seed(1))
    other = random_phase_starts(offsets, lengths, T, torch.Generator().manual_seed(2))
    assert torch.equal(again, starts)
    assert (other != starts).float().mean() > 0.5


def test_random_phases_show_every_frame_of_an_utterance_across_epochs():
    """Fixed tiles never see an utterance's remainder; a new phase each epoch sees all of it."""
    offsets, lengths = torch.tensor([0, 130]), torch.tensor([130, 49])
    fixed = tile_starts(offsets, lengths, T)
    assert set((fixed[:, None] + torch.arange(T)).flatten().tolist()) == set(range(100))
    g = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    for _ in range(200):
        starts = random_phase_starts(offsets, lengths, T, g)
        assert starts.numel() == 2
        seen |= set((starts[:, None] + torch.arange(T)).flatten().tolist())
    assert seen == set(range(130))  # the whole first utterance, nothing of the short second one


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "50"])
def test_a_sequence_length_that_is_not_a_positive_count_is_refused(bad):
    with pytest.raises(SdmvaeError, match="--seq-len"):
        tile_starts(torch.tensor([0]), torch.tensor([100]), bad)


def test_gather_is_the_frames_at_the_windows():
    frames = torch.randn(40, 7)
    windows = torch.randint(0, 40, (2, 3, 5))
    got = gather_sequences(frames, windows)
    assert got.shape == (2, 3, 5, 7)
    assert torch.equal(got, frames[windows])
    assert torch.equal(gather_sequences(frames, windows[0, 0]), frames[windows[0, 0]])


# -- a prepared folder made by the real CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """`sdmvae prepare` (no trimming) of synthetic audio whose frame counts are known: an
    utterance of n frames has (n - 1) * hop + hop / 2 samples (mid-bin: rounding-proof)."""
    from sdmvae_cli.cli.app import run

    root = tmp_path_factory.mktemp("seqcorpus")
    for u, n in enumerate(TRAIN_FRAMES):
        write_wav(root / "c" / "s0" / f"u{u}.wav", source_filter_speech(((n - 1) * 256 + 128) / 16000, seed=u))
    for s in (1, 2):
        write_wav(root / "c" / f"s{s}" / "u.wav", source_filter_speech(((SHORT - 1) * 256 + 128) / 16000, seed=10 + s))
    args = ["prepare", "folder", root / "c", root / "p", "--val-speakers", "s1", "--test-speakers", "s2", "--no-trim"]
    assert run([str(a) for a in args]) == 0
    return root / "p"


def test_the_index_of_a_prepared_split_gathers_what_slicing_frames_npy_gives(prepared):
    frames_np = np.load(prepared / "train" / "frames.npy")
    idx = sequence_index(prepared, "train", T, n_frames_total=len(frames_np))
    rows = [json.loads(line) for line in (prepared / "train" / "manifest.jsonl").read_text().splitlines()]
    assert idx.lengths.tolist() == [r["n_frames"] for r in rows] and sorted(idx.lengths.tolist()) == TRAIN_FRAMES
    assert idx.offsets.tolist() == [r["frame_offset"] for r in rows]
    assert idx.starts.tolist() == reference_starts(idx.offsets.tolist(), idx.lengths.tolist(), T)
    assert idx.n_sequences == sum(n // T for n in TRAIN_FRAMES) == 6 and idx.dropped == 1
    frames = torch.from_numpy(frames_np)
    ids = torch.tensor([[5, 0, 3], [1, 1, 4]])
    windows = idx.windows(ids)
    assert windows.shape == (2, 3, T)
    got = gather_sequences(frames, windows).numpy()
    for i, k in np.ndindex(ids.shape):
        s = int(idx.starts[ids[i, k]])
        np.testing.assert_array_equal(got[i, k], frames_np[s : s + T])
    moved = idx.rephased(torch.Generator().manual_seed(3))
    assert moved.n_sequences == idx.n_sequences and torch.equal(moved.offsets, idx.offsets)
    every = gather_sequences(frames, moved.windows(torch.arange(moved.n_sequences)))
    for k, s in enumerate(moved.starts.tolist()):
        np.testing.assert_array_equal(every[k].numpy(), frames_np[s : s + T])
        u = int(np.searchsorted(idx.offsets.numpy(), s, side="right")) - 1
        assert s + T <= int(idx.offsets[u] + idx.lengths[u])  # inside its utterance


def test_a_split_with_no_sequence_is_refused_in_one_line(prepared):
    with pytest.raises(SdmvaeError) as err:
        sequence_index(prepared, "validation", T)
    msg = str(err.value)
    assert "\n" not in msg and "'validation'" in msg and f"has {SHORT} frames" in msg and f"of {T} frames" in msg
    assert "smaller --seq-len" in msg
    assert sequence_index(prepared, "validation", SHORT).n_sequences == 1  # the same split, shorter sequences


def test_a_manifest_past_the_frames_or_with_bad_counts_is_refused(prepared, tmp_path):
    total = len(np.load(prepared / "train" / "frames.npy", mmap_mode="r"))
    with pytest.raises(SdmvaeError, match=rf"s0/u4 spans frames \d+\.\.{total - 1} but frames.npy has {total - 1}"):
        sequence_index(prepared, "train", T, n_frames_total=total - 1)
    (tmp_path / "train").mkdir()
    manifest = tmp_path / "train" / "manifest.jsonl"
    manifest.write_text("")
    with pytest.raises(SdmvaeError, match="no utterances listed"):
        sequence_index(tmp_path, "train", T)
    row = {"id": "a", "path": "a.wav", "frame_offset": 0, "n_frames": 60.5}
    manifest.write_text(json.dumps(row) + "\n")
    with pytest.raises(SdmvaeError, match="n_frames is not a whole number"):
        sequence_index(tmp_path, "train", T)
    manifest.write_text(json.dumps(row | {"n_frames": 60, "frame_offset": -1}) + "\n")
    with pytest.raises(SdmvaeError, match="frame_offset -1 < 0"):
        sequence_index(tmp_path, "train", T)
    manifest.write_text(json.dumps(row | {"n_frames": True}) + "\n")  # bool is an int in Python: refused anyway
    with pytest.raises(SdmvaeError, match="n_frames is not a whole number"):
        sequence_index(tmp_path, "train", T)
    rows = [row | {"id": "a", "n_frames": 60}, row | {"id": "b", "frame_offset": 59, "n_frames": 60}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SdmvaeError, match="utterances a and b overlap"):
        sequence_index(tmp_path, "train", T)
    rows[1]["frame_offset"] = 60  # end to end: fine
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sequence_index(tmp_path, "train", T).n_sequences == 2 * (60 // T)
