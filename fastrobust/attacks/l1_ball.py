"""The Euclidean projection onto the intersection of an L1 ball and the input box: the
projection of the L1 attacks (APGD-L1, PGD-L1, Square-L1; Croce & Hein, "Mind the box", 2021).

For a centre x and a perturbation y (x + y the point to project), the projected perturbation
is, coordinate by coordinate,

    delta_i = sign(y_i) * clip(|y_i| - lam, 0, room_i),    room_i = hi - x_i (y_i >= 0), x_i - lo (y_i < 0),

with lam = 0 when the box alone keeps sum_i min(|y_i|, room_i) <= eps, and otherwise the lam > 0
at which h(lam) = sum_i clip(|y_i| - lam, 0, room_i) = eps. h is piecewise linear and
decreasing, with breakpoints |y_i| - room_i (coordinate i starts to shrink) and |y_i| (it
reaches 0): one sort of the 2D breakpoints per row gives h at each of them by a cumulative
sum, and lam by linear interpolation on the segment where h crosses eps.
fastrobust.reference.l1_ball has the same projection by bisection on lam.
"""
from __future__ import annotations

import torch


def project_l1_box(x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The perturbation delta closest to y (Euclidean) with ||delta||_1 <= eps and
    lo <= x + delta <= hi. x, y: (n, ...); eps: (n,) or (1,); returns delta shaped like y."""
    n = y.shape[0]
    flat_x, flat_y = x.flatten(1), y.flatten(1)
    size = flat_y.abs()
    room = torch.where(flat_y >= 0, hi - flat_x, flat_x - lo).clamp(min=0)
    eps = eps.to(flat_y.dtype).reshape(-1, 1).expand(n, 1)
    boxed = torch.minimum(size, room)
    lam = _shrinkage(size, room, eps)
    lam = torch.where(boxed.sum(1, keepdim=True) > eps, lam, torch.zeros_like(lam))
    delta = torch.sign(flat_y) * (size - lam).clamp(min=0).minimum(room)
    return delta.reshape(y.shape)


def _shrinkage(size: torch.Tensor, room: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(n, 1): the lam >= 0 with sum_i clip(size_i - lam, 0, room_i) = eps (where h(0) > eps)."""
    n, dims = size.shape
    points = torch.cat((size, size - room), 1)  # where each coordinate stops / starts shrinking
    slope_change = torch.cat((torch.ones_like(size), -torch.ones_like(size)), 1)
    points, order = points.sort(dim=1, descending=True, stable=True)
    slope = torch.cumsum(slope_change.gather(1, order), 1)  # -dh/dlam just below each breakpoint
    # h at each breakpoint: h(p_1) = 0, h(p_{k+1}) = h(p_k) + slope_k (p_k - p_{k+1})
    gaps = points[:, :-1] - points[:, 1:]
    h = torch.cat((torch.zeros_like(points[:, :1]), torch.cumsum(slope[:, :-1] * gaps, 1)), 1)
    k = (h < eps).sum(1, keepdim=True).clamp(min=1, max=2 * dims - 1)  # h(p_{k-1}) < eps <= h(p_k)
    above, slope_above = points.gather(1, k - 1), slope.gather(1, k - 1)
    h_above = h.gather(1, k - 1)
    lam = above - (eps - h_above) / slope_above.clamp(min=1)
    return lam.clamp(min=0)


def sparse_l1_step_(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
                    sparsity: float, lo: float, hi: float, descent: bool = False) -> torch.Tensor:
    """PGD's L1 step, in place on x: alpha along sign(g) on the round((1 - sparsity) * dims)
    coordinates of largest |g| (at least one), normalised to L1 length 1 (the sparse L1
    descent of Tramer & Boneh 2019), then projected onto the eps L1 ball within the box."""
    flat = grad.flatten(1)
    dims = flat.shape[1]
    count = min(max(int(round((1 - sparsity) * dims)), 1), dims)
    top = flat.abs().topk(count, dim=1).indices
    direction = torch.zeros_like(flat).scatter_(1, top, torch.sign(flat.gather(1, top)))
    direction = direction / (direction.abs().sum(1, keepdim=True) + 1e-12)
    dtype = alpha.dtype
    step = alpha.reshape(-1, 1).to(dtype) * direction.to(dtype) * (-1 if descent else 1)
    delta = (x - x0).flatten(1).to(dtype) + step
    delta = project_l1_box(x0.flatten(1).to(dtype), delta, eps, lo, hi)
    return x.copy_((x0.flatten(1).to(dtype) + delta).reshape(x.shape))


def uniform_l1_start(x0: torch.Tensor, eps: torch.Tensor, lo: float, hi: float, generator) -> torch.Tensor:
    """A point uniform in the eps L1 ball around each row (a Laplace direction scaled to L1 norm
    eps * U^(1/dims)), projected onto the box (and the ball): a new tensor in x0's layout."""
    n = x0.shape[0]
    dims = x0.shape[1:].numel()
    dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    u = torch.rand((n, dims), generator=generator, device=x0.device, dtype=dtype).clamp(min=1e-12)
    laplace = torch.where(torch.rand((n, dims), generator=generator, device=x0.device, dtype=dtype) < 0.5, 1.0, -1.0) \
        * -torch.log(u)
    radius = eps.to(dtype).reshape(-1, 1) * torch.rand((n, 1), generator=generator, device=x0.device,
                                                         dtype=dtype).pow(1 / dims)
    delta = laplace / laplace.abs().sum(1, keepdim=True) * radius
    delta = project_l1_box(x0.flatten(1).to(dtype), delta, eps, lo, hi)
    return torch.empty_like(x0).copy_((x0.flatten(1).to(dtype) + delta).reshape(x0.shape))
