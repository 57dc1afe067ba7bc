"""`enhance` with a sequence prior: DVAE_SE's variational EM, the encoder fine-tuned per file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdmvae_cli.core.errors import SdmvaeError
from sdmvae_cli.inference.enhance import EnhanceOptions, check_enhance_prior, family_options
from sdmvae_cli.inference.enhance_seq import tuned_copy, vem_sequence
from sdmvae_cli.nets import ModelConfig, build_model


def _model(arch: str, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model=arch, latent=6, seq_len=10, rnn_hidden=12, **kw)).eval()


def _mixture(frames: int = 40) -> torch.Tensor:
    """Power of a harmonic 'speech' spectrum plus flat noise, frames x 513."""
    g = torch.Generator().manual_seed(0)
    f = torch.arange(513, dtype=torch.float32)
    speech = (torch.cos(f * 0.3) + 1.1) * torch.exp(-f / 100) * torch.rand((frames, 1), generator=g)
    return speech + 0.05 * torch.rand((frames, 513), generator=g)


@pytest.mark.parametrize(
    "arch, kw",
    [("dkf", {}), ("dkf", {"prior": "sdm", "k": 9}), ("rvae", {"non_causal": True}), ("srnn", {"ss_start": 1, "ss_end": 3})],
)
def test_only_the_encoder_is_tuned_and_the_loaded_prior_never_changes(arch, kw):
    model = _model(arch, **kw)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    work, tuned = tuned_copy(model)
    names = {n for n, p in work.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(model.encoder_prefixes()) for n in names)
    prior_parts = ("decoder", "out", "rnn_dec", "transition", "rnn_h", "x_to_h")
    assert any(n.startswith(prior_parts) for n, _ in work.named_parameters())
    assert not any(n.startswith(prior_parts) for n in names)
    opts = EnhanceOptions(iterations=6, steps=1, lr=1e-2, nmf_rank=3, wiener_samples=4)
    speech, gain, nmf, history = vem_sequence(model, _mixture(), opts)
    assert speech.shape == (4, 40, 513) and torch.isfinite(speech).all() and len(history) == 6
    assert history[-1] < history[0]  # the IS cost of the whole model falls over the EM
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_srnn_and_mcem_are_refused_in_one_line():
    with pytest.raises(SdmvaeError, match="teacher-forced"):
        check_enhance_prior(_model("srnn"), "vem")
    with pytest.raises(SdmvaeError, match="--method mcem samples a frame-wise prior"):
        check_enhance_prior(_model("dkf"), "mcem")
    check_enhance_prior(_model("dkf"), "vem")


def test_a_sequence_prior_takes_dvae_se_defaults_where_none_were_given():
    opts = EnhanceOptions()
    got = family_options(opts, _model("dkf"), {"lr"})
    assert (got.iterations, got.steps, got.lr) == (300, 1, opts.lr)
    frame = family_options(opts, build_model(ModelConfig(model="vae", latent=4)), set())
    assert frame == opts
    assert np.isclose(family_options(opts, _model("rvae"), set()).lr, 1e-3)
