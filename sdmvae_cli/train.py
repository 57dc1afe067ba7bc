"""`sdmvae train`: Adam, early stopping on the validation loss, self-describing checkpoints.

Speed: one optimisation step of these small MLPs is launch-bound on a GPU (tens of tiny
kernels), so on CUDA ``graph_steps`` consecutive steps (forward, backward, Adam with
``capturable=True``, dictionary projection, loss accumulation) are captured once in a CUDA
graph and replayed; per replay the host only copies the next batch indices into a static
buffer. Steps left over at the end of a chunk run eagerly with the same optimizer. On the CPU
the same step runs eagerly. Partial batches are dropped (the permutation changes every epoch,
so every frame is still seen).

Reproducibility: permutations come from a dedicated seeded generator and sampling noise from
the seeded global RNG; both states are stored in ``last.pt`` so ``--resume`` continues
bit-identically on the CPU. Validation uses a fixed noise seed so epochs are comparable.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sdmvae_cli.atomic import write_json, write_text
from sdmvae_cli.checkpoint import read_checkpoint, save_checkpoint
from sdmvae_cli.errors import SdmvaeError
from sdmvae_cli.frames import FrameSource, device_budget, open_frames
from sdmvae_cli.nets import ModelConfig, SpectrogramVAE, build_model
from sdmvae_cli.prepare import load_prepare_info
from sdmvae_cli.stft import StftConfig

log = logging.getLogger("sdmvae")


@dataclass
class TrainOptions:
    lr: float = 1e-4
    batch_size: int = 128
    epochs: int = 500
    patience: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cuda_graph: bool = True
    compile: str = "auto"  # auto (= on with CUDA) | on (loss and Adam) | loss | off: torch.compile for fused kernels
    graph_steps: int = 32
    val_batch: int = 16384
    max_device_fraction: float = 0.5  # of free device memory (or host RAM) for resident frames
    max_device_bytes: int | None = None  # explicit cap, mostly for tests of the streaming path

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingDiverged(SdmvaeError):
    pass


@dataclass
class EpochRecord:
    epoch: int
    train_total: float
    train_recon: float
    train_kl: float
    val_total: float
    val_recon: float
    val_kl: float
    seconds: float
    frames_per_s: float
    best: bool = False


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_val: float
    stopped_early: bool
    interrupted: bool = False
    extra: dict = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SdmvaeError("--device cuda asked for, but no CUDA GPU is available (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise SdmvaeError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def make_optimizer(model: SpectrogramVAE, lr: float, device: torch.device, capturable: bool, compiled: bool = False) -> torch.optim.Adam:
    """Adam: fused on the CPU; on CUDA capturable (for graph replay) and fused, or foreach when
    torch.compile generates the update itself."""
    kw: dict[str, Any] = {"fused": True}  # the CPU also has a fused Adam kernel (~0.2 ms a step saved)
    if device.type == "cuda":
        kw = {"capturable": capturable, "foreach": True} if compiled else {"capturable": capturable, "fused": True}
    return torch.optim.Adam(model.param_groups(lr), lr=lr, **kw)


class Stepper:
    """One optimisation step, eager or replayed from a CUDA graph of ``k`` steps."""

    def __init__(self, model: SpectrogramVAE, opt: torch.optim.Optimizer, data: torch.Tensor, batch: int, device: torch.device,
                 compile_loss: bool = False, compile_opt: bool = False):
        self.model, self.opt, self.data, self.batch, self.device = model, opt, data, batch, device
        self.acc = torch.zeros(3, device=device)  # sums of total, recon, kl over the epoch
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_steps = 0
        self.idx_buf: torch.Tensor | None = None
        self.loss_fn = self._objective
        if compile_loss:
            import torch._inductor.config as inductor_config

            inductor_config.fallback_random = True  # aten RNG: graph-capturable and seed-compatible
            self.loss_fn = torch.compile(self._objective, dynamic=False)
        # the fused multi-tensor Adam kernel runs with little parallelism on these small models
        # (~28 us a step on an H100); Inductor's horizontally fused update is several times faster
        self.opt_step = torch.compile(opt.step, fullgraph=False) if compile_opt else opt.step

    def _objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean total loss (what is minimised) and the (total, recon, kl) sums (what is logged)."""
        t = self.model.loss(x)
        return t.total.mean(), torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum()])

    def step(self, idx: torch.Tensor) -> None:
        """One eager optimisation step on the frames at ``idx`` (also what a graph captures)."""
        x = self.data.index_select(0, idx)
        # CUDA graphs: grads allocated inside the capture (the documented pattern); CPU: keep
        # the buffers and zero them, which avoids an allocation per parameter per step (~20 %)
        self.opt.zero_grad(set_to_none=self.device.type == "cuda")
        loss, sums = self.loss_fn(x)
        loss.backward()
        self.opt_step()
        self.model.post_step()
        self.acc += sums.detach()

    def capture(self, k: int, warmup_idx: torch.Tensor) -> None:
        """Capture ``k`` steps; ``warmup_idx`` (3, batch) are real steps run on a side stream."""
        self.idx_buf = torch.zeros((k, self.batch), dtype=torch.long, device=self.device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(warmup_idx.shape[0]):
                self.step(warmup_idx[i])
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                for j in range(k):
                    self.step(self.idx_buf[j])
        except Exception as exc:  # an op that cannot be captured leaves the CUDA RNG unusable: stop cleanly
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise SdmvaeError(f"CUDA graph capture failed ({first}); re-run with --no-cuda-graph") from None
        self.graph, self.graph_steps = g, k

    def replay(self, idx: torch.Tensor) -> None:
        assert self.graph is not None and self.idx_buf is not None
        self.idx_buf.copy_(idx, non_blocking=True)
        self.graph.replay()


@torch.no_grad()
def evaluate_loss(model: SpectrogramVAE, src: FrameSource, batch: int, seed: int) -> tuple[float, float, float]:
    """Mean per-frame (total, recon, kl) over a split, with fixed sampling noise."""
    devices = [src.device] if src.device.type == "cuda" else []
    sums = torch.zeros(3, dtype=torch.float64, device=src.device)
    n = 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for rows in src.chunks(torch.Generator().manual_seed(seed)):
            buf = src.buffer
            for s in range(0, rows, batch):
                t = model.loss(buf[s : min(rows, s + batch)])
                sums += torch.stack([t.total.sum(), t.recon.sum(), t.kl.sum()]).double()
            n += rows
    vals = (sums / n).tolist()
    return vals[0], vals[1], vals[2]


#: a folder holding any of these holds an earlier run (never replaced silently); config.json
#: and loss.png alone are what a run stopped before its first epoch leaves: nothing to lose
RUN_FILES = ("best.pt", "last.pt", "history.csv")
RUN_EXTRAS = ("config.json", "loss.png")


def check_options(opts: TrainOptions) -> None:
    """Library-side ranges (the CLI checks the same where it parses, as usage errors)."""
    # 0 is allowed here (a frozen model: a diagnostic, used by the tests); the CLI asks for > 0
    if not (isinstance(opts.lr, (int, float)) and opts.lr >= 0 and math.isfinite(opts.lr)):
        raise SdmvaeError(f"the learning rate must be a non-negative number, got {opts.lr}")
    for name in ("batch_size", "epochs", "patience"):
        if getattr(opts, name) < 1:
            raise SdmvaeError(f"{name} must be at least 1, got {getattr(opts, name)}")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train into a folder holding an earlier run, unless ``overwrite``."""
    from sdmvae_cli.outputs import check_dir_destination

    check_dir_destination(run_dir)
    old = [n for n in RUN_FILES if (run_dir / n).exists()]
    if old and not overwrite:
        raise SdmvaeError(f"{run_dir} already holds a run ({', '.join(old)}); continue it with --resume {run_dir}, "
                          "replace it with --overwrite, or choose another --out")


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files (``--overwrite``, once every check has passed) so the new
    run's files are never mixed with the old ones."""
    from sdmvae_cli.outputs import remove_stale_temporaries

    for n in RUN_FILES + RUN_EXTRAS:
        (run_dir / n).unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)


def check_frames(frames, where: str, chunk: int = 65536) -> None:
    """Power frames must be finite and non-negative: a NaN in the data would surface epochs
    later as a diverged loss and be blamed on the learning rate. One vectorised pass."""
    for s in range(0, frames.shape[0], chunk):
        block = np.asarray(frames[s : s + chunk])
        ok = np.isfinite(block).all(axis=1) & (block >= 0).all(axis=1)
        if not ok.all():
            bad = s + int(np.argmin(ok))
            kind = "NaN or inf" if not np.isfinite(block[bad - s]).all() else "negative power"
            raise SdmvaeError(f"{where}: the prepared frames hold {kind} (frame {bad}); the data is corrupt, "
                              "not the training: re-run `sdmvae prepare --force`")


def check_prepared(prepared_dir: Path) -> tuple[dict, StftConfig]:
    info = load_prepare_info(prepared_dir)
    stft = StftConfig.from_dict(info["stft"])
    if stft != StftConfig():
        log.warning("%s was prepared with a non-default STFT config %s", prepared_dir, stft.to_dict())
    return info, stft


def write_history(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
    w.writeheader()
    w.writerows(history)
    write_text(run_dir / "history.csv", buf.getvalue())


def train(
    prepared_dir: str | Path,
    model_cfg: ModelConfig | None,
    opts: TrainOptions,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress_factory: Callable[[int, int], Any] | None = None,
) -> TrainResult:
    """Train (or resume) a model on a prepared directory; checkpoints go to ``run_dir``.

    ``progress_factory(epoch, steps)`` may return an object with ``update(n)`` and ``close()``.
    A fresh run refuses a ``run_dir`` that holds an earlier run unless ``overwrite``.
    """
    prepared_dir, run_dir = Path(prepared_dir), Path(run_dir)
    check_options(opts)
    info, stft = check_prepared(prepared_dir)
    if not resume:
        check_run_dir(run_dir, overwrite)
    state: dict[str, Any] | None = None
    if resume:
        last = run_dir / "last.pt"
        if not last.exists():
            raise SdmvaeError(f"--resume: {last} does not exist")
        state = read_checkpoint(last)
        if state.get("data_fingerprint") != info.get("fingerprint"):
            raise SdmvaeError(f"--resume: {prepared_dir} is not the prepared data this run was trained on (fingerprint differs)")
        if StftConfig.from_dict(state["config"]["stft"]) != stft:
            raise SdmvaeError("--resume: the prepared data uses another STFT config than the checkpoint")
        model_cfg = ModelConfig.from_dict(state["config"]["model"])
        opts = TrainOptions(**{**state["config"]["train"], "device": opts.device, "epochs": opts.epochs})
    assert model_cfg is not None
    if model_cfg.n_bins != stft.n_bins:
        raise SdmvaeError(f"model expects {model_cfg.n_bins} bins but the prepared data has {stft.n_bins}")
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    model = build_model(model_cfg).to(device)
    use_graph = device.type == "cuda" and opts.cuda_graph and model.graph_safe
    if device.type == "cuda" and opts.cuda_graph and not model.graph_safe:
        log.info("%s samples with ops that cannot be captured in a CUDA graph; training eagerly", model_cfg.model)
    if opts.compile not in ("auto", "on", "loss", "off"):
        raise SdmvaeError(f"--compile must be auto, on, loss or off, got {opts.compile!r}")
    compile_mode = ("on" if device.type == "cuda" and model.graph_safe else "off") if opts.compile == "auto" else opts.compile
    opt = make_optimizer(model, opts.lr, device, capturable=use_graph, compiled=compile_mode == "on")
    perm_gen = torch.Generator().manual_seed(opts.seed)

    budget = opts.max_device_bytes if opts.max_device_bytes is not None else device_budget(device, opts.max_device_fraction)
    frames = {s: open_frames(prepared_dir, s) for s in ("train", "validation")}
    for s, arr in frames.items():
        if arr.shape[1] != stft.n_bins:
            raise SdmvaeError(f"{prepared_dir}/{s}/frames.npy has {arr.shape[1]} bins; its prepare.json says {stft.n_bins}")
        check_frames(arr, f"{prepared_dir}/{s}/frames.npy")
    train_src = FrameSource.create(frames["train"], device, budget)
    val_src = FrameSource.create(frames["validation"], device, budget)
    if len(train_src) < opts.batch_size:
        raise SdmvaeError(f"the train split has {len(train_src)} frames, fewer than one batch ({opts.batch_size})")

    history: list[dict] = []
    start_epoch, best_val, best_epoch, since_best = 0, math.inf, -1, 0
    if state is not None:
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer_state"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_val, best_epoch, since_best = float(state["best_val"]), int(state["best_epoch"]), int(state["since_best"])
        torch.set_rng_state(state["rng"]["torch"])
        perm_gen.set_state(state["rng"]["perm"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
    if not resume:
        clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": model_cfg.to_dict(), "stft": stft.to_dict(), "train": opts.to_dict(), "seed": opts.seed}
    write_json(run_dir / "config.json", config | {"prepared_dir": str(prepared_dir), "data_fingerprint": info.get("fingerprint")})

    stepper = Stepper(model, opt, train_src.buffer, opts.batch_size, device,
                      compile_loss=compile_mode in ("on", "loss"), compile_opt=compile_mode == "on")
    interrupted = False

    def payload(epoch: int) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "perm": perm_gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "config": config,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": opt.state_dict(),
            "epoch": epoch,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "since_best": since_best,
            "history": history,
            "data_fingerprint": info.get("fingerprint"),
            "prepared_dir": str(prepared_dir),
            "rng": rng,
        }

    def kept() -> str:
        if (run_dir / "last.pt").exists():
            return f"the last completed epoch is kept in {run_dir}/last.pt"
        return "no epoch had completed, so no checkpoint was written"

    stopped_early = since_best >= opts.patience  # a resumed run that had already stopped
    try:
        for epoch in range(start_epoch, opts.epochs if not stopped_early else start_epoch):
            t0 = time.perf_counter()
            model.set_epoch(epoch)
            model.train()
            stepper.acc.zero_()
            n_seen = 0
            steps_total = len(train_src) // opts.batch_size
            bar = progress_factory(epoch, steps_total) if progress_factory else None
            for rows in train_src.chunks(perm_gen):
                perm = torch.randperm(rows, generator=perm_gen).to(device)
                nb = rows // opts.batch_size
                idx = perm[: nb * opts.batch_size].view(nb, opts.batch_size)
                i = 0
                if use_graph and stepper.graph is None and nb >= opts.graph_steps + 3:
                    stepper.capture(opts.graph_steps, idx[:3])
                    i = 3
                    if bar:
                        bar.update(3)
                if stepper.graph is not None:
                    k = stepper.graph_steps
                    while i + k <= nb:
                        stepper.replay(idx[i : i + k])
                        i += k
                        if bar:
                            bar.update(k)
                while i < nb:
                    stepper.step(idx[i])
                    i += 1
                    if bar:
                        bar.update(1)
                n_seen += nb * opts.batch_size
            if bar:
                bar.close()
            tr = (stepper.acc / max(1, n_seen)).tolist()
            if not all(math.isfinite(v) for v in tr):
                raise TrainingDiverged(
                    f"training loss became {tr[0]} at epoch {epoch} (the data was checked finite: the optimisation diverged); "
                    f"stopped, {kept()} (try a lower --lr or --input-transform log)"
                )
            model.eval()
            va = evaluate_loss(model, val_src, opts.val_batch, seed=opts.seed + 1)
            if not math.isfinite(va[0]):
                raise TrainingDiverged(f"validation loss became {va[0]} at epoch {epoch}; stopped, {kept()}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            improved = va[0] < best_val
            if improved:
                best_val, best_epoch, since_best = va[0], epoch, 0
            else:
                since_best += 1
            rec = EpochRecord(epoch, *tr, *va, seconds=round(secs, 4), frames_per_s=round(n_seen / secs, 1), best=improved)
            history.append(asdict(rec))
            if improved:
                save_checkpoint(run_dir / "best.pt", payload(epoch))
            save_checkpoint(run_dir / "last.pt", payload(epoch))
            write_history(run_dir, history)
            if on_epoch:
                on_epoch(rec)
            if since_best >= opts.patience:
                stopped_early = True
                break
    except KeyboardInterrupt:
        interrupted = True
    return TrainResult(run_dir, history, best_epoch, best_val, stopped_early, interrupted)


def plot_history(run_dir: str | Path, history: list[dict]) -> Path | None:
    """loss.png: train/validation total loss per epoch."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdmvae_cli.atomic import atomic_path

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(ep, [h["train_total"] for h in history], label="train")
    ax.plot(ep, [h["val_total"] for h in history], label="validation")
    best = min(history, key=lambda h: h["val_total"])
    ax.axvline(best["epoch"], color="grey", ls=":", label=f"best (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per frame (IS + KL)")
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
