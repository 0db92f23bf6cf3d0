"""Neural-ODE blocks: TisODE (Yan et al., ICLR 2020; spec/methods-more.md §2) and the vanilla
ODE net it is compared with.

    ODEBlock(func, t_end=1.0, method="euler", step=0.05, steady_state=(0.9, 1.5))

integrates dz/dt = func(t, z) from z(0) = the input to z(t_end) and returns z(t_end). With
method="euler" (the official solver) the fixed-grid Euler steps run here, in one loop of plain
tensor ops (torch.compile traces it whole); any other method ("dopri5", "rk4", ...) runs
torchdiffeq.odeint (odeint_adjoint with adjoint=True).

The steady-state regulariser of TisODE: with steady_state=(t1, t3), every forward in train mode
also integrates |f(z(t))| over [t1, t3] (past t_end if t3 > t_end) along the same trajectory,
and block.steady_state_loss holds L_ss = mean(∫_{t1}^{t3} |f(z(t))| dt) over the elements (the
official `euler_abs` solver: y_{k+1} = y_k + h |f(z_k)|), for a recipe to add to its loss. With
torchdiffeq's methods it is the augmented state d[z; a]/dt = [f(z); |f(z)|] from t1 to t3.

One graph: with method="euler", torch.compile(block, fullgraph=True) traces the whole solve (the
grid and the window are Python floats; no tensor is read on the host), in eval mode and in train
mode with the steady-state window (block.steady_state_loss is then set by the compiled forward).

    cuda_graphed(block, example_input)

captures the Euler block's forward and backward as CUDA graphs: it is
torch.cuda.make_graphed_callables(block, (example_input,)), which returns the block itself with
its forward replaced. It raises ValueError where a capture would be wrong: example_input not a
CUDA tensor (or parameters on another device), a torchdiffeq method (their solvers read values
on the host), or train mode with a steady_state window (block.steady_state_loss is a Python side
effect of the forward: a replay would not update it, so it would keep the capture's tensor,
outside autograd; capture in eval mode, or build the block with steady_state=None). What
make_graphed_callables asks of its callers holds: call it only with inputs of example_input's
shape, dtype, device and requires_grad; its outputs and gradients are static buffers that the
next call overwrites (clone what you keep); the parameters must keep their storage (in-place
optimizer steps are fine); in the other training mode than the capture's the eager forward runs;
no double backward.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .._checks.common import real_number

EULER = "euler"


def group_count(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class TisODEFunc(nn.Module):
    """f(z) = ReLU(GN(conv3x3(ReLU(GN(conv3x3(z)))))), the convolutions without bias, and no
    time input: the time-invariant function of TisODE (the official MNIST net's)."""

    time_invariant = True

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(group_count(channels, groups), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(group_count(channels, groups), channels)

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:  # t is ignored: time-invariant
        return torch.relu(self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(z))))))


class ConcatConv2d(nn.Conv2d):
    """A 3x3 convolution of [t; z]: the time as a constant extra input channel (with bias)."""

    def __init__(self, channels: int):
        super().__init__(channels + 1, channels, 3, padding=1, bias=True)

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(z[:, :1]) * t
        return super().forward(torch.cat((tt, z), dim=1))


class ConcatODEFunc(nn.Module):
    """The vanilla ODE net's f(t, z): TisODEFunc's layers with the time concatenated as a channel
    to each convolution's input (ConcatConv2d, with bias)."""

    time_invariant = False

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.conv1 = ConcatConv2d(channels)
        self.norm1 = nn.GroupNorm(group_count(channels, groups), channels)
        self.conv2 = ConcatConv2d(channels)
        self.norm2 = nn.GroupNorm(group_count(channels, groups), channels)

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm2(self.conv2(t, torch.relu(self.norm1(self.conv1(t, z))))))


def euler_grid(t_end: float, step: float) -> Tuple[int, float]:
    """(steps, h): the fixed grid of the official solver, round(t_end / step) steps of
    h = t_end / steps (exactly `step` when it divides t_end)."""
    steps = max(1, round(t_end / step))
    return steps, t_end / steps


class ODEBlock(nn.Module):
    """z(t_end) of dz/dt = func(t, z), z(0) = input. See the module docstring.

    Args:
        func: a module called as func(t, z) (TisODEFunc, ConcatODEFunc, or the caller's).
        t_end: the integration time T (1.0).
        method: "euler" (default: fixed grid, run here) or a torchdiffeq method name.
        step: the Euler step (0.05, TisODE's; the vanilla ODE net's is 0.1); with torchdiffeq
            the step of its fixed-grid methods.
        rtol: torchdiffeq's adaptive methods' relative tolerance.
        atol: their absolute tolerance.
        adjoint: torchdiffeq's adjoint method for the gradients (not with "euler").
        steady_state: None, or (t1, t3) with 0 <= t1 < t3: the window of the steady-state
            loss (official (0.9, 1.5) with T = 1), computed in train mode.
    """

    def __init__(self, func: Callable, t_end: float = 1.0, method: str = EULER, step: float = 0.05,
                 rtol: float = 1e-3, atol: float = 1e-3, adjoint: bool = False,
                 steady_state: Optional[Tuple[float, float]] = None):
        super().__init__()
        if not callable(func):
            raise ValueError(f"func must be callable as func(t, z), got {type(func).__name__}")
        self.func = func
        self.t_end = real_number(t_end, "t_end", 0.0, inclusive=False)
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a solver name ('euler' or a torchdiffeq method), got {method!r}")
        self.method = method
        self.step = real_number(step, "step", 0.0, inclusive=False)
        self.rtol = real_number(rtol, "rtol", 0.0, inclusive=False)
        self.atol = real_number(atol, "atol", 0.0, inclusive=False)
        if not isinstance(adjoint, bool):
            raise ValueError(f"adjoint must be True or False, got {adjoint!r}")
        if adjoint and method == EULER:
            raise ValueError("adjoint: the built-in Euler solver backpropagates through its steps; "
                             "choose a torchdiffeq method (e.g. method='rk4') for the adjoint")
        self.adjoint = adjoint
        if steady_state is not None:
            if (not isinstance(steady_state, (tuple, list)) or len(steady_state) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in steady_state)
                    or not 0 <= steady_state[0] < steady_state[1] or not math.isfinite(steady_state[1])):
                raise ValueError(f"steady_state must be None or (t1, t3) with 0 <= t1 < t3, got {steady_state!r}")
            steady_state = (float(steady_state[0]), float(steady_state[1]))
        self.steady_state = steady_state
        self.steady_state_loss: Optional[torch.Tensor] = None

    def extra_repr(self) -> str:
        return (f"t_end={self.t_end}, method={self.method!r}, step={self.step}, steady_state={self.steady_state}"
                + (", adjoint=True" if self.adjoint else ""))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        want_ss = self.steady_state is not None and self.training
        if self.method == EULER:
            out, ss = self._euler(z, want_ss)
        else:
            out, ss = self._torchdiffeq(z, want_ss)
        self.steady_state_loss = ss
        return out

    def _euler(self, z: torch.Tensor, want_ss: bool):
        """The official fixed-grid Euler: z_{k+1} = z_k + h f(t_k, z_k) on t_k = k h; with the
        steady-state window, acc += h |f(z_k)| for the grid points t_k in [t1, t3), the
        trajectory continued past t_end up to t3."""
        steps, h = euler_grid(self.t_end, self.step)
        t1, t3 = self.steady_state if want_ss else (0.0, 0.0)
        last = max(steps, math.ceil(t3 / h - 1e-9)) if want_ss else steps
        out, acc = None, None
        # the grid's times made once (no host-to-device copy per step): t_k = k h
        times = torch.arange(last, dtype=z.dtype, device=z.device) * h
        for k in range(last):
            t = k * h
            f = self.func(times[k], z)
            if want_ss and t1 - 1e-9 <= t < t3 - 1e-9:
                acc = h * f.abs() if acc is None else torch.add(acc, f.abs(), alpha=h)
            z = torch.add(z, f, alpha=h)  # one kernel (and one in the backward), not h * f then +
            if k + 1 == steps:
                out = z
        ss = None
        if want_ss:
            ss = acc.mean() if acc is not None else out.new_zeros(())
        return out, ss

    def _odeint(self):
        try:
            import torchdiffeq
        except ImportError as exc:  # a dependency: present unless removed by hand
            raise ImportError(f"method={self.method!r} needs torchdiffeq (pip install torchdiffeq)") from exc
        return torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint

    def _torchdiffeq(self, z: torch.Tensor, want_ss: bool):
        odeint = self._odeint()
        options = {"step_size": self.step} if self.method in ("euler", "midpoint", "rk4", "explicit_adams",
                                                              "implicit_adams") else None
        kwargs = dict(method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        if self.adjoint:
            kwargs["adjoint_params"] = tuple(self.func.parameters()) if isinstance(self.func, nn.Module) else ()
        if not want_ss:
            t = torch.tensor([0.0, self.t_end], dtype=z.dtype, device=z.device)
            return odeint(self.func, z, t, **kwargs)[-1], None
        t1, t3 = self.steady_state
        t = torch.tensor(sorted({0.0, t1, self.t_end}), dtype=z.dtype, device=z.device)
        path = odeint(self.func, z, t, **kwargs)
        out = path[list(t.tolist()).index(self.t_end)]
        z1 = path[list(t.tolist()).index(t1)]

        func = self.func

        class Augmented(nn.Module):  # d[z; a]/dt = [f(z); |f(z)|]
            def __init__(self):
                super().__init__()
                self.func = func

            def forward(self, s, state):
                f = self.func(s, state[0])
                return f, f.abs()

        window = torch.tensor([t1, t3], dtype=z.dtype, device=z.device)
        if self.adjoint:
            kwargs["adjoint_params"] = tuple(Augmented().parameters())
        _, acc = odeint(Augmented(), (z1, torch.zeros_like(z1)), window, **kwargs)
        return out, acc[-1].mean()


def cuda_graphed(block: ODEBlock, example_input: torch.Tensor) -> ODEBlock:
    """torch.cuda.make_graphed_callables(block, (example_input,)) for a block with method="euler":
    the block itself, its forward (and backward) replayed as CUDA graphs. ValueError for what a
    capture would get wrong; see the module docstring for the rules a graphed block follows."""
    if not isinstance(block, ODEBlock):
        raise ValueError(f"cuda_graphed: block must be an ODEBlock, got {type(block).__name__}")
    if block.method != EULER:
        raise ValueError(f"cuda_graphed: only method='euler' can be captured, got {block.method!r} "
                         "(torchdiffeq's solvers read values on the host, which a capture forbids)")
    if block.training and block.steady_state is not None:
        raise ValueError("cuda_graphed: a block in train mode with a steady_state window sets "
                         "block.steady_state_loss in its forward, a side effect a CUDA graph does not replay; "
                         "capture it in eval mode (block.eval()) or build it with steady_state=None")
    if not isinstance(example_input, torch.Tensor) or example_input.device.type != "cuda":
        where = example_input.device if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"cuda_graphed: example_input must be a CUDA tensor, got {where}")
    elsewhere = [name for name, p in block.named_parameters() if p.device != example_input.device]
    if elsewhere:
        raise ValueError(f"cuda_graphed: the parameters must be on {example_input.device} with the input; "
                         f"{', '.join(elsewhere)} are not")
    return torch.cuda.make_graphed_callables(block, (example_input,))
