"""Arguments checked before anything runs, with errors that name them: tensors on the meta
device mixed with real ones, the values inside eps / alpha / eta tensors, shapes the Python
wrappers must not reshape, tensors written in place that require grad, numbers given as
something else. On every backend; the emulator reports the CUDA kernels' device-side asserts."""
import math

import pytest
import torch

import fastrobust
from fastrobust.ops import (apgd_step_, cifs_reweight, cifs_targets, margin_loss, median3x3, nlm_gaussian,
                            pgd_random_init_, pgd_step_, pgd_update_best_, sparta)
from fastrobust.testing import backends, raises_value_check

pytestmark = pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")


def meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


# -- meta tensors among real ones ------------------------------------------------------------
# A call with one meta tensor dispatches to the fake kernel, which computes nothing: before, such
# a call returned without touching x, or returned uninitialised memory.

def step_inputs(rows=3, features=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(rows, features, generator=g)
    return x.clone(), x, torch.randn(rows, features, generator=g)


@pytest.mark.parametrize("which", ["x0", "grad", "eps", "active", "noise"])
def test_pgd_step_meta_argument_is_an_error(which):
    x, x0, grad = step_inputs()
    args = dict(x0=x0, grad=grad, eps=torch.tensor([0.1]), alpha=0.05, active=torch.ones(3, dtype=torch.bool),
                noise=torch.zeros_like(x))
    args[which] = meta(args[which])
    before = x.clone()
    with pytest.raises((RuntimeError, ValueError), match=f"{which} must be on the device of x"):
        pgd_step_(x, **args)
    assert torch.equal(x, before)


def test_other_pgd_ops_reject_meta_arguments():
    x, x0, grad = step_inputs()
    with pytest.raises(RuntimeError, match="x0 must be on the device of x"):
        pgd_random_init_(x, meta(x0), 0.1, seed=0)
    with pytest.raises(RuntimeError, match="x_prev must be on the device of x"):
        apgd_step_(x, meta(x.clone()), x0, grad, 0.1, 0.1)
    best_loss, success = torch.full((3,), -math.inf), torch.zeros(3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="loss must be on the device of best_x"):
        pgd_update_best_(x.clone(), best_loss, success, x, meta(torch.zeros(3)), torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("which,named", [("labels", "labels"), ("targets", "targets"), ("logits", "labels")])
def test_margin_loss_meta_argument_is_an_error(which, named):
    """margin_loss(logits, labels_on_meta) once returned a CPU tensor of uninitialised values."""
    args = {"logits": torch.randn(3, 5), "labels": torch.tensor([0, 1, 2]), "targets": torch.tensor([1, 2, 3])}
    args[which] = meta(args[which])
    with pytest.raises(RuntimeError, match=f"{named} must be on the device of logits"):
        margin_loss(args["logits"], args["labels"], args["targets"], kind="dlr")


def test_layer_ops_reject_meta_arguments():
    x = torch.randn(2, 3, 5, 6)
    with pytest.raises(RuntimeError, match="weight must be on the device of x"):
        sparta(x, meta(torch.zeros(3, 1, 3, 3)), torch.zeros(3))
    with pytest.raises(RuntimeError, match="phi must be on the device of theta"):
        nlm_gaussian(x, meta(x), x)
    with pytest.raises(RuntimeError, match="relevance must be on the device of feat"):
        cifs_reweight(x, meta(torch.randn(2, 3)))
    _, arg = torch.ops.fastrobust.median3x3(x)
    with pytest.raises(RuntimeError, match="arg must be on the device of grad_y"):
        torch.ops.fastrobust._median3x3_backward(x, meta(arg))
    assert median3x3(meta(x)).device.type == "meta"  # all-meta calls still infer shapes


# -- values inside eps / alpha / eta tensors -------------------------------------------------

BAD_VALUES = [-0.1, math.nan, math.inf]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("which", ["eps", "alpha"])
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_pgd_step_tensor_values_are_checked(backend, norm, which, bad):
    """A negative eps tensor once moved x by |eps|, a negative alpha turned ascent into descent,
    NaN was accepted; now the op refuses them (the CPU kernel on the host, the CUDA kernel with
    a device-side assert, which needs no host sync)."""
    x, x0, grad = (t.to(backend.device) for t in step_inputs())
    params = {"eps": torch.tensor([0.1, 0.1, 0.1]), "alpha": torch.tensor([0.05])}
    params[which][-1] = bad
    active = torch.tensor([True, False, True])  # an inactive row's value is checked too
    with raises_value_check(backend, f"{which} must be finite and >= 0", f"{which} must be finite and >= 0"):
        backend.op("pgd_step_")(x, x0, grad, params["eps"].to(backend.device), params["alpha"].to(backend.device),
                                active.to(backend.device), None, norm, 0.0, 1.0, False)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_init_and_apgd_values_are_checked(backend, norm):
    x, x0, grad = (t.to(backend.device) for t in step_inputs())
    bad = torch.tensor([0.1, -0.2, 0.1], device=backend.device)
    good = torch.tensor([0.1], device=backend.device)
    with raises_value_check(backend, "eps must be finite and >= 0", "eps must be finite and >= 0"):
        backend.op("pgd_random_init_")(x, x0, bad, norm, 0.0, 1.0, 0, 0)
    with raises_value_check(backend, "eta must be finite and >= 0", "eta must be finite and >= 0"):
        backend.op("apgd_step_")(x, x.clone(), x0, grad, bad, good, 0.75, norm, 0.0, 1.0)
    with raises_value_check(backend, "eps must be finite and >= 0", "eps must be finite and >= 0"):
        backend.op("apgd_step_")(x, x.clone(), x0, grad, good, bad, 0.75, norm, 0.0, 1.0)


@pytest.mark.parametrize("name,value", [("eps", -0.1), ("alpha", -0.05), ("eps", math.nan), ("alpha", math.inf)])
def test_python_numbers_are_checked(name, value):
    x, x0, grad = step_inputs()
    args = {"eps": 0.1, "alpha": 0.05, name: value}
    with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
        pgd_step_(x, x0, grad, **args)
    with pytest.raises(ValueError, match="eps must be a number or a floating-point tensor"):
        pgd_step_(x, x0, grad, "0.1", 0.05)


@pytest.mark.parametrize("shape", [(2, 1), (1, 2), (3, 1), (3,)])
def test_eps_shape_is_not_reshaped(shape):
    """(2, 1) and (1, 2) were flattened by the wrapper before the shape check."""
    x, x0, grad = step_inputs(rows=2)
    with pytest.raises((RuntimeError, ValueError), match=r"eps must hold one value or one per row \(2\)"):
        pgd_step_(x, x0, grad, torch.full(shape, 0.1), 0.05)


def test_cpu_eps_tensor_for_another_device_is_moved_not_refused():
    """A CPU eps (e.g. torch.tensor(8/255)) is accepted for x on another device, as PyTorch accepts
    CPU scalars; only meta tensors, which hold no values, are refused."""
    x, x0, grad = step_inputs()
    with pytest.raises(ValueError, match=r"eps must be on the device of x \(cpu\), got meta"):
        pgd_step_(x, x0, grad, meta(torch.tensor(0.1)), 0.05)
    pgd_step_(x, x0, grad, torch.tensor(0.1), torch.tensor(0.05))


# -- in-place targets that require grad ------------------------------------------------------------

def test_in_place_ops_refuse_tensors_that_require_grad():
    """pgd_step_ once wrote into a leaf that requires grad, behind autograd's back."""
    x, x0, grad = step_inputs()
    leaf = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"x is updated in place and must not require grad"):
        pgd_step_(leaf, x0, grad, 0.1, 0.05)
    with pytest.raises(RuntimeError, match=r"x is updated in place and must not require grad"):
        torch.ops.fastrobust.pgd_step_(leaf, x0, grad, torch.tensor([0.1]), torch.tensor([0.05]), None, None,
                                       "linf", 0.0, 1.0, False)
    with pytest.raises(ValueError, match=r"x is updated in place"):
        pgd_random_init_(leaf, x0, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"x_prev is updated in place"):
        apgd_step_(x, leaf, x0, grad, 0.1, 0.1)
    best_loss = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"best_loss is updated in place"):
        pgd_update_best_(x.clone(), best_loss, torch.zeros(3, dtype=torch.bool), x, torch.zeros(3),
                         torch.zeros(3, dtype=torch.bool))


# -- numbers given as something else ------------------------------------------------------------------

@pytest.mark.parametrize("scale", [torch.tensor([0.5, 0.5]), "0.5", [0.5], math.inf])
def test_nlm_scale_is_a_number(scale):
    """A 2-element tensor or a string once failed in a float conversion that did not say which
    argument was wrong."""
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="scale must be"):
        nlm_gaussian(x, x, x, scale)


def test_nlm_scale_tensor_of_one_value_is_accepted():
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(nlm_gaussian(x, x, x, torch.tensor(0.5)), nlm_gaussian(x, x, x, 0.5))


# -- class indices -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1, 6])
def test_cifs_labels_out_of_range(bad):
    """Out-of-range labels once surfaced as 'IndexError: index out of range in self'."""
    from fastrobust.nn import CIFS

    layer = CIFS(4, 6).train()
    labels = torch.tensor([0, bad])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 6\)"):
        layer(torch.randn(2, 4, 3, 3), labels)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 6\)"):
        cifs_targets(torch.randn(2, 6), labels)
    with pytest.raises(RuntimeError, match="labels must be on the device of probe_logits"):
        cifs_targets(torch.randn(2, 6), meta(torch.tensor([0, 1])))
