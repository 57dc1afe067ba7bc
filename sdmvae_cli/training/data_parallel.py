"""Data-parallel training (`torchrun ... -m sdmvae_cli train`): each rank steps on its shard of every batch.

A G-rank run is the one-process run at the run's batch B = G x b (``--batch-size`` b is per
rank, as in DDP; the run's config and checkpoints record B), to float rounding:

- every rank draws the same permutation and the same sampling noise for the whole batch (the
  run's two generators, seeded alike on every rank) and keeps rows ``[r*b, (r+1)*b)`` of each
  batch and of its noise (on the batch axis a family gives: :meth:`SpectrogramVAE.noise_batch_axis`);
- the loss is a mean over the batch, so the mean of the ranks' gradients (one all-reduce of
  all gradients flattened into one buffer per step, the bucket DDP would make) is the
  gradient of the whole batch; every rank then takes the same Adam step, so the weights stay
  equal without being sent;
- the epoch's loss sums are all-reduced; validation runs on rank 0 and its statistics are
  broadcast, so early stopping is decided once and every rank stops at the same epoch; rank
  0's weights and Adam moments are sent to every rank at the end of each epoch (a safeguard:
  a rank whose compile failed steps with other kernels, and would otherwise drift);
- rank 0 alone writes the run folder (checkpoints, history, live logs).

Why not ``torch.nn.parallel.DistributedDataParallel``: it wraps an ``nn.Module`` driven by
autograd, and the training step here is a functional one (``torch.func``) that, on a CPU with
compile, fuses the backward with Adam. With compile on a CPU the step is two compiled
functions around the all-reduce (gradients, then Adam and the projections); otherwise the
eager step with the all-reduce between backward and Adam. benchmarks/distributed.py measures
both against DDP over the same network. CUDA graphs are off (a collective inside a captured
graph is not worth its constraints at one all-reduce per step).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from sdmvae_cli.core.distributed import Launch
from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.training.optim import adam_scales, adam_update_
from sdmvae_cli.training.options import VALIDATION_COLUMNS
from sdmvae_cli.training.stack import Stack


def rank_rows(batch: int, launch: Launch) -> slice:
    """Rank ``launch.rank``'s rows of a batch of ``batch`` (the run's batch: G x per-rank)."""
    if batch % launch.world:
        raise SdmvaeError(
            f"the run's batch of {batch} rows (frames, or a sequence model's tiles) does not split over {launch.world} ranks: resume it on a number of ranks "
            "that divides it"
        )
    b = batch // launch.world
    return slice(launch.rank * b, (launch.rank + 1) * b)


def _through_one_buffer(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """``collective`` on all of ``tensors`` at once, in place: flattened into one buffer (one
    message instead of one per tensor, DDP's bucket) and copied back; ``copy_`` keeps each
    tensor's own strides (the compiled step's column-major weights)."""
    with torch.no_grad():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        collective(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view(t.shape))


def all_reduce_mean_(grads: list[torch.Tensor], world: int) -> None:
    """The ranks' mean of every gradient, in place."""

    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat /= world

    _through_one_buffer(grads, mean)


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every rank, in place."""
    _through_one_buffer(tensors, lambda flat: dist.broadcast(flat, src=0))


class DataParallelStack(Stack):
    """A stack of one member (`sdmvae train`) whose steps are split over the ranks of a launch."""

    def __init__(self, *args, launch: Launch, **kwargs):
        self.launch = launch
        super().__init__(*args, **kwargs)
        self.rows = rank_rows(self.opts.batch_size, launch)

    def _make_loss_fns(self) -> None:
        super()._make_loss_fns()
        if self.whole_step:  # the compiled whole step, cut in two around the all-reduce
            self._compiled_grads = torch.compile(self._grads_fn(self.loss_fn), dynamic=None)
            self._compiled_apply = torch.compile(self._apply_fn(), dynamic=None)

    def _grads_fn(self, train_fn):
        def grads_step(params, hp, x, noise, active, acc):
            def masked(ps):
                means, sums = train_fn(ps, hp, x, noise)
                return (means * active).sum(), sums

            grads, sums = torch.func.grad(masked, has_aux=True)(params)
            acc.add_(sums * active[:, None])
            return grads

        return grads_step

    def _apply_fn(self):
        template = self.template

        def apply_step(params, grads, exp_avg, exp_avg_sq, step_size, bc2_sqrt):
            adam_update_(params, grads, exp_avg, exp_avg_sq, step_size, bc2_sqrt)
            template.project_(params)

        return apply_step

    def _draw_block(self, steps: int) -> dict[str, torch.Tensor]:
        # (N, steps, *shape): the batch axis of each noise's own shape, 2 further in
        lo, n = self.rows.start, self.rows.stop - self.rows.start
        return {k: v.narrow(2 + self.template.noise_batch_axis(k), lo, n) for k, v in super()._draw_block(steps).items()}

    def step(self, idx: torch.Tensor, noise: dict[str, torch.Tensor]) -> None:
        """One step of this rank's rows of the batch (``idx`` (N, B): the whole batch's; ``noise``:
        this rank's). Exactly one all-reduce per step on every path, a failed compile included
        (then this rank goes on eagerly: the same maths, and the weights are re-sent every epoch)."""
        idx = idx[..., self.rows]
        x = self.src.gather(idx)
        noise = {k: v.contiguous() for k, v in noise.items()}
        grads = self._gradients(x, noise)
        all_reduce_mean_(list(grads.values()), self.launch.world)
        o = self.opt
        if self.whole_step:
            step_size, bc2_sqrt = adam_scales(o.steps + 1, o.lrs)
            try:
                self._compiled_apply(self.params, grads, o.exp_avg, o.exp_avg_sq, step_size, bc2_sqrt)
                o.steps += 1
                return
            except torch._dynamo.exc.TorchDynamoException as exc:
                self._eager_fallback(exc)
        for n, p in self.params.items():  # the eager Adam reads .grad (after a failed compile: the averaged gradients)
            if p.grad is not grads[n]:
                p.grad = grads[n].contiguous()
        self.opt.step()
        self.template.project_(self.params)

    def _gradients(self, x: torch.Tensor, noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's gradients of its rows' mean loss; the loss sums go into ``acc``."""
        if self.whole_step:
            try:
                return self._compiled_grads(self.params, self.hp, x, noise, self.active, self.acc)
            except torch._dynamo.exc.TorchDynamoException as exc:
                self._eager_fallback(exc)
        for p in self.params.values():
            p.grad = None
        try:
            means, sums = self.loss_fn(self.params, self.hp, x, noise)
        except torch._dynamo.exc.TorchDynamoException as exc:  # the compiled loss alone (CUDA)
            if not self.compile_loss:
                raise
            self._eager_fallback(exc)
            means, sums = self.loss_fn(self.params, self.hp, x, noise)
        (means * self.active).sum().backward()
        self.acc += sums.detach() * self.active[:, None]
        return {n: p.grad for n, p in self.params.items()}

    def run_epoch(self, epoch: int) -> int:
        """An epoch of steps; then the ranks' loss sums added, and rank 0's weights and Adam
        moments (what it checkpoints) sent to every rank: equal already, to the last bit where
        every rank ran the same kernels, and kept so where one could not (a failed compile)."""
        seen = super().run_epoch(epoch)
        dist.all_reduce(self.acc)  # each rank summed the losses of its rows
        o = self.opt
        broadcast_([*self.params.values(), *o.exp_avg.values(), *o.exp_avg_sq.values()])
        return seen

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        shape = (len(self.members), len(VALIDATION_COLUMNS))
        out = super().validate() if self.launch.is_main else torch.zeros(shape)
        out = out.to(self.device, torch.float64).contiguous()
        dist.broadcast(out, src=0)
        return out

    @property
    def engine(self) -> str:
        return f"{super().engine}+dp{self.launch.world}"
