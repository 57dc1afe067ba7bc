"""Training frames: the memory map used in place on a CPU, streamed chunks beyond the budget."""

import numpy as np
import torch

from sdmvae_cli.data.frames import FrameSource, open_frames

CPU = torch.device("cpu")


def test_cpu_resident_frames_are_the_memory_map_and_never_written_back(synthetic_prepared):
    frames = open_frames(synthetic_prepared, "train")
    on_disk = np.array(np.load(synthetic_prepared / "train" / "frames.npy"))
    src = FrameSource.create(frames, CPU, frames.nbytes)
    assert src.resident and np.shares_memory(src.buffer.numpy(), frames)  # no private copy
    assert torch.equal(src.buffer, torch.from_numpy(on_disk))
    src.buffer[0] = -1.0  # copy-on-write: the prepared file is an input, never changed
    assert np.array_equal(np.load(synthetic_prepared / "train" / "frames.npy")[0], on_disk[0])


def test_a_split_over_the_budget_streams_every_frame_once_per_epoch(synthetic_prepared):
    frames = open_frames(synthetic_prepared, "validation")
    src = FrameSource.create(frames, CPU, frames.nbytes // 3, min_rows=64)
    assert not src.resident and not np.shares_memory(src.buffer.numpy(), frames)
    seen = []
    for rows in src.chunks(torch.Generator().manual_seed(0)):
        seen.append(src.buffer[:rows].clone())
    got = torch.cat(seen)
    assert got.shape == frames.shape
    order = torch.argsort(got[:, 0] * 1e3 + got[:, 1])
    want = torch.from_numpy(np.array(frames))
    assert torch.equal(got[order], want[torch.argsort(want[:, 0] * 1e3 + want[:, 1])])


def test_corrupt_frames_are_refused_even_after_an_earlier_version_of_the_file_passed(tmp_path):
    """A NaN or a negative power is one line naming the frame; a file checked once in this
    process is not read again, but a rewritten file (another version) is checked afresh."""
    import pytest

    from sdmvae_cli.core.errors import SdmvaeError
    from sdmvae_cli.data.frames import check_frames

    f = tmp_path / "frames.npy"
    good = np.abs(np.random.default_rng(0).normal(size=(300, 9))).astype(np.float32)
    np.save(f, good)
    check_frames(np.load(f, mmap_mode="c"), "good")
    check_frames(np.load(f, mmap_mode="c"), "good again")  # the same version: known, no second pass
    for value, kind in ((np.nan, "NaN or inf"), (-1.0, "negative power")):
        bad = good.copy()
        bad[217, 3] = value
        np.save(tmp_path / "new.npy", bad)
        (tmp_path / "new.npy").replace(f)  # rewritten as prepare does: a new file in its place
        with pytest.raises(SdmvaeError, match=f"{kind} \\(frame 217\\)"):
            check_frames(np.load(f, mmap_mode="c"), "bad")
    with pytest.raises(SdmvaeError, match="negative power"):
        check_frames(np.asarray(bad), "in memory")  # an array in memory is always checked
