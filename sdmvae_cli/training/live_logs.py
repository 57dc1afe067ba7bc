"""What a run shows while it trains, beside its record (checkpoints and history.csv, the source
of truth): ``loss.png`` redrawn as the run goes, and TensorBoard events
(:mod:`sdmvae_cli.training.tensorboard_log`). `train` and every member of a `sweep` (each in its
own run folder) get both, through the epoch loop's callbacks (:mod:`sdmvae_cli.training.loop`).

Why the drawing is rationed: a loss.png costs about 0.3 s, and a sweep of 64 stacked members
drawing each of theirs every epoch would spend more time drawing than training. A member's
figure is redrawn at most every :data:`PLOT_SECONDS`, only while drawing has taken at most
:data:`PLOT_SHARE` of the wall time, the longest-waiting member first; its last figure is drawn
when it ends (stopped, finished, diverged or interrupted), whatever the ration.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdmvae_cli.audio.stft import StftConfig
from sdmvae_cli.core.errors import first_line
from sdmvae_cli.nets import SpectrogramVAE, build_model
from sdmvae_cli.training.curves import plot_history
from sdmvae_cli.training.options import EpochRecord
from sdmvae_cli.training.stack import Member, Stack
from sdmvae_cli.training.tensorboard_log import (
    TB_EVERY,
    Example,
    RunWriter,
    scalar_values,
    summary_writer_class,
    validation_example,
)

log = logging.getLogger("sdmvae")

#: a member's loss.png is redrawn at most this often (its first epoch's at once) ...
PLOT_SECONDS = 10.0
#: ... and while drawing has taken at most this share of the training's wall time
PLOT_SHARE = 0.02


@dataclass
class LiveOptions:
    """`train --no-plot/--no-tensorboard/--tb-every N`, and the same options of `sweep`."""

    plot: bool = True  # loss.png as the run goes
    tensorboard: bool = True  # RUN/tb/ (where the tensorboard package is installed)
    tb_every: int = TB_EVERY  # epochs between two examples (image and audio); 0: none


class LiveLogs:
    """The live views of every member of one training (`train`: one; `sweep`: all its stacks)."""

    def __init__(self, opts: LiveOptions, prepared_dir: Path, val_frames: np.ndarray, stft: StftConfig):
        self.opts = opts
        self.writer_cls = summary_writer_class() if opts.tensorboard else None
        self.tb_every = opts.tb_every if self.writer_cls is not None else 0
        self._source = (prepared_dir, val_frames, stft)
        self._example: Example | None = None
        self.writers: dict[Path, RunWriter] = {}
        self.models: dict[Path, SpectrogramVAE] = {}
        self.live: dict[Path, Member] = {}  # members that trained an epoch here, until finalised
        self.drawn: dict[Path, float] = {}  # live member -> when its loss.png was drawn (-inf: not yet)
        self.no_plot: set[Path] = set()  # members whose figure could not be written
        self.t0, self.drawing = time.perf_counter(), 0.0

    def epoch(self, stack: Stack, i: int, m: Member, rec: EpochRecord) -> None:
        """Member ``i``'s epoch ``rec`` is recorded (history.csv, last.pt): show it."""
        key = m.run_dir
        for other in [x for x in self.live.values() if x.done and x is not m]:  # diverged since (retired without an epoch)
            self.done(other)
        self.live[key] = m
        self.drawn.setdefault(key, -math.inf)
        if self.writer_cls is not None:
            w = self.writers.setdefault(key, RunWriter(key, self.writer_cls, m.name))
            w.scalars(rec.epoch, scalar_values(m.history[-1], m.opts.lr))
            if self.tb_every and rec.epoch % self.tb_every == 0 and not w.failed and self.example() is not None:
                w.example(rec.epoch, self.example(), self._model(key, m, stack, i))
        if m.done:  # its last epoch (stopped, finished)
            self.done(m)
        elif self.opts.plot and self._plot_due(key):
            self._plot(m)

    def done(self, m: Member) -> None:
        """The member ended (a diverged one: at the next epoch of another, an interrupted one: at
        :meth:`close`): its last figure, its event files closed."""
        key = m.run_dir
        if key not in self.live:  # never had an epoch here (or finalised already)
            return
        if self.opts.plot:
            self._plot(m)
        w = self.writers.pop(key, None)
        if w is not None:
            w.close()
        self.models.pop(key, None)
        del self.drawn[key], self.live[key]

    def close(self, members: list[Member]) -> None:
        """The training is over (or interrupted): every member not finalised yet is."""
        for m in members:
            self.done(m)

    def example(self) -> Example | None:
        """The validation utterance every member shows (made once); None, said once, when it cannot be made."""
        if self._example is None and self.tb_every:
            try:
                self._example = validation_example(*self._source)
            except Exception as exc:  # a view of the run must never end it
                log.warning("TensorBoard examples off: the validation example cannot be made (%s)", first_line(exc))
                self.tb_every = 0
        return self._example

    def _model(self, key: Path, m: Member, stack: Stack, i: int) -> SpectrogramVAE:
        """Member ``i``'s network after its epoch, on the CPU (one utterance: no device needed)."""
        if key not in self.models:
            with torch.random.fork_rng(devices=[]):  # building draws initial weights: the training's RNG is left as it was
                self.models[key] = build_model(m.cfg)
        model = self.models[key]
        model.load_state_dict(stack.member_state(i))
        return model

    def _plot_due(self, key: Path) -> bool:
        now = time.perf_counter()
        last = self.drawn[key]
        if key in self.no_plot or now - last < PLOT_SECONDS or self.drawing > PLOT_SHARE * (now - self.t0):
            return False
        return last <= min(self.drawn.values())  # the longest-waiting member first

    def _plot(self, m: Member) -> None:
        if m.run_dir in self.no_plot or not m.history:
            return
        t = time.perf_counter()
        try:
            plot_history(m.run_dir, m.history)
        except Exception as exc:  # a full disk, a folder gone: the run goes on (its record is history.csv)
            self.no_plot.add(m.run_dir)
            log.warning("%s: loss.png cannot be written (%s); training goes on", m.run_dir, first_line(exc))
        now = time.perf_counter()
        self.drawing += now - t
        self.drawn[m.run_dir] = now
