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


class SequenceSource:
    """A resident frame source seen as tiles of ``index.seq_len`` frames."""

    resident = True

    def __init__(self, frames: FrameSource, index: SequenceIndex):
        self.buffer, self.device = frames.buffer, frames.device
        self.row_frames = index.seq_len
        self.starts = index.starts.to(frames.device)
        self.offsets = torch.arange(index.seq_len, device=frames.device)

    def __len__(self) -> int:
        return int(self.starts.numel())

    def chunks(self, gen: torch.Generator) -> Iterator[int]:
        yield len(self)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Tiles ``idx`` (any shape): (*idx.shape, seq_len, bins)."""
        return gather_sequences(self.buffer, self.starts[idx][..., None] + self.offsets)


def is_sequential(cfg: ModelConfig) -> bool:
    return REGISTRY[cfg.model].SEQUENTIAL


def check_sequences(
    cfgs: list[tuple[ModelConfig, int]], prepared_dir: Path, splits: tuple[np.ndarray, np.ndarray], budget: int, parallel: bool
) -> None:
    """Before anything is written: every sequence member (config, batch size) has its train
    split resident, at least one batch of tiles in train and a tile in validation, and is not
    data-parallel (not built yet: its noise and batches would need the tiles' axis). ``splits``:
    the train and validation frames, whose lengths bound the manifests' utterances."""
    train_frames, val_frames = splits
    for cfg, batch in cfgs:
        if not is_sequential(cfg):
            continue
        if parallel:
            raise SdmvaeError(
                f"--model {cfg.model}: data-parallel training of sequence models is not supported; train with one process"
            )
        if train_frames.nbytes > budget:
            raise SdmvaeError(
                f"--model {cfg.model} needs the train split resident ({train_frames.nbytes >> 20} MiB over the "
                "device budget): raise --max-device-fraction"
            )
        tiles = sequence_index(prepared_dir, "train", cfg.seq_len, len(train_frames)).n_sequences
        if tiles < batch:
            raise SdmvaeError(
                f"the train split has {tiles} sequences of {cfg.seq_len} frames, fewer than one batch ({batch}): "
                "lower --batch-size or --seq-len"
            )
        sequence_index(prepared_dir, "validation", cfg.seq_len, len(val_frames))


def data_for(prepared_dir: Path, train_src: FrameSource, val: torch.Tensor) -> Callable[[ModelConfig], tuple]:
    """(source, validation tensor) of a configuration: the frames themselves for a frame-wise
    family, tiles of its ``seq_len`` for a sequence family (built once per length)."""
    cache: dict[int, tuple[SequenceSource, torch.Tensor]] = {}

    def get(cfg: ModelConfig) -> tuple:
        if not is_sequential(cfg):
            return train_src, val
        if cfg.seq_len not in cache:
            tr = sequence_index(prepared_dir, "train", cfg.seq_len, len(train_src))
            va = sequence_index(prepared_dir, "validation", cfg.seq_len, val.shape[0])
            if tr.dropped or va.dropped:
                log.info(
                    "%d train and %d validation utterances are shorter than --seq-len %d: unused",
                    tr.dropped,
                    va.dropped,
                    cfg.seq_len,
                )
            all_val = torch.arange(va.n_sequences)
            cache[cfg.seq_len] = (SequenceSource(train_src, tr), gather_sequences(val, va.windows(all_val).to(val.device)))
        return cache[cfg.seq_len]

    return get
