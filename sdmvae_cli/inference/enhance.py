"""Unsupervised speech enhancement with a trained prior (Leglaive, Girin & Horaud, MLSP 2018).

Model of the noisy STFT, frame t, bin f:

    x_ft = sqrt(g_t) s_ft + b_ft,   s_ft | z_t ~ N_c(0, sigma2_f(z_t)),   b_ft ~ N_c(0, (W H)_ft)

sigma2(z) = exp(decoder(z)) is the trained VAE's clean-speech variance, g_t a per-frame gain,
W H a rank-K NMF of the noise variance fitted on the noisy file alone (:mod:`sdmvae_cli.inference.nmf`).
No noisy training data is used: the only speech knowledge is the prior. An EM algorithm
alternates an E-step on the latent codes and the multiplicative M-step on (W, H, g); the
estimate is the posterior-mean Wiener filter

    s_hat_ft = E_q[ g_t sigma2_f(z_t) / (g_t sigma2_f(z_t) + (W H)_ft) ] x_ft

(the scaled speech sqrt(g) s, Monte Carlo average over samples of the latent), applied to the
noisy STFT and inverted with the noisy phase.

Two E-steps:

- ``vem`` (default, variational EM as in Sadeghi et al. 2020 and later work): a per-frame
  posterior q(latent | x) in the model's own family, initialised by the encoder on the noisy
  power, is refined by a few Adam steps per EM iteration on the ELBO
  E_q[log p(x | z)] - KL(q || prior), with the model's own reparameterised ``sample`` and ``kl``
  (so every registered model works through the common interface).
- ``mcem`` (Leglaive et al. 2018's Monte Carlo EM): random-walk Metropolis-Hastings chains on
  the latent, target p(x | z) p(latent), started at the encoder's posterior mean; the last
  samples of every chain feed the M-step and the Wiener filter. Needs an explicit prior density
  per family (:mod:`sdmvae_cli.inference.mcem`).

What "the latent" is per family (both methods): vae / laplace / cauchy: z itself (prior
N(0, I), Laplace(0, 1), Cauchy(0, 1)); sdm: the code a, with z = D a and its prior
N(0, diag(gamma)), gamma set in closed form to E[a^2] (SDM-VAE eq. 9; in VEM that is the
model's own KL, in MCEM an M-step update); vsc: the spike-and-slab code (slab value and
selection); threshold: its base code (VEM only).

Everything is vectorised over frames (and samples/chains); it runs on the model's device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from sdmvae_cli.audio.io import Audio, load_audio, restore, write_within_full_scale
from sdmvae_cli.audio.stft import StftConfig, istft, stft
from sdmvae_cli.core.errors import SdmvaeError, UsageError
from sdmvae_cli.inference.enhance_seq import vem_sequence
from sdmvae_cli.inference.mcem import check_mcem_prior, mcem, speech_variance
from sdmvae_cli.inference.nmf import EPS, NoiseNMF, init_nmf, is_objective, nmf_step, update_H, update_W
from sdmvae_cli.inference.resynth import plan_outputs
from sdmvae_cli.nets import SpectrogramVAE
from sdmvae_cli.nets.checkpoint import LoadedModel
from sdmvae_cli.nets.released import enhance_default_path

METHODS = ("vem", "mcem")

#: inclusive range of every integer knob. Why tops: a typo (``--nmf-rank 99999999999``) must be a
#: one-line usage error, not a 200 TB allocation or a run of days. Ranks beyond the 513 bins, more
#: than 1000 EM iterations, 100 steps or 32 chains (memory: chains x frames x 513) buy nothing.
#: The CLI's option signatures carry the same numbers (tests/inference/test_enhance.py checks they agree).
LIMITS: dict[str, tuple[int, int]] = {
    "iterations": (1, 1000),
    "nmf_rank": (1, 512),
    "steps": (0, 100),
    "samples": (1, 64),
    "wiener_samples": (1, 256),
    "chains": (1, 32),
    "mh_steps": (1, 100),
    "keep": (1, 100),
    "seed": (0, 2**32 - 1),
}
LR_MAX = 1.0  # Adam on the posterior's parameters: above 1 every step overshoots


@dataclass
class EnhanceOptions:
    """Every knob of the EM; the defaults are the ones benchmarked in docs/benchmarks.md."""

    method: str = "vem"  # vem | mcem
    iterations: int = 40  # EM iterations
    nmf_rank: int = 8  # K, rank of the noise NMF
    # vem
    steps: int = 4  # Adam steps on q per EM iteration
    lr: float = 0.05  # Adam learning rate on q's parameters (tuned on held-out dev speakers)
    samples: int = 1  # samples of q per gradient step / M-step
    wiener_samples: int = 16  # samples of q averaged by the final Wiener filter
    # mcem
    chains: int = 4  # parallel MH chains per frame
    mh_steps: int = 8  # MH steps per EM iteration
    keep: int = 2  # last states of every chain kept as samples for the M-step
    proposal_std: float = 0.2  # random-walk step (in prior standard deviations)
    seed: int = 0

    def validate(self) -> None:
        """The same ranges as the CLI's, for Python callers (the CLI refuses them at parse time)."""
        if self.method not in METHODS:
            raise SdmvaeError(f"unknown method {self.method!r}; expected {' or '.join(METHODS)}")
        for name, (lo, hi) in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
                raise SdmvaeError(f"--{name.replace('_', '-')} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.keep > self.mh_steps:
            raise SdmvaeError(f"--keep ({self.keep}) cannot exceed --mh-steps ({self.mh_steps})")
        if not 0 < self.lr <= LR_MAX:  # also refuses NaN
            raise SdmvaeError(f"--lr must be in (0, {LR_MAX:g}], got {self.lr}")
        if not 0 < self.proposal_std < float("inf"):
            raise SdmvaeError(f"--proposal-std must be > 0 and finite, got {self.proposal_std}")


@dataclass
class Enhancement:
    samples_16k: np.ndarray  # enhanced speech at the model rate, peak-normalised domain of the input
    output: np.ndarray  # at the source rate, length and level: what is written
    noise_16k: np.ndarray  # the residual (input minus enhanced), same domain as samples_16k
    objective: list[float] = field(default_factory=list)  # IS cost after each M-step


# -- helpers -----------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The prior is fixed: no gradients into the network's weights during the E-step."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def seeded(seed: int, device: torch.device) -> contextlib.AbstractContextManager:
    """Reproducible sampling without disturbing the caller's global RNG state."""
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    @contextlib.contextmanager
    def run():
        with ctx:
            torch.manual_seed(seed)
            yield

    return run()


def wiener_gain(speech: torch.Tensor, gain: torch.Tensor, nmf: NoiseNMF) -> torch.Tensor:
    """E[g sigma2 / (g sigma2 + W H)] over the leading sample axis: the posterior-mean filter."""
    s = gain[:, None] * speech
    return (s / (s + nmf.variance).clamp_min(EPS)).mean(0)


# -- variational E-step: the family's own posterior, in unconstrained coordinates --------------
#: posterior entries that are constrained, and (to unconstrained, back) maps; the rest are free
_POSITIVE = ("scale", "lam_shape", "lam_rate")
_UNIT = ("gamma",)


def to_free(post: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in post.items():
        if k in _POSITIVE:
            v = torch.log(v.clamp_min(1e-8))
        elif k in _UNIT:
            v = torch.logit(v.clamp(1e-6, 1 - 1e-6))
        out[k] = v.detach().clone().requires_grad_(True)
    return out


def from_free(free: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in free.items():
        if k in _POSITIVE:
            v = torch.exp(v)
        elif k in _UNIT:
            v = torch.sigmoid(v).clamp(1e-6, 1 - 1e-6)
        out[k] = v
    return out


def expand(post: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """n samples per frame in one batch: a leading sample axis on every posterior entry."""
    return {k: v.expand(n, *v.shape) for k, v in post.items()}


def vem(model: SpectrogramVAE, power: torch.Tensor, opts: EnhanceOptions, on_iter: Callable[[int], None] | None = None):
    """Variational EM; returns (speech variance samples for the filter, gain, nmf, objective)."""
    gen = torch.Generator().manual_seed(opts.seed)
    nmf = init_nmf(power, opts.nmf_rank, gen)
    gain = power.new_ones(power.shape[0])
    with torch.no_grad():
        free = to_free(model.encode(power))
    optimiser = torch.optim.Adam(list(free.values()), lr=opts.lr)
    history = []
    for it in range(opts.iterations):
        noise = nmf.variance.detach()
        speech = None
        for _ in range(opts.steps):
            post = expand(from_free(free), opts.samples)
            z = model.sample(post)  # (samples, frames, latent), reparameterised
            sig = speech_variance(model, z)
            v = gain[:, None] * sig + noise
            # negative ELBO: IS cost (the likelihood) + the family's own KL to its prior
            loss = ((power / v + torch.log(v)).sum(-1) + model.kl(post, z)).mean(0).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            speech = sig.detach()
        with torch.no_grad():
            if speech is None or opts.steps < 2:
                speech = speech_variance(model, model.sample(expand(from_free(free), opts.samples)))
            # else: the last step's samples (drawn from q one Adam step earlier) save a decoder pass
            nmf_step(power, speech, gain, nmf)
            history.append(float(is_objective(power, speech, gain, nmf)))
        if on_iter:
            on_iter(it)
    with torch.no_grad():
        speech = speech_variance(model, model.sample(expand(from_free(free), opts.wiener_samples)))
    return speech, gain, nmf, history


# -- dispatch ----------------------------------------------------------------------------------
def enhance_power(model: SpectrogramVAE, spec: torch.Tensor, opts: EnhanceOptions, on_iter: Callable[[int], None] | None = None):
    """Enhance one complex STFT (frames, bins) -> (enhanced STFT, IS objective per iteration)."""
    opts.validate()
    power = spec.abs().square()
    device = power.device
    with frozen(model), seeded(opts.seed, device):
        if model.SEQUENTIAL:  # the encoder itself is fine-tuned (inference/enhance_seq.py)
            speech, gain, nmf, history = vem_sequence(model, power, opts, on_iter)
        elif opts.method == "vem":
            speech, gain, nmf, history = vem(model, power, opts, on_iter)
        else:
            speech, gain, nmf, history = mcem(model, power, opts, on_iter)
        with torch.no_grad():
            est = wiener_gain(speech, gain, nmf) * spec
    return est, history


def enhance_audio(
    audio: Audio, lm: LoadedModel, opts: EnhanceOptions, on_iter: Callable[[int], None] | None = None
) -> Enhancement:
    """Enhance one loaded waveform with a loaded model; output at the input's rate/length/level."""
    cfg: StftConfig = lm.stft
    device = next(lm.model.parameters()).device
    x = torch.from_numpy(audio.samples).to(device)
    spec = stft(x, cfg)
    est_spec, history = enhance_power(lm.model, spec, opts, on_iter)
    if not torch.isfinite(est_spec).all():
        raise SdmvaeError("enhancement diverged (NaN/inf); try fewer --iterations or a smaller --lr")
    est = istft(est_spec, cfg, length=x.numel()).cpu().numpy()
    return Enhancement(est, restore(est, audio, cfg), audio.samples - est, history)


# -- NMF-only baseline -------------------------------------------------------------------------
def nmf_baseline(spec: torch.Tensor, speech_W: torch.Tensor, opts: EnhanceOptions) -> torch.Tensor:
    """Semi-supervised IS-NMF (the baseline of Leglaive et al. 2018): speech variance H_s W_s
    with a fixed dictionary W_s learned on clean training speech, noise H_n W_n fitted freely;
    the same Wiener filter. The prior is a speech NMF instead of a VAE."""
    power = spec.abs().square()
    gen = torch.Generator().manual_seed(opts.seed)
    noise = init_nmf(power, opts.nmf_rank, gen)
    speech = NoiseNMF(speech_W.to(power), init_nmf(power, speech_W.shape[0], gen).H)
    one = power.new_ones(power.shape[0])
    for _ in range(opts.iterations * max(1, opts.steps)):
        update_H(power, noise.variance[None], one, speech)  # speech activations, noise fixed
        update_H(power, speech.variance[None], one, noise)
        update_W(power, speech.variance[None], one, noise)
    return wiener_gain(speech.variance[None], one, noise) * spec


# -- files -------------------------------------------------------------------------------------
def check_enhance_prior(model: SpectrogramVAE, method: str) -> None:
    """One line before any file is touched for a prior ``method`` cannot use: a sequence family
    without an encoder to fine-tune (SRNN), or with MCEM, or an MCEM prior without a sampler
    (:func:`check_mcem_prior`)."""
    if model.SEQUENTIAL and model.encoder_prefixes() is None:
        raise SdmvaeError(f"--model is a {model.cfg.model} model, which cannot be an enhancement prior: {model.NO_ENHANCE}")
    if model.SEQUENTIAL and method == "mcem":
        raise SdmvaeError(f"--method mcem samples a frame-wise prior; a {model.cfg.model} prior takes --method vem")
    if method == "mcem":
        check_mcem_prior(model)


def family_options(opts: EnhanceOptions, model: SpectrogramVAE, given: set[str]) -> EnhanceOptions:
    """``opts`` with the family's own defaults (``ENHANCE_DEFAULTS``: a sequence prior's) for the
    options the caller did not set (``given``: the names it did)."""
    own = {k: v for k, v in model.ENHANCE_DEFAULTS.items() if k not in given}
    return dataclasses.replace(opts, **own) if own else opts


def resolve_prior(name: str | Path | None) -> str | Path:
    """`--model`: a checkpoint, run directory or released name (resolved once, by ``load_model``);
    None: the enhancement default (``enhance_default`` in models/default.json), not the
    resynthesis default."""
    return enhance_default_path() if name is None else name


def plan_enhance(
    inp: Path, dst: Path, *, folder: bool, from_list: bool = False, overwrite: bool = False, skip_existing: bool = False
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(pairs to enhance, existing outputs skipped). Every check is made before anything is
    created: an output folder inside the input folder is refused before it exists (the writer
    makes folders as it writes). ``folder``: OUT names a folder (``OUT/`` or an existing one).

    An existing output: refused (an earlier result is never replaced silently); ``overwrite``
    replaces it; ``skip_existing`` keeps it and enhances the rest, which is how an interrupted
    folder is finished (outputs are written atomically, so one that exists is complete)."""

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing contradict each other; choose one")
    many = from_list or inp.is_dir()
    target = dst / (inp.stem + ".wav") if folder and not many else dst
    pairs = plan_outputs(inp, target, from_list=from_list, overwrite=True)  # inputs, clashes, writability
    existing = [d for _, d in pairs if d.exists()]
    if existing and not (overwrite or skip_existing):
        if len(pairs) == 1:
            raise SdmvaeError(f"{existing[0]} already exists; pass --overwrite to replace it")
        raise SdmvaeError(
            f"{len(existing)} of {len(pairs)} outputs already exist (e.g. {existing[0]}); pass --skip-existing "
            "to keep them and enhance the rest, or --overwrite to replace them"
        )
    if skip_existing:
        done = set(existing)
        return [(s, d) for s, d in pairs if d not in done], existing
    return pairs, []


def enhance_file(src: Path, dst: Path, lm: LoadedModel, opts: EnhanceOptions) -> Enhancement:

    audio = load_audio(src, lm.stft)
    res = enhance_audio(audio, lm, opts)
    write_within_full_scale(dst, res.output, audio.source_rate, src, "enhanced speech")
    return res


def enhance_many(
    pairs: list[tuple[Path, Path]],
    lm: LoadedModel,
    opts: EnhanceOptions,
    progress: Callable[[], None] | None = None,
    written: list[Path] | None = None,
) -> list[tuple[Path, str]]:
    """Enhance every pair; returns the failures (source, one-line reason). Each output is
    appended to ``written`` as soon as it is complete, so a caller interrupted part-way (a file
    takes seconds) can still say what was kept."""
    opts.validate()
    failures = []
    for src, dst in pairs:
        try:
            enhance_file(src, dst, lm, opts)
            if written is not None:
                written.append(dst)
        except SdmvaeError as exc:
            failures.append((src, str(exc)))
        if progress:
            progress()
    return failures
