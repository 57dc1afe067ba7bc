"""The training data of sequence families (:attr:`SpectrogramVAE.SEQUENTIAL`): tiles of
``seq_len`` frames inside utterances, drawn by the same engine as frames.

A :class:`SequenceSource` gives the stack the interface of a resident
:class:`~sdmvae_cli.data.frames.FrameSource` whose rows are sequences: one permutation of the
tiles per member and epoch (as of frames for the frame-wise families), a batch gathered by one
``index_select`` of the frames its windows cover (:func:`gather_sequences`). The tiles are fixed
for the run (the benchmark's chunks: :func:`~sdmvae_cli.data.sequences.tile_starts`).
Validation is the validation split's tiles, gathered once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.data.frames import FrameSource
from sdmvae_cli.data.sequences import SequenceIndex, gather_sequences, sequence_index
from sdmvae_cli.nets import REGISTRY, ModelConfig

log = logging.getLogger("sdmvae")


#: the tiles of the train and validation splits, per sequence length
SequenceIndexes = dict[int, tuple[SequenceIndex, SequenceIndex]]


class SequenceSource:
    """A resident frame source seen as tiles of ``index.seq_len`` frames."""

    resident = True

    def __init__(self, frames: FrameSource, index: SequenceIndex):
        self.frames, self.device, self.row_frames = frames, frames.device, index.seq_len
        self.index = dataclasses.replace(index, starts=index.starts.to(frames.device))

    def __len__(self) -> int:
        return self.index.n_sequences

    def chunks(self, gen: torch.Generator) -> Iterator[int]:
        yield len(self)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Tiles ``idx`` (any shape): (*idx.shape, seq_len, bins)."""
        return self.frames.gather(self.index.windows(idx))


def is_sequential(cfg: ModelConfig) -> bool:
    return REGISTRY[cfg.model].SEQUENTIAL


def sequence_indexes(
    cfgs: list[tuple[ModelConfig, int]], prepared_dir: Path, splits: tuple[np.ndarray, np.ndarray], budget: int
) -> SequenceIndexes:
    """Before anything is written: every sequence member (config, batch size) has its train
    split resident, at least one batch of tiles in train and a tile in validation. (Under
    torchrun the ranks split each batch of tiles, and their noise, on the tiles' axis, as they
    split frames: the family's ``noise_batch_axis``.) ``splits``:
    the train and validation frames, whose lengths bound the manifests' utterances. Returns the
    tiles, each split's manifest read once per sequence length (not once per member)."""
    train_frames, val_frames = splits
    out: SequenceIndexes = {}
    for cfg, batch in cfgs:
        if not is_sequential(cfg):
            continue
        if train_frames.nbytes > budget:
            raise SdmvaeError(
                f"--model {cfg.model} needs the train split resident ({train_frames.nbytes >> 20} MiB over the "
                "device budget): raise --max-device-fraction"
            )
        if cfg.seq_len not in out:
            out[cfg.seq_len] = _indexes(prepared_dir, cfg.seq_len, splits)
        tiles = out[cfg.seq_len][0].n_sequences
        if tiles < batch:
            raise SdmvaeError(
                f"the train split has {tiles} sequences of {cfg.seq_len} frames, fewer than one batch ({batch}): "
                "lower --batch-size or --seq-len"
            )
    return out


def _indexes(prepared_dir: Path, seq_len: int, splits: tuple[np.ndarray, np.ndarray]) -> tuple[SequenceIndex, SequenceIndex]:
    tr, va = (sequence_index(prepared_dir, name, seq_len, len(f)) for name, f in zip(("train", "validation"), splits))
    if tr.dropped or va.dropped:
        log.info("%d train and %d validation utterances are shorter than --seq-len %d: unused", tr.dropped, va.dropped, seq_len)
    return tr, va


def data_for(indexes: SequenceIndexes, train_src: FrameSource, val: torch.Tensor) -> Callable[[ModelConfig], tuple]:
    """(source, validation tensor) of a configuration: the frames themselves for a frame-wise
    family, tiles of its ``seq_len`` for a sequence family (built once per length, from the
    ``indexes`` the plan made)."""
    cache: dict[int, tuple[SequenceSource, torch.Tensor]] = {}

    def get(cfg: ModelConfig) -> tuple:
        if not is_sequential(cfg):
            return train_src, val
        if cfg.seq_len not in cache:
            tr, va = indexes[cfg.seq_len]
            cache[cfg.seq_len] = (SequenceSource(train_src, tr), gather_sequences(val, va.windows(torch.arange(va.n_sequences))))
        return cache[cfg.seq_len]

    return get
