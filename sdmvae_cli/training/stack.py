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
  at a time, through :func:`sdmvae_cli.nets.noise.draw_noise` (fixed order and shapes);
- its own Adam state and learning rate (:mod:`sdmvae_cli.training.optim`: Adam is elementwise,
  a stacked Adam is N Adams, one fused kernel call over the stacked tensors where the members
  share a learning rate);
- its own scalar hyper-parameters (``SCALAR_HPARAMS``: beta, alpha, threshold, ...), passed
  to the model as 0-d tensors under vmap;
- its own validation noise, fixed for the whole run (drawn once from seed + 1:
  :mod:`sdmvae_cli.training.validation`);
- its own early stopping (:mod:`sdmvae_cli.training.early_stopping`). A stopped or diverged
  member is masked out at once (its gradient is zero) and dropped from the stack when a quarter
  of the stack is idle (the epoch loop: :mod:`sdmvae_cli.training.loop`).

On CUDA, ``graph_steps`` consecutive steps (forward, backward, Adam, projections) are captured
in one CUDA graph and replayed; the host only fills the static index and noise buffers. On a
CPU with compile, one step (forward, backward, Adam, projections) is one compiled function
(:meth:`Stack._whole_step_fn`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.func import functional_call, vmap

from sdmvae_cli.core.errors import SdmvaeError, first_line
from sdmvae_cli.data.frames import FrameSource
from sdmvae_cli.nets import REGISTRY, ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.nets.base import SCALAR_HPARAMS
from sdmvae_cli.nets.noise import draw_noise
from sdmvae_cli.training.optim import StackedAdam, adam_scales, adam_update_
from sdmvae_cli.training.options import PER_MEMBER_OPTIONS, TrainOptions
from sdmvae_cli.training.validation import fixed_noise, validation_statistics

log = logging.getLogger("sdmvae")


@dataclass
class Member:
    """One run inside a stack: its identity, options and progress."""

    name: str
    cfg: ModelConfig
    opts: TrainOptions
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # the next epoch to run
    first_epoch: int = 0  # the first epoch this process trains (a resumed run's throughput counts from it)
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
STREAMED_STACK = (
    "a stack of several members needs the train split resident in memory: raise max_device_fraction "
    "or max_device_bytes in the spec (or train the runs one at a time)"
)


def group_key(cfg: ModelConfig, opts: TrainOptions, name: str = "") -> str:
    """Members can share a stack when only scalar hyper-parameters and per-member options differ,
    and their family stacks at all (:attr:`SpectrogramVAE.STACKABLE`; else each run ``name`` is
    its own stack)."""
    structural = {k: v for k, v in cfg.to_dict().items() if k not in SCALAR_HPARAMS}
    shared_opts = {k: v for k, v in opts.to_dict().items() if k not in PER_MEMBER_OPTIONS}
    alone = "" if REGISTRY[cfg.model].STACKABLE else name
    return json.dumps([structural, shared_opts, alone], sort_keys=True)


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

    def __init__(
        self,
        members: list[Member],
        states: list[dict],
        optim_states: list[dict | None],
        src: FrameSource,
        val: torch.Tensor,
        device: torch.device,
        use_graph: bool,
        compile_loss: bool,
    ):
        self.device = device
        self.members = members
        self.template: SpectrogramVAE = build_model(members[0].cfg).to(device)
        self.template.train()
        self.param_names = [n for n, _ in self.template.named_parameters()]
        self.buffers = dict(self.template.named_buffers())  # shared by every member (D of a fixed dictionary, epoch)
        self.opts = members[0].opts
        if not src.resident and len(members) > 1:
            raise SdmvaeError(STREAMED_STACK)
        self.src, self.val = src, val
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
        else:
            # subnormal floats flushed to zero: an RVAE at lr 2e-3 on this CPU went 10x slower
            # within two epochs (5.2k -> 1.5k frames/s) on their slow microcode path, and 16k with
            # flushing (docs/benchmarks.md "Sequence models"); they hold nothing a loss needs
            torch.set_flush_denormal(True)
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
        self.opt = StackedAdam.resumed(self.params, lrs, optim_states, fused=None if self.fused_adam else False)
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
            self.loss_fn = (
                torch.compile(train_fn, dynamic=None) if self.compile_loss else train_fn
            )  # dynamic member count after a compaction

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
        x = self.src.gather(idx)
        if self.whole_step:
            o = self.opt  # noise made contiguous: a block's last, shorter slice would otherwise recompile
            try:
                step_size, bc2_sqrt = adam_scales(o.steps + 1, o.lrs)
                self._compiled_step(
                    self.params,
                    self.hp,
                    x,
                    {k: v.contiguous() for k, v in noise.items()},
                    self.active,
                    self.acc,
                    o.exp_avg,
                    o.exp_avg_sq,
                    step_size,
                    bc2_sqrt,
                )
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
        first = first_line(exc)
        log.warning(
            "torch.compile of the training step failed (%s); training without it (--compile off skips the attempt)", first
        )
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
            raise SdmvaeError(f"CUDA graph capture failed ({first_line(exc)}); re-run with --no-cuda-graph") from None
        self.graph = g

    def run_epoch(self, epoch: int) -> int:
        """Train every member for one epoch; returns the frames each member saw.

        Batches: a fresh random permutation per member per epoch (per chunk when a single run
        streams a split too large for the device); partial batches are dropped."""
        self.template.set_epoch(epoch)
        self.acc.zero_()
        seen = 0
        for rows in self.src.chunks(self.members[0].perm_gen):
            seen += self._run_chunk(rows) * self.src.row_frames
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
        """Per member, (N, 7) in the order of VALIDATION_COLUMNS (:mod:`sdmvae_cli.training.validation`),
        with each member's noise fixed for the whole run (drawn once from its seed + 1)."""
        self.template.eval()
        if self._val_noise is None:
            self._val_noise = fixed_noise(self.template, [m.opts.seed + 1 for m in self.members], self.val.shape[0], self.device)
        out = validation_statistics(
            self.val_fn,
            self.params,
            self.hp,
            self.val,
            self._val_noise,
            len(self.members),
            self.opts.val_batch,
            {k: self.template.noise_batch_axis(k) for k in self._val_noise},
        )
        self.template.train()
        return out

    # -- per-member state ------------------------------------------------------------------------
    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's state_dict in the single-model layout (loads with ``load_model``)."""
        out = {}
        for k, v in self.template.state_dict().items():
            out[k] = (self.params[k][i] if k in self.params else v).detach().cpu().clone(memory_format=torch.contiguous_format)
        return out

    def optimizer_state(self, i: int) -> dict[str, Any]:
        """Member i's Adam state, as its last.pt stores it (:meth:`StackedAdam.member_state`)."""
        return self.opt.member_state(i)


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
        first, sums = member_loss(
            one,
            {h: v.squeeze(0) for h, v in hp.items()},
            x.squeeze(0) if x_stacked else x,
            {k: v.squeeze(0) for k, v in noise.items()},
        )
        return first.unsqueeze(0), sums.unsqueeze(0)  # the mean loss, or the per-frame totals

    return fn
