"""margin_loss (CW margin, DLR; untargeted and targeted) on every backend against the float64
reference: values, gradients, dtypes, clamping, gradcheck, opcheck, compile and bad inputs."""
import math

import pytest
import torch

import fastrobust
from fastrobust.reference.margin_loss import margin_loss as reference_margin_loss
from fastrobust.testing import (BACKWARD_TOL, FORWARD_TOL, assert_close_to_oracle, backends,
                                raises_value_check)

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")

# (rows, classes): minimal class counts, one class per lane and more classes than lanes; on
# CUDA up to 32 classes take the thread-per-row kernel (64 rows a block: 130 rows fill two
# blocks and start a third), more the warp-per-row one.
SHAPES = [(6, 4), (5, 10), (130, 10), (67, 32), (3, 33), (2, 100), (0, 10)]
VARIANTS = [("cw", False, math.inf), ("cw", True, math.inf), ("cw", False, 0.5), ("dlr", False, math.inf),
            ("dlr", True, math.inf)]


def inputs(rows, classes, dtype=torch.float32, device="cpu", seed=0, targeted=False):
    """Distinct logits (no ties, so every max and sort has one answer) and labels; targets
    differ from the labels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.stack([torch.randperm(classes, generator=g).double() for _ in range(rows)]) if rows else \
        torch.empty(0, classes, dtype=torch.float64)
    logits = logits * 0.37 + 0.01 * torch.rand(rows, classes, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (rows,), generator=g)
    targets = (labels + torch.randint(1, classes, (rows,), generator=g)) % classes if targeted else None
    logits = logits.to(device=device, dtype=dtype)
    return logits, labels.to(device), None if targets is None else targets.to(device)


def value_and_grad(fn, logits, labels, targets, kind, kappa, grad_loss):
    z = logits.detach().clone().requires_grad_(True)
    loss = fn(z, labels, targets, kind, kappa)
    grad, = torch.autograd.grad(loss, z, grad_loss) if loss.numel() else (torch.zeros_like(z),)
    return loss, grad


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,targeted,kappa", VARIANTS)
def test_matches_reference(backend, dtype, kind, targeted, kappa):
    for i, (rows, classes) in enumerate(SHAPES):
        logits, labels, targets = inputs(rows, classes, dtype, backend.device, seed=i, targeted=targeted)
        grad_loss = torch.randn(rows, generator=torch.Generator().manual_seed(i)).to(backend.device, dtype)
        loss, grad = value_and_grad(backend.op("margin_loss"), logits, labels, targets, kind, kappa, grad_loss)
        to64 = lambda t: None if t is None else t.cpu()
        loss64, grad64 = value_and_grad(reference_margin_loss, logits.cpu().double(), to64(labels), to64(targets),
                                        kind, kappa, grad_loss.cpu().double())
        assert loss.dtype == dtype and loss.shape == (rows,) and grad.shape == logits.shape
        lowp = None
        if dtype in (torch.float16, torch.bfloat16):
            lowp = value_and_grad(reference_margin_loss, logits.cpu(), to64(labels), to64(targets), kind, kappa,
                                  grad_loss.cpu())
        assert_close_to_oracle(loss, loss64, dtype, FORWARD_TOL, lowp and lowp[0], name="loss")
        assert_close_to_oracle(grad, grad64, dtype, BACKWARD_TOL, lowp and lowp[1], name="grad")


def test_known_values():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])
    labels = torch.tensor([0, 1])
    targets = torch.tensor([2, 0])
    cw = fastrobust.ops.margin_loss(logits, labels, kind="cw")
    assert cw.tolist() == [1.0 - 3.0, 5.0 - 2.0]
    assert fastrobust.ops.margin_loss(logits, labels, kind="cw", kappa=2.0).tolist() == [-2.0, 2.0]
    assert fastrobust.ops.margin_loss(logits, labels, targets, kind="cw").tolist() == [0.0 - 3.0, 0.0 - 5.0]
    dlr = fastrobust.ops.margin_loss(logits, labels, kind="dlr")
    torch.testing.assert_close(dlr, torch.tensor([-(3.0 - 1.0) / (3.0 - 0.0), -(2.0 - 5.0) / (5.0 - 1.0)]))
    dlr_t = fastrobust.ops.margin_loss(logits, labels, targets, kind="dlr")
    torch.testing.assert_close(dlr_t, torch.tensor([-(3.0 - 0.0) / (3.0 - 0.5 * (0.0 - 1.0)),
                                                    -(2.0 - 0.0) / (5.0 - 0.5 * (1.0 + 0.0))]))


def test_ties_go_to_the_lower_class():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]], requires_grad=True)
    loss = fastrobust.ops.margin_loss(logits, torch.tensor([0]), kind="cw")
    grad, = torch.autograd.grad(loss.sum(), logits)
    assert grad.tolist() == [[-1.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("kind,targeted,kappa", VARIANTS)
def test_gradcheck(kind, targeted, kappa):
    logits, labels, targets = inputs(4, 6, torch.float64, targeted=targeted)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fastrobust.ops.margin_loss(z, labels, targets, kind, kappa), (logits,))


def test_opcheck():
    for kind, targeted, kappa in VARIANTS:
        logits, labels, targets = inputs(5, 10, targeted=targeted)
        torch.library.opcheck(torch.ops.fastrobust.margin_loss.default,
                              (logits.requires_grad_(True), labels, targets, kind, kappa))


def test_compile_fullgraph():
    logits, labels, targets = inputs(5, 10, targeted=True)

    def f(z):
        return fastrobust.ops.margin_loss(z, labels, targets, "dlr").sum()

    z = logits.clone().requires_grad_(True)
    grad_eager, = torch.autograd.grad(f(z), z)
    grad_compiled, = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(z), z)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", backends())
def test_errors_name_the_argument(backend):
    dev = backend.device
    op = backend.op("margin_loss")
    logits, labels, targets = inputs(3, 10, device=dev, targeted=True)
    cases = [
        ((logits[0], labels, None, "cw", math.inf), "logits must be a 2-D tensor"),
        ((logits, labels.int(), None, "cw", math.inf), "labels must be int64"),
        ((logits, labels[:2], None, "cw", math.inf), r"labels must have shape \[3\]"),
        ((logits, labels, targets[:1], "cw", math.inf), r"targets must have shape \[3\]"),
        ((logits, labels, None, "ce", math.inf), 'kind must be "cw" or "dlr"'),
        ((logits[:, :2], labels.clamp(max=1), None, "dlr", math.inf), "dlr loss needs at least 3 classes"),
        ((logits[:, :3], labels.clamp(max=2), targets.clamp(max=2), "dlr", math.inf),
         r"dlr \(targeted\) loss needs at least 4 classes"),
        ((logits, labels, None, "cw", math.nan), "kappa must not be NaN"),
        ((logits.long(), labels, None, "cw", math.inf), "logits must have a floating-point dtype"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("which", ["labels", "targets"])
@pytest.mark.parametrize("bad", [10, -1])
def test_class_indices_out_of_range(backend, which, bad):
    logits, labels, targets = inputs(3, 10, device=backend.device, targeted=True)
    (labels if which == "labels" else targets)[1] = bad
    for kind, backward in (("cw", False), ("dlr", False), ("dlr", True)):
        with raises_value_check(backend, rf"{which} must be class indices in \[0, 10\)",
                                r"labels and targets must be class indices"):
            if backward:
                backend.op("_margin_loss_backward")(torch.ones(3, dtype=logits.dtype, device=logits.device), logits,
                                                    labels, targets, kind, math.inf)
            else:
                backend.op("margin_loss")(logits, labels, targets, kind, math.inf)
