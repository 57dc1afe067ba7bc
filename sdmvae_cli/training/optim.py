"""Adam over a stack of members (Kingma & Ba 2015; torch.optim.Adam's update, per member).

Why a stacked Adam: the members' parameters are stacked along a leading dimension
(:mod:`sdmvae_cli.training.stack`), each member with its own learning rate and step count. Adam
is elementwise, so a stacked Adam is N Adams; it is spelt three ways, all equal to
``torch.optim.Adam`` per member to rounding (``tests/training/test_sweep.py``):

- :class:`StackedAdam` with torch's fused kernel (the default, CPU and CUDA; CUDA-graph safe);
- :class:`StackedAdam` with ``fused=False``: nine multi-tensor element-wise ops (for comparison);
- :func:`adam_update_` with :func:`adam_scales`: plain tensor ops that the CPU whole-step
  compile fuses with the backward pass (``Stack._whole_step_fn``).

Its state is saved in each member's ``last.pt`` as ``kind: OPTIMIZER_KIND`` (``--resume`` refuses
any other kind).
"""

from __future__ import annotations

from typing import Any

import torch

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: the ``kind`` of the optimizer state in a checkpoint (Stack.optimizer_state; checked on --resume)
OPTIMIZER_KIND = "stacked-adam"


class StackedAdam:
    """Adam (Kingma & Ba 2015, torch.optim.Adam's update) over stacked parameters, with a
    learning rate and a step count per member. Everything is a tensor op: CUDA-graph safe."""

    def __init__(
        self, params: dict[str, torch.Tensor], lrs: dict[str, torch.Tensor], steps: torch.Tensor, fused: bool | None = None
    ):
        self.params, self.lrs, self.steps = params, lrs, steps  # steps: (N,) float
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        devices = {p.device.type for p in params.values()}
        self.fused = (hasattr(torch, "_fused_adam_") and devices <= {"cpu", "cuda"}) if fused is None else fused
        self._runs = equal_runs(lrs, steps)

    @classmethod
    def resumed(
        cls,
        params: dict[str, torch.Tensor],
        lrs: dict[str, torch.Tensor],
        states: list[dict[str, Any] | None],
        fused: bool | None = None,
    ) -> "StackedAdam":
        """A stacked Adam whose member i continues from ``states[i]`` (its checkpoint's
        ``optimizer_state``, :meth:`member_state`), or starts fresh where that is None."""
        device = next(iter(params.values())).device
        steps = torch.tensor([float(o["step"]) if o else 0.0 for o in states], device=device)
        opt = cls(params, lrs, steps, fused)
        for i, o in enumerate(states):
            if o:
                for n in params:
                    opt.exp_avg[n][i].copy_(o["exp_avg"][n])
                    opt.exp_avg_sq[n][i].copy_(o["exp_avg_sq"][n])
        return opt

    def member_state(self, i: int) -> dict[str, Any]:
        """Member i's Adam state in the single-run layout, as a checkpoint stores it."""

        def own(moments: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {n: t[i].detach().cpu().clone(memory_format=torch.contiguous_format) for n, t in moments.items()}

        return {
            "kind": OPTIMIZER_KIND,
            "step": float(self.steps[i]),
            "exp_avg": own(self.exp_avg),
            "exp_avg_sq": own(self.exp_avg_sq),
        }

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every member.

        Fused (CPU and CUDA): torch's fused Adam kernel (the one behind
        ``torch.optim.Adam(fused=True)``), one pass over memory instead of nine element-wise
        passes, called once per run of consecutive members that share their learning rates and
        step count (usually one call for the whole stack: the kernel takes one float lr) on
        leading-dimension slices of the stacked tensors. On CUDA it reads the step count from
        device memory, so CUDA graphs capture it. Foreach (``fused=False``, for comparison):
        nine multi-tensor element-wise ops with a learning rate per member. Both equal
        ``torch.optim.Adam`` per member to rounding (``tests/training/test_sweep.py``)."""
        self.steps += 1
        names = [n for n, p in self.params.items() if p.grad is not None]  # unused ones: skipped, as torch.optim.Adam
        if not names:
            return
        if self.fused:
            self._fused_step(set(names))
            return
        b1, b2 = ADAM_BETAS
        ps = [self.params[n] for n in names]
        gs = [p.grad for p in ps]
        ms = [self.exp_avg[n] for n in names]
        vs = [self.exp_avg_sq[n] for n in names]
        views = [(-1,) + (1,) * (p.dim() - 1) for p in ps]
        bc1 = 1 - b1**self.steps
        bc2_sqrt = (1 - b2**self.steps).sqrt()
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [bc2_sqrt.view(v) for v in views])
        torch._foreach_add_(denom, ADAM_EPS)
        upd = torch._foreach_div(ms, denom)
        torch._foreach_mul_(upd, [(self.lrs[n] / bc1).view(v) for n, v in zip(names, views)])
        torch._foreach_sub_(ps, upd)

    def _fused_step(self, names: set[str]) -> None:
        b1, b2 = ADAM_BETAS
        for a, b, groups in self._runs:
            step = self.steps[a]  # read, not incremented, by the kernel
            for lr, group in groups.items():
                g = [n for n in group if n in names]
                if not g:
                    continue
                torch._fused_adam_(
                    [self.params[n][a:b] for n in g],
                    [_laid_out_as(self.params[n][a:b], self.params[n].grad[a:b]) for n in g],
                    [self.exp_avg[n][a:b] for n in g],
                    [self.exp_avg_sq[n][a:b] for n in g],
                    [],
                    [step] * len(g),
                    lr=lr,
                    beta1=b1,
                    beta2=b2,
                    weight_decay=0.0,
                    eps=ADAM_EPS,
                    amsgrad=False,
                    maximize=False,
                )


def _laid_out_as(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` with ``p``'s strides: torch's fused Adam kernel walks its tensors' raw memory, so a
    gradient laid out otherwise (autograd's are often transposed) would update the wrong elements."""
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


def adam_scales(steps: torch.Tensor, lrs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Adam's bias corrections for the next step (``steps`` already counts it), per member:
    the step size lr / (1 - beta1^t) of each parameter and sqrt(1 - beta2^t)."""
    b1, b2 = ADAM_BETAS
    bc1 = 1 - b1**steps
    return {n: lr / bc1 for n, lr in lrs.items()}, (1 - b2**steps).sqrt()


def adam_update_(
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    exp_avg: dict[str, torch.Tensor],
    exp_avg_sq: dict[str, torch.Tensor],
    step_size: dict[str, torch.Tensor],
    bc2_sqrt: torch.Tensor,
) -> None:
    """The same Adam update as :class:`StackedAdam`, written as plain tensor ops with per-member
    scales from :func:`adam_scales`. Why a third spelling: inside the CPU whole-step compile
    (:meth:`Stack._whole_step_fn`) torch.compile fuses these ops with the backward pass into a
    few C++ loops. The scales come in as inputs, computed once per member and step: inductor
    would otherwise inline them and evaluate two ``pow`` per vector of eight weights. Equal to
    ``torch.optim.Adam`` per member to rounding (``tests/training/test_sweep.py``)."""
    b1, b2 = ADAM_BETAS
    for n, g in grads.items():
        view = (-1,) + (1,) * (g.dim() - 1)
        m, v = exp_avg[n], exp_avg_sq[n]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2_sqrt.view(view)).add_(ADAM_EPS)
        params[n].sub_(step_size[n].view(view) * m / denom)


def equal_runs(lrs: dict[str, torch.Tensor], steps: torch.Tensor) -> list[tuple[int, int, dict[float, list[str]]]]:
    """Maximal runs [a, b) of consecutive members with the same learning rate for every
    parameter and the same step count, each with its parameter names grouped by learning rate.
    Constant for a stack's life: every member steps every step."""
    n = int(steps.shape[0])
    keys = [(float(steps[i]), tuple(float(v[i]) for v in lrs.values())) for i in range(n)]
    runs, a = [], 0
    for i in range(1, n + 1):
        if i == n or keys[i] != keys[a]:
            groups: dict[float, list[str]] = {}
            for name, v in lrs.items():
                groups.setdefault(float(v[a]), []).append(name)
            runs.append((a, i, groups))
            a = i
    return runs
