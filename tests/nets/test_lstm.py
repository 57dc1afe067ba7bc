"""LSTMLayer: nn.LSTM's maths and parameters, with an unrolled path that runs under vmap over
stacked members (nn.LSTM has no vmap batching rule: pytorch/pytorch#105982)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from sdmvae_cli.nets.lstm import LSTMLayer, under_vmap

IN, H, B, T = 5, 6, 3, 7
KINDS = ["forward", "reverse", "bidirectional"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def make_layer(kind: str, seed: int = 0, **kw) -> LSTMLayer:
    torch.manual_seed(seed)
    return LSTMLayer(IN, H, reverse=kind == "reverse", bidirectional=kind == "bidirectional", **kw)


def reference(layer: LSTMLayer) -> nn.LSTM:
    """nn.LSTM with the layer's weights (a reverse-only layer's are those of a forward nn.LSTM)."""
    ref = nn.LSTM(IN, H, batch_first=True, bidirectional=layer.bidirectional)
    ref.load_state_dict(layer.state_dict())
    return ref


def run_reference(ref: nn.LSTM, x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """nn.LSTM's output; a reverse-only layer is nn.LSTM on the time-flipped input, flipped back."""
    if reverse:
        return ref(x.flip(-2))[0].flip(-2)
    return ref(x)[0]


def data(seed: int = 1, shape: tuple[int, ...] = (B, T, IN)) -> tuple[torch.Tensor, torch.Tensor]:
    """An input and the weights of a random linear functional of the output (non-trivial grads)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(*shape[:-1], 2 * H, generator=g)


def out_weights(w: torch.Tensor, layer: LSTMLayer) -> torch.Tensor:
    return w if layer.bidirectional else w[..., :H]


# -- the maths: both paths equal nn.LSTM -------------------------------------------------------
@pytest.mark.parametrize("unrolled", [False, True], ids=["fused", "unrolled"])
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_equal_nn_lstm(kind, unrolled):
    layer = make_layer(kind, unrolled=unrolled)
    ref = reference(layer)
    x, w = data()
    w = out_weights(w, layer)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    y_ref = run_reference(ref, x2, layer.reverse)
    assert y.shape == (B, T, 2 * H if kind == "bidirectional" else H)
    torch.testing.assert_close(y, y_ref, **TOL)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    ref_params = dict(ref.named_parameters())
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=name)


def test_reverse_runs_backwards_in_time():
    """Not just a relabelled forward pass: the reverse layer's last output sees only the last
    step (so it equals a forward run over that step alone), and its first output sees them all."""
    layer = make_layer("reverse", unrolled=True)
    fwd = LSTMLayer(IN, H)
    fwd.load_state_dict(layer.state_dict())
    x, _ = data()
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y[:, -1], fwd(x[:, -1:])[:, 0], **TOL)
        x2 = x.clone()
        x2[:, -1] += 3.0
        assert (layer(x2)[:, 0] - y[:, 0]).abs().max() > 1e-5  # float rounding is ~1e-7
        torch.testing.assert_close(fwd(x2)[:, 0], fwd(x)[:, 0], **TOL)  # the forward one does not


@pytest.mark.parametrize("unrolled", [False, True], ids=["fused", "unrolled"])
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input(kind, unrolled):
    layer = make_layer(kind, unrolled=unrolled)
    x, _ = data(shape=(T, IN))
    with torch.no_grad():
        y = layer(x)
        assert y.shape == (T, 2 * H if kind == "bidirectional" else H)
        torch.testing.assert_close(y, run_reference(reference(layer), x, layer.reverse), **TOL)
        torch.testing.assert_close(y, layer(x[None])[0], **TOL)


# -- parameters: nn.LSTM's names, shapes, initialisation, state dict -----------------------------
@pytest.mark.parametrize("bidirectional", [False, True])
def test_parameters_and_initialisation_are_nn_lstm(bidirectional):
    """Same names and shapes in the same order, and the same uniform(+-1/sqrt(H)) draws: with one
    seed both modules start from identical weights."""
    torch.manual_seed(5)
    layer = LSTMLayer(IN, H, bidirectional=bidirectional)
    torch.manual_seed(5)
    ref = nn.LSTM(IN, H, batch_first=True, bidirectional=bidirectional)
    ours, theirs = list(layer.named_parameters()), list(ref.named_parameters())
    assert [(n, p.shape) for n, p in ours] == [(n, p.shape) for n, p in theirs]
    assert len(ours) == (8 if bidirectional else 4)
    for (n, p), (_, q) in zip(ours, theirs):
        assert torch.equal(p, q), n
        assert p.abs().max() <= 1 / H**0.5 and p.std() > 0.2 / H**0.5


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    torch.manual_seed(7)
    ref = nn.LSTM(IN, H, batch_first=True, bidirectional=kind == "bidirectional")
    layer = make_layer(kind, seed=8)
    assert not torch.equal(layer.weight_hh_l0, ref.weight_hh_l0)
    layer.load_state_dict(ref.state_dict())  # strict: the same keys
    back = nn.LSTM(IN, H, batch_first=True, bidirectional=kind == "bidirectional")
    back.load_state_dict(layer.state_dict())
    for name, p in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], p) and torch.equal(back.state_dict()[name], p), name
    x, _ = data()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), run_reference(back, x, layer.reverse), **TOL)


def test_reverse_with_bidirectional_is_refused():
    with pytest.raises(ValueError, match="exclusive"):
        LSTMLayer(IN, H, reverse=True, bidirectional=True)


# -- vmap over stacked members -----------------------------------------------------------------
def test_vmap_over_nn_lstm_and_over_lstm_layer():
    """nn.LSTM under vmap over 3 stacked members fails on this torch with the missing batching
    rule (#105982); if a torch release adds it, that part passes and its result is compared with
    ours. Either way LSTMLayer under vmap equals a loop over the members, outputs and grads."""
    members = [make_layer("bidirectional", seed=s) for s in range(3)]
    x, w = data(shape=(3, B, T, IN))
    template = make_layer("bidirectional")
    params, _ = stack_module_state(members)
    y = vmap(lambda p, xi: functional_call(template, p, (xi,)))(params, x)
    (y * w).sum().backward()
    for i, m in enumerate(members):
        yi = m(x[i])  # automatic: the fused path outside vmap
        torch.testing.assert_close(y[i], yi, **TOL)
        (yi * w[i]).sum().backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(params[name].grad[i], p.grad, **TOL, msg=name)

    ref = nn.LSTM(IN, H, batch_first=True, bidirectional=True)
    ref_params = {k: v.detach() for k, v in params.items()}
    try:
        y_ref = vmap(lambda p, xi: functional_call(ref, p, (xi,))[0])(ref_params, x)
    except RuntimeError as exc:
        assert "Batching rule not implemented for aten::lstm" in str(exc)
    else:  # torch has gained the rule: LSTMLayer's unrolled path could go
        torch.testing.assert_close(y_ref, y.detach(), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_nested_transforms_pick_the_unrolled_path(kind, monkeypatch):
    """vmap(grad) (the weight is then a grad wrapper, not a batched tensor), grad(vmap) (the
    whole-step trainer) and a shared input: the automatic choice is unrolled under any vmap and
    fused outside, and every combination gives the per-member gradient of a plain loop."""
    paths: list[str] = []
    for name in ("_fused", "_unrolled"):
        orig = getattr(LSTMLayer, name)
        monkeypatch.setattr(LSTMLayer, name, lambda self, x, _o=orig, _n=name: (paths.append(_n), _o(self, x))[1])
    members = [make_layer(kind, seed=s) for s in range(3)]
    params = {k: v.detach() for k, v in stack_module_state(members)[0].items()}
    x, w = data()
    w = out_weights(w, members[0])
    template = make_layer(kind)

    def loss(p):
        return (functional_call(template, p, (x,)) * w).sum()

    per_member = vmap(grad(loss))(params)
    assert set(paths) == {"_unrolled"}
    whole = grad(lambda ps: vmap(loss)(ps).sum())(params)
    assert set(paths) == {"_unrolled"}
    paths.clear()
    for i, m in enumerate(members):
        g = grad(loss)({k: v.detach() for k, v in m.named_parameters()})
        for name in g:
            torch.testing.assert_close(per_member[name][i], g[name], **TOL, msg=name)
            torch.testing.assert_close(whole[name][i], g[name], **TOL, msg=name)
    assert set(paths) == {"_fused"}


def test_under_vmap_flag():
    seen: list[bool] = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        seen.append(under_vmap())
        return t.sum()

    t = torch.ones(2, 3)
    probe(t)
    grad(probe)(t)
    vmap(probe)(t)
    vmap(grad(probe))(t)
    assert seen == [False, False, True, True]


# -- torch.compile ------------------------------------------------------------------------------
def test_compiled_layer_equals_eager():
    """Under torch.compile the automatic choice is the unrolled path (fused, inductor would pick an
    inference-only mkldnn kernel when the weights need grad but the input does not); compiled
    output and weight gradients equal eager's. 5-17 s on a loaded 2-core CPU (inductor cache cold)."""
    layer = make_layer("reverse")
    x, w = data()
    w = out_weights(w, layer)
    try:
        y = torch.compile(layer, fullgraph=True)(x)
        (y * w).sum().backward()
    except torch._dynamo.exc.TorchDynamoException as exc:  # e.g. no working C++ compiler
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}")
    compiled = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    y_eager = layer(x)
    (y_eager * w).sum().backward()
    torch.testing.assert_close(y, y_eager, **TOL)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(compiled[n], p.grad, **TOL, msg=n)
