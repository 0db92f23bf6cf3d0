"""CIFS (Yan et al., ICML 2021) as fused pieces.

The CIFS layer reweights a feature map by a channel mask m = scale * softmax_c(r / T), where
the relevance r (B, C) is the gradient of the probe's top-2 logits with respect to the pooled
feature, evaluated on the detached feature. For the two probe kinds r has a closed form
(no autograd, so it works under torch.no_grad and inference_mode too):

    linear probe  z = W GAP(f) + b:                   r = W[t1] + W[t2]
    mlp probe     z = W2 softplus_beta(W1 GAP(f) + b1) + b2, u = W1 GAP(f) + b1:
                  r_c = sum_k (W2[t1,k] + W2[t2,k]) * sigmoid(beta u_k) * W1[k,c]

Written with differentiable torch ops of the probe weights, these give the weights the same
second-order gradients as the official code's create_graph=True, and no gradient reaches the
feature through r (the pooled feature is detached). The memory-bound part, softmax over
channels fused with feat * m, forward and backward, is the op `cifs_reweight` (one kernel
forward, two backward on CUDA).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._extension import warn_fallback
from ._registration import has_op, reference_grads, register_differentiable_op
from .._checks.cifs import check_probe_labels, check_reweight_args
from .._checks.common import check_same_device, real_number
from ..reference.cifs import cifs_reweight as _reference_reweight


# nn.Softplus's default threshold: above it (in beta * u) the layer returns its input.
SOFTPLUS_THRESHOLD = 20.0


def cifs_reweight(feat: torch.Tensor, relevance: torch.Tensor, temperature: float = 1.0,
                  scale: float = 1.0) -> torch.Tensor:
    """feat * scale * softmax(relevance / temperature, dim=1)[:, :, None, None].

    scale=1: the official CIFS code at its current commit (2e68025); see fastrobust.nn.CIFS for
    the history of the constant (an older commit used 2).

    Non-finite values: a NaN or inf in relevance[b] makes the mask of sample b, hence out[b],
    NaN (softmax over the channels); one in feat[b, c, h, w] reaches out[b, c, h, w] only (and,
    in the backward, grad_relevance[b]).

    feat: (B, C, H, W) floating; relevance: (B, C) floating (any dtype; the maths runs in
    float32, float64 for float64 feat). Differentiable in both. The output has feat's dtype.
    """
    if has_op("fastrobust", "cifs_reweight"):
        return torch.ops.fastrobust.cifs_reweight(feat, relevance, real_number(temperature, "temperature"),
                                                  real_number(scale, "scale"))
    warn_fallback("cifs_reweight")
    return _reference_reweight(feat, relevance, temperature, scale)


def cifs_targets(probe_logits: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two classes whose logits define the relevance, on the device (on a GPU without a host
    sync; labels are checked there by an asynchronous device-side assert).

    With labels (train mode): t1 = the label, t2 = the second of the probe's top-2 predictions,
    even when that is the label (the official rule). Without (eval mode): the top-1 and top-2
    predictions. Ties are broken as torch.topk breaks them.
    """
    if probe_logits.dim() != 2 or probe_logits.shape[1] < 2:
        raise ValueError(f"probe_logits must be (B, K) with K >= 2 classes, got shape {tuple(probe_logits.shape)}")
    top2 = probe_logits.detach().topk(2, dim=1).indices
    if labels is None:
        return top2[:, 0], top2[:, 1]
    check_probe_labels(probe_logits, labels)
    return labels, top2[:, 1]


def _pair_rows(weight: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """weight[t1] + weight[t2]: with a graph, as one gather (one scatter in the backward, not
    two); without, as two gathers and an addition (a third of the time of the gather of both
    and the sum over them, on the CPU at B32 C512). The same values either way."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return weight.index_select(0, torch.cat([t1, t2])).unflatten(0, (2, t1.shape[0])).sum(0)
    return weight.index_select(0, t1).add_(weight.index_select(0, t2))


def linear_relevance(weight: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """r = W[t1] + W[t2] for a linear probe with weight (K, C): (B, C)."""
    return _pair_rows(weight, t1, t2)


def mlp_relevance(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, beta: float,
                  t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """r for the probe Linear(C, hidden) -> Softplus(beta) -> Linear(hidden, K), from the
    detached pooled feature (B, C): sum_k (W2[t1,k] + W2[t2,k]) sigmoid(beta u_k) W1[k, :]."""
    u = torch.nn.functional.linear(pooled.detach(), w1, b1)
    # softplus_beta's derivative; nn.Softplus is the identity (derivative 1) where beta*u > 20
    slope = torch.where(beta * u > SOFTPLUS_THRESHOLD, torch.ones_like(u), torch.sigmoid(beta * u))
    return (_pair_rows(w2, t1, t2) * slope) @ w1


def _fake_reweight(feat, relevance, temperature, scale):
    check_reweight_args(feat, relevance, temperature, scale)
    return torch.empty_like(feat, memory_format=torch.contiguous_format)


def _fake_reweight_backward(grad_out, feat, relevance, temperature, scale, grad_pooled=None):
    check_reweight_args(feat, relevance, temperature, scale)
    check_same_device("feat", feat, grad_out=grad_out)
    if grad_pooled is not None:
        check_same_device("feat", feat, grad_pooled=grad_pooled)
        torch._check(grad_pooled.dtype.is_floating_point,
                     lambda: f"grad_pooled must have a floating-point dtype, got {grad_pooled.dtype}")
        torch._check(grad_pooled.shape == relevance.shape,
                     lambda: f"grad_pooled must have shape (B, C) = {tuple(relevance.shape)}, got {tuple(grad_pooled.shape)}")
    return (torch.empty_like(feat, memory_format=torch.contiguous_format),
            torch.empty_like(relevance, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    feat, relevance, temperature, scale = inputs
    ctx.save_for_backward(feat, relevance)
    ctx.temperature, ctx.scale = temperature, scale


def _backward(backward_op, ctx, grad_out):
    feat, relevance = ctx.saved_tensors
    grad_feat, grad_relevance = backward_op(grad_out, feat, relevance, ctx.temperature, ctx.scale)
    return grad_feat, grad_relevance, None, None


def _double_backward(ctx, grad_out):
    """With create_graph=True: the gradients through the reference, differentiable."""
    feat, relevance = ctx.saved_tensors
    grads = reference_grads(lambda f, r: _reference_reweight(f, r, ctx.temperature, ctx.scale), (feat, relevance),
                            grad_out)
    return (*grads, None, None)


register_differentiable_op("cifs_reweight", _fake_reweight, _fake_reweight_backward, _setup_context, _backward,
                           _double_backward)
