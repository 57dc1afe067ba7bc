"""A single-layer LSTM that also runs under ``torch.func.vmap`` over stacked parameters.

Why it exists: the stacked trainer (``training/stack.py``) runs N members at once through
``vmap(functional_call(model, params, ...))``, and ``torch.nn.LSTM`` cannot be vmapped: its
``aten::lstm.input`` has no batching rule (``RuntimeError: Batching rule not implemented``,
pytorch/pytorch#105982). The recurrent sequence VAEs (DKF, SRNN, RVAE) need both worlds, so
:class:`LSTMLayer` has ``nn.LSTM``'s parameters (names, shapes, initialisation: its state dict
loads into ``nn.LSTM`` and back) and two paths with the same maths:

* fused: ``torch.lstm``, the native kernel ``nn.LSTM`` itself calls (cuDNN on a GPU), used
  in eager mode outside vmap (plain autograd and ``torch.func.grad`` are fine with it);
* unrolled: the input projection of every step as one matrix product, then a Python loop over
  time of one ``h @ W_hh^T`` and the gate nonlinearities; made only of ops that have batching
  rules, so it works under vmap (and ``torch.func.grad``, ``torch.compile``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import TransformType, get_interpreter_stack

__all__ = ["LSTMLayer", "under_vmap"]


def under_vmap() -> bool:
    """Whether the caller runs inside ``torch.func.vmap`` at any nesting depth (eager only:
    dynamo cannot trace the stack walk, see :meth:`LSTMLayer.forward`).

    Why the interpreter stack and not ``is_batchedtensor(weight)``: under ``vmap(grad(f))`` the
    weight is a gradient wrapper around the batched tensor and reads as unbatched."""
    if not torch._C._are_functorch_transforms_active():
        return False
    return any(i.key() == TransformType.Vmap for i in get_interpreter_stack() or ())


class LSTMLayer(nn.Module):
    """One LSTM layer, batch first, zero initial state; returns the output sequence only.

    ``reverse=True`` runs from the last step to the first (outputs stay aligned with the input
    steps); its single direction uses the unsuffixed ``*_l0`` parameters, so its weights are
    those of an ``nn.LSTM`` applied to the time-flipped input. ``bidirectional=True`` adds the
    ``*_l0_reverse`` parameters and concatenates forward and backward outputs on the last dim,
    as ``nn.LSTM`` does. ``unrolled``: None picks the unrolled path under vmap (see
    :func:`under_vmap`) and ``torch.compile``, the fused one otherwise; True / False force a
    path (tests, benchmarks)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        reverse: bool = False,
        bidirectional: bool = False,
        unrolled: bool | None = None,
    ) -> None:
        super().__init__()
        if reverse and bidirectional:
            raise ValueError("reverse and bidirectional are exclusive: a bidirectional layer already runs both ways")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.reverse, self.bidirectional, self.unrolled = reverse, bidirectional, unrolled
        h4 = 4 * hidden_size
        for sfx in ("_l0", "_l0_reverse") if bidirectional else ("_l0",):  # nn.LSTM's order: same RNG draws
            self.register_parameter("weight_ih" + sfx, nn.Parameter(torch.empty(h4, input_size)))
            self.register_parameter("weight_hh" + sfx, nn.Parameter(torch.empty(h4, hidden_size)))
            self.register_parameter("bias_ih" + sfx, nn.Parameter(torch.empty(h4)))
            self.register_parameter("bias_hh" + sfx, nn.Parameter(torch.empty(h4)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s initialisation: every parameter uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        way = ", bidirectional=True" if self.bidirectional else ", reverse=True" if self.reverse else ""
        return f"{self.input_size}, {self.hidden_size}{way}"

    def _weights(self, sfx: str) -> list[torch.Tensor]:
        return [getattr(self, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, input_size) or unbatched (T, input_size) -> (B, T, H) or (B, T, 2H)."""
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        # under torch.compile: unrolled too. The fused op would be decomposed into a loop anyway,
        # and with a weight requiring grad and an input not, inductor picks an inference-only
        # mkldnn kernel and fails (dynamo does not trace nn.LSTM itself: config.allow_rnn)
        unrolled = self.unrolled
        if unrolled is None:
            unrolled = torch.compiler.is_compiling() or under_vmap()
        y = self._unrolled(x) if unrolled else self._fused(x)
        return y.squeeze(0) if unbatched else y

    def step(
        self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step of the cell: ``x_t`` (B, input_size) or (input_size,), ``state`` the
        previous (h, c) (None: zeros) -> the new (h, c).

        Why: a recurrence whose input at step t depends on the previous step's output of another
        network (RVAE's g^z_t runs on z_{t-1}, which is sampled from a head on g^z_{t-1}) cannot
        run the whole sequence at once. Same gate maths and parameters as the unrolled path (the
        ``*_l0`` direction; the order in time is the caller's), made of ops with batching rules."""
        if self.bidirectional:
            raise ValueError("a bidirectional layer has no single step: its backward direction needs the whole sequence")
        hs = self.hidden_size
        w_ih, w_hh, b_ih, b_hh = self._weights("_l0")
        if state is None:
            h = c = x_t.new_zeros((*x_t.shape[:-1], hs))
        else:
            h, c = state
        gates = F.linear(x_t, w_ih, b_ih + b_hh) + F.linear(h, w_hh)
        s = torch.sigmoid(gates)
        c = s[..., hs : 2 * hs] * c + s[..., :hs] * torch.tanh(gates[..., 2 * hs : 3 * hs])
        return s[..., 3 * hs :] * torch.tanh(c), c

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.LSTM``'s own kernel; a reverse-only layer runs it on the time-flipped input."""
        dirs = 2 if self.bidirectional else 1
        weights = self._weights("_l0") + (self._weights("_l0_reverse") if self.bidirectional else [])
        if self.reverse:
            x = x.flip(1)
        h0 = x.new_zeros(dirs, x.shape[0], self.hidden_size)
        # train flag: dropout is 0, but cuDNN keeps what its backward needs only in training mode
        y = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, torch.is_grad_enabled(), self.bidirectional, True)[0]
        return y.flip(1) if self.reverse else y

    def _unrolled(self, x: torch.Tensor) -> torch.Tensor:
        if self.bidirectional:
            fwd = _unrolled_direction(x, *self._weights("_l0"), reverse=False)
            return torch.cat([fwd, _unrolled_direction(x, *self._weights("_l0_reverse"), reverse=True)], -1)
        return _unrolled_direction(x, *self._weights("_l0"), reverse=self.reverse)


def _unrolled_direction(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, *, reverse: bool
) -> torch.Tensor:
    """One direction, step by step: the input projection of all T steps is one matrix product;
    the loop then does one ``h @ W_hh^T`` per step. Gates by slicing, in torch's order i, f, g, o
    (one sigmoid over all four, the g slice unused: one op instead of three under vmap)."""
    hs = w_hh.shape[-1]
    pre = F.linear(x, w_ih, b_ih + b_hh)  # (B, T, 4H)
    h = c = x.new_zeros(x.shape[0], hs)
    out: list[torch.Tensor] = []
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for t in steps:
        gates = pre[:, t] + F.linear(h, w_hh)
        s = torch.sigmoid(gates)
        c = s[:, hs : 2 * hs] * c + s[:, :hs] * torch.tanh(gates[:, 2 * hs : 3 * hs])
        h = s[:, 3 * hs :] * torch.tanh(c)
        out.append(h)
    if reverse:
        out.reverse()
    return torch.stack(out, 1)
