"""Stacked training: N members (seeds, hyper-parameters) of one architecture trained at once.

Why: a step of these 513-128-m networks is launch-bound on a GPU and under-fills a CPU core.
The members' parameters are stacked along a leading dimension and the step runs under
``torch.func.vmap``, so every matrix product becomes one batched product: one step does the
work of N runs at about the cost of one. ``sdmvae train`` is this engine with N = 1 (called
without vmap, whose per-op overhead dominates a lone member on a CPU: the same maths on other
kernels, so equal to float rounding, which the max-of-J choice of a thresholded model with
J > 1 can amplify over epochs). A member of a sweep is the computation of the same run trained
alone:

- its own permutation generator (seeded with its seed) draws its batches;
- its own noise generator draws all of its sampling noise, a block of ``graph_steps`` steps
  at a time, through :func:`sdmvae_cli.nets.base.draw_noise` (fixed order and shapes);
- its own Adam state and learning rate (Adam is elementwise: a stacked Adam is N Adams, one
  fused kernel call over the stacked tensors where the members share a learning rate);
- its own scalar hyper-parameters (``SCALAR_HPARAMS``: beta, alpha, threshold, ...), passed
  to the model as 0-d tensors under vmap;
- its own validation noise, fixed for the whole run (drawn once from seed + 1);
- its own early stopping. A stopped or diverged member is masked out at once (its gradient is
  zero) and dropped from the stack when a quarter of the stack is idle.

On CUDA, ``graph_steps`` consecutive steps (forward, backward, Adam, projections) are captured
in one CUDA graph and replayed; the host only fills the static index and noise buffers. On a
CPU with compile, one step (forward, backward, Adam, projections) is one compiled function
(:meth:`Stack._whole_step_fn`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.func import functional_call, vmap

from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.frames import FrameSource
from sdmvae_cli.nets import ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.nets.base import SCALAR_HPARAMS, draw_noise
from sdmvae_cli.trainopts import PER_MEMBER_OPTIONS, STOP_COLUMNS, VALIDATION_COLUMNS, EpochRecord, TrainOptions

log = logging.getLogger("sdmvae")

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
OPTIMIZER_KIND = "stacked-adam"


@dataclass
class Member:
    """One run inside a stack: its identity, options and progress."""

    name: str
    cfg: ModelConfig
    opts: TrainOptions
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # the next epoch to run
    best_val: float = math.inf
    best_epoch: int = -1
    since_best: int = 0
    status: str = "running"  # running | stopped (early) | finished (epoch cap) | diverged | interrupted
    message: str = ""
    advice: str = ""  # a stop on the mean while the median still improved (also ends ``message``)
    wrote_checkpoint: bool = False
    perm_gen: torch.Generator | None = None
    noise_gen: torch.Generator | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"


#: why a stack of several members cannot stream its data (checked by train_runs before it writes,
#: and by Stack itself): every member must draw from the whole split at every step
STREAMED_STACK = ("a stack of several members needs the train split resident in memory: raise max_device_fraction "
                  "or max_device_bytes in the spec (or train the runs one at a time)")


class StackedAdam:
    """Adam (Kingma & Ba 2015, torch.optim.Adam's update) over stacked parameters, with a
    learning rate and a step count per member. Everything is a tensor op: CUDA-graph safe."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: dict[str, torch.Tensor], steps: torch.Tensor,
                 fused: bool | None = None):
        self.params, self.lrs, self.steps = params, lrs, steps  # steps: (N,) float
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        devices = {p.device.type for p in params.values()}
        self.fused = (hasattr(torch, "_fused_adam_") and devices <= {"cpu", "cuda"}) if fused is None else fused
        self._runs = equal_runs(lrs, steps)

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
        ``torch.optim.Adam`` per member to rounding (``tests/test_sweep.py``)."""
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
        bc1 = 1 - b1 ** self.steps
        bc2_sqrt = (1 - b2 ** self.steps).sqrt()
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
                torch._fused_adam_([self.params[n][a:b] for n in g],
                                   [_laid_out_as(self.params[n][a:b], self.params[n].grad[a:b]) for n in g],
                                   [self.exp_avg[n][a:b] for n in g], [self.exp_avg_sq[n][a:b] for n in g], [],
                                   [step] * len(g), lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=ADAM_EPS,
                                   amsgrad=False, maximize=False)


def _laid_out_as(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` with ``p``'s strides: torch's fused Adam kernel walks its tensors' raw memory, so a
    gradient laid out otherwise (autograd's are often transposed) would update the wrong elements."""
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


def adam_scales(steps: torch.Tensor, lrs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Adam's bias corrections for the next step (``steps`` already counts it), per member:
    the step size lr / (1 - beta1^t) of each parameter and sqrt(1 - beta2^t)."""
    b1, b2 = ADAM_BETAS
    bc1 = 1 - b1 ** steps
    return {n: lr / bc1 for n, lr in lrs.items()}, (1 - b2 ** steps).sqrt()


def adam_update_(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], exp_avg: dict[str, torch.Tensor],
                 exp_avg_sq: dict[str, torch.Tensor], step_size: dict[str, torch.Tensor], bc2_sqrt: torch.Tensor) -> None:
    """The same Adam update as :class:`StackedAdam`, written as plain tensor ops with per-member
    scales from :func:`adam_scales`. Why a third spelling: inside the CPU whole-step compile
    (:meth:`Stack._whole_step_fn`) torch.compile fuses these ops with the backward pass into a
    few C++ loops. The scales come in as inputs, computed once per member and step: inductor
    would otherwise inline them and evaluate two ``pow`` per vector of eight weights. Equal to
    ``torch.optim.Adam`` per member to rounding (``tests/test_sweep.py``)."""
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


def group_key(cfg: ModelConfig, opts: TrainOptions) -> str:
    """Members can share a stack when only scalar hyper-parameters and per-member options differ."""
    import json

    structural = {k: v for k, v in cfg.to_dict().items() if k not in SCALAR_HPARAMS}
    shared_opts = {k: v for k, v in opts.to_dict().items() if k not in PER_MEMBER_OPTIONS}
    return json.dumps([structural, shared_opts], sort_keys=True)


def init_state(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """The initial weights of a run: the same as a fresh ``build_model`` after manual_seed(seed)."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in build_model(cfg).state_dict().items()}


class Stack:
    """N members of one architecture on one device, trained in lock-step epochs."""

    #: use vmap even for a single member (benchmarks/single_run_path.py compares both paths)
    always_vmap: bool = False
    #: torch's fused Adam kernel (False: the foreach path; for benchmarks/sweep_speed.py)
    fused_adam: bool = True
    #: draw the members' permutations in threads (False: one after another; for the same benchmark)
    threaded_permutations: bool = True
    #: with compile on a CPU, compile the whole step (False: the loss alone, as on CUDA; for
    #: comparisons and for testing that path's fallback without a GPU)
    whole_step_on_cpu: bool = True
    #: why torch.compile failed in this process, once it has (later stacks then train eagerly)
    compile_failed: str | None = None

    def __init__(self, members: list[Member], states: list[dict], optim_states: list[dict | None], src: FrameSource,
                 val: torch.Tensor, device: torch.device, use_graph: bool, compile_loss: bool):
        self.device = device
        self.members = members
        self.template: SpectrogramVAE = build_model(members[0].cfg).to(device)
        self.template.train()
        self.param_names = [n for n, _ in self.template.named_parameters()]
        self.buffers = dict(self.template.named_buffers())  # shared by every member (D of a fixed dictionary, epoch)
        self.opts = members[0].opts
        if not src.resident and len(members) > 1:
            raise SdmvaeError(STREAMED_STACK)
        self.src, self.data, self.val = src, src.buffer, val
        compile_loss = compile_loss and Stack.compile_failed is None
        self.use_graph, self.compile_loss = use_graph, compile_loss
        # a CPU with compile: forward, backward, Adam and projections as one compiled function
        # (torch.func.grad, no autograd engine): see _whole_step_fn
        self.whole_step = compile_loss and device.type == "cpu" and self.whole_step_on_cpu
        if device.type == "cuda":
            # TF32 matrix products (10-bit mantissa, fp32 range): the stacked products are most
            # of a large stack's step (docs/benchmarks.md); --no-tf32 keeps full fp32. A process
            # setting, as torch offers it: it also holds for the stack's validation passes.
            torch.backends.cuda.matmul.allow_tf32 = bool(self.opts.tf32)
        if compile_loss:
            # a fresh compile per stack (a compaction recompiles with a dynamic member count):
            # torch.compile caches per code object, and the loss closure's code is shared by every
            # stack of the process; past its recompile limit (8) dynamo silently falls back to
            # eager, which halved the speed of later stacks on an H100 (docs/benchmarks.md)
            torch._dynamo.reset()
        self._build(states, optim_states)

    # -- construction and compaction ---------------------------------------------------------
    def _build(self, states: list[dict], optim_states: list[dict | None]) -> None:
        dev = self.device
        self.params = {n: torch.stack([s[n] for s in states]).to(dev) for n in self.param_names}
        if self.whole_step:
            for n in self._linear_weights():
                # column-major per member: the compiled backward computes a linear layer's weight
                # gradient as x^T g, laid out (in, out); with the weight (and so, through
                # zeros_like, Adam's moments) laid out the same way, the fused update reads all
                # four contiguously instead of gathering the gradient one float at a time
                # (a 4x slower kernel: docs/benchmarks.md). Same shapes and values: only strides change.
                self.params[n] = self.params[n].transpose(-1, -2).contiguous().transpose(-1, -2)
        for p in self.params.values():
            p.requires_grad_(not self.whole_step)
        self.hp = {h: torch.tensor([float(getattr(m.cfg, h)) for m in self.members], device=dev) for h in SCALAR_HPARAMS}
        lrs = {}
        for n in self.param_names:
            field_name = self.template.lr_scale(n)
            vals = [float(getattr(m.cfg, field_name)) if field_name else float(m.opts.lr) for m in self.members]
            lrs[n] = torch.tensor(vals, device=dev)
        steps = torch.tensor([float(o["step"]) if o else 0.0 for o in optim_states], device=dev)
        self.opt = StackedAdam(self.params, lrs, steps, fused=None if self.fused_adam else False)
        for i, o in enumerate(optim_states):
            if o:
                for n in self.param_names:
                    self.opt.exp_avg[n][i].copy_(o["exp_avg"][n])
                    self.opt.exp_avg_sq[n][i].copy_(o["exp_avg_sq"][n])
        self.active = torch.tensor([0.0 if m.done else 1.0 for m in self.members], device=dev)
        self.acc = torch.zeros((len(self.members), 3), device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.idx_buf: torch.Tensor | None = None
        self.noise_buf: dict[str, torch.Tensor] | None = None
        self._val_noise: dict[str, torch.Tensor] | None = None
        self._make_loss_fns()

    def _linear_weights(self) -> list[str]:
        return [f"{name}.weight" for name, mod in self.template.named_modules() if isinstance(mod, torch.nn.Linear)]

    def compact(self) -> None:
        """Drop finished members from the stack (they cost no compute afterwards)."""
        keep = [i for i, m in enumerate(self.members) if not m.done]
        if len(keep) == len(self.members):
            return
        states = [self.member_state(i) for i in keep]
        optim = [self.optimizer_state(i) for i in keep]
        self.members = [self.members[i] for i in keep]
        if self.members:
            self._build(states, optim)

    # -- the stacked loss ----------------------------------------------------------------------
    def _make_loss_fns(self) -> None:
        template = self.template

        def member_terms(params, hp, x, noise):
            template._hp = hp
            try:
                return functional_call(template, (params, self.buffers), (x, noise))
            finally:
                template._hp = None

        def member_loss(params, hp, x, noise):
            t = member_terms(params, hp, x, noise)
            return t.total.mean(), torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum()])

        def member_val(params, hp, x, noise):  # per-frame totals too: the median needs them
            t = member_terms(params, hp, x, noise)
            template._hp = hp
            try:
                d = functional_call(template, (params, self.buffers), (x,), {"noise_free": True})
            finally:
                template._hp = None
            return t.total, torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum(), d.total.sum(), d.recon.sum(), d.kl.sum()])

        if len(self.members) == 1 and not self.always_vmap:
            # a stack of one (`sdmvae train`): the same computation without vmap, whose per-op
            # batching rules cost more than the step itself on a CPU (docs/benchmarks.md)
            train_fn, self.val_fn = _unstacked(member_loss, x_stacked=True), _unstacked(member_val, x_stacked=False)
        else:
            train_fn = vmap(member_loss, in_dims=(0, 0, 0, 0))
            self.val_fn = vmap(member_val, in_dims=(0, 0, None, 0))
        self._eager_loss_fn = train_fn  # what a failed compile falls back to (see _eager_fallback)
        if self.whole_step:
            self.loss_fn = train_fn
            self._compiled_step = torch.compile(self._whole_step_fn(train_fn), dynamic=None)
        else:
            self.loss_fn = torch.compile(train_fn, dynamic=None) if self.compile_loss else train_fn  # dynamic member count after a compaction

    def _whole_step_fn(self, train_fn: Callable) -> Callable:
        """One training step as a pure function of the stack's tensors, for torch.compile on a CPU.

        Why: on a CPU the compiled loss alone still leaves autograd's engine, gradient
        accumulation (a copy of every weight gradient, which the compiled backward lays out
        transposed) and the Adam kernel as separate passes over memory; here the gradient comes
        from ``torch.func.grad`` and the Adam update (:func:`adam_update_`), the projections and
        the loss sums are fused into the same C++ loops (docs/benchmarks.md). The maths is that
        of :meth:`step`'s eager path."""
        template = self.template

        def whole_step(params, hp, x, noise, active, acc, exp_avg, exp_avg_sq, step_size, bc2_sqrt):
            def masked(ps):
                means, sums = train_fn(ps, hp, x, noise)
                return (means * active).sum(), sums

            grads, sums = torch.func.grad(masked, has_aux=True)(params)
            adam_update_(params, grads, exp_avg, exp_avg_sq, step_size, bc2_sqrt)
            template.project_(params)
            acc.add_(sums * active[:, None])

        return whole_step

    def step(self, idx: torch.Tensor, noise: dict[str, torch.Tensor]) -> None:
        """One optimisation step of every member: ``idx`` (N, B) frame indices, ``noise`` (N, ...)."""
        x = self.data.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)  # a CPU gather 2-5x faster than data[idx]
        if self.whole_step:
            o = self.opt  # noise made contiguous: a block's last, shorter slice would otherwise recompile
            try:
                step_size, bc2_sqrt = adam_scales(o.steps + 1, o.lrs)
                self._compiled_step(self.params, self.hp, x, {k: v.contiguous() for k, v in noise.items()}, self.active, self.acc,
                                    o.exp_avg, o.exp_avg_sq, step_size, bc2_sqrt)
                o.steps += 1
                return
            except torch._dynamo.exc.TorchDynamoException as exc:  # e.g. no working C++ compiler
                self._eager_fallback(exc)
        # CUDA graphs: gradients allocated inside the capture (the documented pattern); CPU: the
        # buffers are kept and zeroed, which saves an allocation per parameter per step
        for p in self.params.values():
            if p.grad is None or self.device.type == "cuda":
                p.grad = None
            else:
                p.grad.zero_()
        try:
            means, sums = self.loss_fn(self.params, self.hp, x, noise)
        except torch._dynamo.exc.TorchDynamoException as exc:  # the compiled loss alone (CUDA, or a CPU whole step off)
            if not self.compile_loss:
                raise
            self._eager_fallback(exc)
            means, sums = self.loss_fn(self.params, self.hp, x, noise)
        (means * self.active).sum().backward()
        self.opt.step()
        self.template.project_(self.params)
        self.acc += sums.detach() * self.active[:, None]

    def _eager_fallback(self, exc: Exception) -> None:
        """Compiling failed before anything ran (inductor needs a working C++ compiler on a CPU):
        say so once and go on with the eager step, the same maths."""
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        log.warning("torch.compile of the training step failed (%s); training without it (--compile off skips the attempt)", first)
        # for the rest of the process: a compaction, or a later stack, must not try again
        Stack.compile_failed = first
        self.whole_step = self.compile_loss = False
        self.loss_fn = self._eager_loss_fn
        # the whole step's column-major weights (and, through zeros_like, Adam's moments) back
        # to the contiguous layout the eager step and torch's fused Adam kernel expect: that
        # kernel walks raw memory, so a layout mismatch would pair each weight with another
        # element's gradient
        for n in self.param_names:
            self.params[n] = self.params[n].detach().contiguous().requires_grad_(True)
            for moments in (self.opt.exp_avg, self.opt.exp_avg_sq):
                moments[n] = moments[n].contiguous()

    @property
    def engine(self) -> str:
        """How the stack's steps run, e.g. ``cpu:compiled-step`` or ``cuda:compiled-loss+cuda-graph``:
        recorded with every epoch (history.csv, sweep.json), since frames/s depend on it and
        ``--compile auto`` decides per stack and machine."""
        kind = "compiled-step" if self.whole_step else "compiled-loss" if self.compile_loss else "eager"
        return f"{self.device.type}:{kind}" + ("+cuda-graph" if self.graph is not None else "")

    # -- one epoch -------------------------------------------------------------------------------
    def _draw_block(self, steps: int) -> dict[str, torch.Tensor]:
        """Each member's noise for ``steps`` steps from its own generator: (N, steps, ...)."""
        spec = self.template.noise_spec(self.opts.batch_size)
        per = [draw_noise(spec, (steps,), m.noise_gen, self.device) for m in self.members]
        return {k: torch.stack([p[k] for p in per]) for k in spec}

    def _capture(self) -> None:
        k, n, b = self.opts.graph_steps, len(self.members), self.opts.batch_size
        self.idx_buf = torch.zeros((k, n, b), dtype=torch.long, device=self.device)
        spec = self.template.noise_spec(b)
        self.noise_buf = {name: torch.zeros((n, k, *shape), device=self.device) for name, (_, shape) in spec.items()}
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                for j in range(k):
                    self.step(self.idx_buf[j], {name: t[:, j] for name, t in self.noise_buf.items()})
        except Exception as exc:
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise SdmvaeError(f"CUDA graph capture failed ({first}); re-run with --no-cuda-graph") from None
        self.graph = g

    def run_epoch(self, epoch: int) -> int:
        """Train every member for one epoch; returns the frames each member saw.

        Batches: a fresh random permutation per member per epoch (per chunk when a single run
        streams a split too large for the device); partial batches are dropped."""
        self.template.set_epoch(epoch)
        self.acc.zero_()
        seen = 0
        for rows in self.src.chunks(self.members[0].perm_gen):
            seen += self._run_chunk(rows)
        return seen

    def _run_chunk(self, rows: int) -> int:
        b, gsteps = self.opts.batch_size, self.opts.graph_steps
        nb = rows // b
        perms = permutations(rows, [m.perm_gen for m in self.members], self.threaded_permutations)
        idx = torch.stack([p[: nb * b].view(nb, b) for p in perms], 1).to(self.device)  # (nb, N, B)
        done_eager = 0
        for s in range(0, nb, gsteps):
            k = min(gsteps, nb - s)
            noise = self._draw_block(k)
            if self.use_graph and k == gsteps and self.graph is None and done_eager >= 2:
                self._capture()
            if self.graph is not None and k == gsteps:
                self.idx_buf.copy_(idx[s : s + k])
                for name, t in self.noise_buf.items():
                    t.copy_(noise[name])
                self.graph.replay()
            else:
                for j in range(k):
                    self.step(idx[s + j], {name: t[:, j] for name, t in noise.items()})
                done_eager += 1
        return nb * b

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """Per member, (N, 7) in the order of VALIDATION_COLUMNS: the one-sample ELBO's mean (total,
        recon, kl) per validation frame with fixed noise, the median of its per-frame total, and
        the noise-free statistic's (total, recon, kl) (:meth:`SpectrogramVAE.mean_code_loss`, the
        default for early stopping): the one-sample
        mean can be dominated by the sampling noise of a handful of loud frames
        (docs/results.md); the median tracks a mid-loudness frame."""
        self.template.eval()
        n_val = self.val.shape[0]
        if self._val_noise is None:
            spec = self.template.noise_spec(n_val)
            per = [draw_noise(spec, (), torch.Generator(device=self.device).manual_seed(m.opts.seed + 1), self.device)
                   for m in self.members]
            self._val_noise = {k: torch.stack([p[k] for p in per]) for k in spec}
        vb = max(256, self.opts.val_batch // max(1, len(self.members)))
        sums = torch.zeros((len(self.members), 6), dtype=torch.float64, device=self.device)
        totals = []
        for s in range(0, n_val, vb):
            e = min(n_val, s + vb)
            noise = {k: _slice_frames(v, s, e) for k, v in self._val_noise.items()}
            frame_totals, part = self.val_fn(self.params, self.hp, self.val[s:e], noise)
            sums += part.double()
            totals.append(frame_totals)
        self.template.train()
        median = torch.cat(totals, 1).median(dim=1).values.double()
        means = sums / n_val
        return torch.cat([means[:, :3], median[:, None], means[:, 3:]], 1)

    # -- per-member state ------------------------------------------------------------------------
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's state_dict in the single-model layout (loads with ``load_model``)."""
        out = {}
        for k, v in self.template.state_dict().items():
            out[k] = (self.params[k][i] if k in self.params else v).detach().cpu().clone(memory_format=torch.contiguous_format)
        return out

    def optimizer_state(self, i: int) -> dict[str, Any]:
        return {
            "kind": OPTIMIZER_KIND,
            "step": float(self.opt.steps[i]),
            "exp_avg": {n: t[i].detach().cpu().clone(memory_format=torch.contiguous_format) for n, t in self.opt.exp_avg.items()},
            "exp_avg_sq": {n: t[i].detach().cpu().clone(memory_format=torch.contiguous_format) for n, t in self.opt.exp_avg_sq.items()},
        }


def permutations(rows: int, gens: list[torch.Generator], threaded: bool = True) -> list[torch.Tensor]:
    """One random permutation of ``rows`` per generator. Why threads: 64 members' permutations
    of a 270k-frame split take a quarter of a second one after another on one core while the
    GPU waits at the start of every epoch; torch releases the GIL in randperm, and each member
    keeps its own generator, so the result is the same as drawing them in turn."""
    if not threaded or len(gens) == 1:
        return [torch.randperm(rows, generator=g) for g in gens]
    with ThreadPoolExecutor(max_workers=min(len(gens), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda g: torch.randperm(rows, generator=g), gens))


def _unstacked(member_loss: Callable, x_stacked: bool) -> Callable:
    """``member_loss`` (or ``member_val``) over a stack of exactly one member, called directly:
    the leading member dimension is squeezed off (a view, so the gradient lands in the stacked
    parameters at the cost of a reshape) and put back on the outputs: the same signature and
    shapes as the vmap."""

    def fn(params, hp, x, noise):
        one = {n: p.squeeze(0) for n, p in params.items()}
        first, sums = member_loss(one, {h: v.squeeze(0) for h, v in hp.items()}, x.squeeze(0) if x_stacked else x,
                                  {k: v.squeeze(0) for k, v in noise.items()})
        return first.unsqueeze(0), sums.unsqueeze(0)  # the mean loss, or the per-frame totals

    return fn


def _slice_frames(v: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Frames s:e of stacked noise: (N, frames, m), or (N, J, frames, m) with J samples."""
    return v.narrow(2 if v.dim() == 4 else 1, s, e - s)


# -- the training loop over a stack ------------------------------------------------------------
@dataclass
class StackCallbacks:
    on_epoch: Callable[[Member, EpochRecord], None] | None = None
    save: Callable[[Stack, int, Member, bool], None] | None = None  # (stack, index, member, improved)
    on_done: Callable[[Member], None] | None = None


def train_stack(stack: Stack, cb: StackCallbacks) -> None:
    """Lock-step epochs until every member has stopped; Ctrl-C marks the running ones interrupted
    (their last.pt holds the last completed epoch) and re-raises."""
    try:
        while stack.members and any(not m.done for m in stack.members):
            epoch = min(m.epoch for m in stack.members if not m.done)
            t0 = time.perf_counter()
            n_seen = stack.run_epoch(epoch)
            train_means = (stack.acc / max(1, n_seen)).tolist()
            val = stack.validate().tolist()
            if stack.device.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            for i, m in enumerate(stack.members):
                if m.done:
                    continue
                _finish_epoch(stack, i, m, epoch, train_means[i], val[i], secs, n_seen, cb)
            if sum(m.done for m in stack.members) * 4 >= len(stack.members) and any(not m.done for m in stack.members):
                stack.compact()
    except KeyboardInterrupt:
        for m in stack.members:
            if not m.done:
                m.status, m.message = "interrupted", f"interrupted; {m.run_dir / 'last.pt'} holds the last completed epoch"
        raise


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


def _finish_epoch(stack: Stack, i: int, m: Member, epoch: int, tr: list[float], va: list[float], secs: float, n_seen: int,
                  cb: StackCallbacks) -> None:
    vals = dict(zip(VALIDATION_COLUMNS, va))
    crit = vals[STOP_COLUMNS[m.opts.stop_on]]
    # diverged: the training loss or the run's own statistic is not finite (another statistic
    # may overflow on a loud frame, the one-sample loss above all: recorded, not fatal)
    if not all(math.isfinite(v) for v in tr) or not math.isfinite(crit):
        kept = (f"the last completed epoch is kept in {m.run_dir / 'last.pt'}" if m.wrote_checkpoint
                else "no epoch had completed, so no checkpoint was written")
        what = "training" if not all(math.isfinite(v) for v in tr) else "validation"
        m.status = "diverged"
        m.message = (f"{m.name}: {what} loss became {tr[0] if what == 'training' else crit} at epoch {epoch}; stopped, {kept} "
                     "(the data was checked finite: the optimisation diverged; try a lower --lr)")
        stack.active[i] = 0.0
        if cb.on_done:
            cb.on_done(m)
        return
    improved = crit < m.best_val
    if improved:
        m.best_val, m.best_epoch, m.since_best = crit, epoch, 0
    else:
        m.since_best += 1
    rec = EpochRecord(epoch, *tr, **vals, seconds=round(secs, 4), frames_per_s=round(n_seen / secs, 1), best=improved,
                      engine=stack.engine, stack_members=len(stack.members))
    m.history.append(asdict(rec))
    m.epoch = epoch + 1
    if m.since_best >= m.opts.patience:
        m.status, m.message = "stopped", f"early stopping: no improvement for {m.opts.patience} epochs"
        late = median_still_improving(m.history, m.best_epoch, m.opts.patience) if m.opts.stop_on == "mean" else None
        if late is not None:
            m.advice = (f"stopped on the mean validation loss (best epoch {m.best_epoch}), but the median per-frame loss was "
                        f"still improving (best at epoch {late}): a few validation frames dominate the mean; "
                        "--stop-on posterior-mean (the default) has no sampling noise (README, train)")
            m.message += f"; {m.advice}"
    elif m.epoch >= m.opts.epochs:
        m.status, m.message = "finished", f"reached the epoch cap ({m.opts.epochs})"
    if cb.save:
        cb.save(stack, i, m, improved)
    m.wrote_checkpoint = True
    if cb.on_epoch:
        cb.on_epoch(m, rec)
    if m.done:
        stack.active[i] = 0.0
        if cb.on_done:
            cb.on_done(m)
