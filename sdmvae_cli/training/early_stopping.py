"""Early stopping, per member: the validation statistic it stops on, its best epoch, its patience.

Each member of a stack (:class:`sdmvae_cli.training.stack.Member`) keeps its own bookkeeping:
``best_val`` and ``best_epoch`` (what ``best.pt`` holds) and ``since_best`` (epochs without
improvement). After every epoch (:mod:`sdmvae_cli.training.loop`):

1. the member's statistic is read from the epoch's validation columns (``--stop-on``, a key of
   :data:`~sdmvae_cli.training.options.STOP_COLUMNS`; the default, the posterior-mean ELBO, has
   no sampling noise);
2. a non-finite training loss or statistic marks it diverged (:func:`diverged`);
3. a lower statistic is a new best (:func:`record_validation`: ``best.pt`` is written);
4. ``patience`` epochs without one stop it, else the epoch cap finishes it (:func:`check_stop`).

The state is saved in ``last.pt`` and restored on ``--resume`` (:func:`resumed_status`), so a
resumed run stops exactly where it would have.
"""

from __future__ import annotations

import math

from sdmvae_cli.nets import REGISTRY
from sdmvae_cli.training.options import STOP_COLUMNS
from sdmvae_cli.training.stack import Member


def stop_statistic(m: Member, vals: dict[str, float]) -> float:
    """The member's early-stopping statistic among one epoch's validation columns."""
    return vals[STOP_COLUMNS[m.opts.stop_on]]


def diverged(m: Member, epoch: int, train: list[float], crit: float) -> bool:
    """Mark the member diverged when its training loss or its own statistic is not finite
    (another statistic may overflow on a loud frame, the one-sample loss above all: recorded,
    not fatal); returns whether it did."""
    train_bad = not all(math.isfinite(v) for v in train)
    if not train_bad and math.isfinite(crit):
        return False
    kept = (
        f"the last completed epoch is kept in {m.run_dir / 'last.pt'}"
        if m.wrote_checkpoint
        else "no epoch had completed, so no checkpoint was written"
    )
    what, value = ("training", train[0]) if train_bad else ("validation", crit)
    m.status = "diverged"
    m.message = (
        f"{m.name}: {what} loss became {value} at epoch {epoch}; stopped, {kept} "
        "(the data was checked finite: the optimisation diverged; try a lower --lr)"
    )
    return True


def record_validation(m: Member, epoch: int, crit: float) -> bool:
    """Count the epoch against the member's best; returns whether it is a new best. Epochs
    before the family's ``patience_from`` keep the best but never count against the patience."""
    improved = crit < m.best_val
    if improved:
        m.best_val, m.best_epoch, m.since_best = crit, epoch, 0
    elif epoch >= REGISTRY[m.cfg.model].patience_from(m.cfg):
        m.since_best += 1
    return improved


def check_stop(m: Member) -> None:
    """After the epoch is in ``m.history`` and ``m.epoch`` counts it: stop the member after
    ``patience`` epochs without improvement (with a note when it stopped on the mean while the
    median still improved), or finish it at the epoch cap."""
    if m.since_best >= m.opts.patience:
        m.status, m.message = "stopped", f"early stopping: no improvement for {m.opts.patience} epochs"
        late = median_still_improving(m.history, m.best_epoch, m.opts.patience) if m.opts.stop_on == "mean" else None
        if late is not None:
            m.advice = (
                f"stopped on the mean validation loss (best epoch {m.best_epoch}), but the median per-frame loss was "
                f"still improving (best at epoch {late}): a few validation frames dominate the mean; "
                "--stop-on posterior-mean (the default) has no sampling noise (README, train)"
            )
            m.message += f"; {m.advice}"
    elif m.epoch >= m.opts.epochs:
        m.status, m.message = "finished", f"reached the epoch cap ({m.opts.epochs})"


def resumed_status(m: Member) -> None:
    """A member reopened from its last.pt that has nothing left to train: it had stopped early,
    or it is at its (possibly new) epoch cap."""
    if m.since_best >= m.opts.patience:
        m.status, m.message = "stopped", "had already stopped early"
    elif m.epoch >= m.opts.epochs:
        m.status, m.message = "finished", f"already at the epoch cap ({m.opts.epochs})"


def median_still_improving(history: list[dict], best_epoch: int, patience: int) -> int | None:
    """When a run stopped on the mean validation loss: the epoch of the best median per-frame
    loss if that came well after the mean's best (in the second half of the patience window),
    i.e. the model was still improving for most frames while a few frames made the mean spike
    (the VAE's failure mode on our data, docs/results.md); else None."""
    meds = [(h["val_median"], h["epoch"]) for h in history if h.get("val_median") is not None]
    if not meds:
        return None
    _, e = min(meds)
    return e if e - best_epoch >= max(1, patience // 2) else None
