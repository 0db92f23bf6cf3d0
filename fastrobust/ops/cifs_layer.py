"""The CIFS layer's forward and backward as one autograd node (what fastrobust.nn.CIFS runs).

Composed from ops, the layer's backward makes autograd add two feature-sized gradients: the
reweighting's grad_out * m and the global average pooling's grad_pooled / (H W), expanded.
Here the pooling's gradient goes into the reweighting's backward kernel instead
(`_cifs_reweight_backward(..., grad_pooled)`), so the feature gradient is written in one pass.
A linear probe's gradients are written out (a few small matrix products); an mlp probe keeps
its autograd graph, built inside the forward and differentiated in the backward: first the
logits' gradient (which gives grad_pooled), then the relevance's (which needs the kernel's
grad_relevance). Either way the probe weights get the same first- and second-order terms as
the composed layer.

Where the node would not help or could not run (no grad needed, no compiled extension, inside
torch.compile, which traces the composition), the composition runs: the values are the same.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._registration import has_op
from .cifs import cifs_reweight, cifs_targets, linear_relevance, mlp_relevance

PROBE_PARAMS = {"linear": 2, "mlp": 4}  # (weight, bias) and (w1, b1, w2, b2)


def global_pool(feat: torch.Tensor) -> torch.Tensor:
    """(B, C) global average of a (B, C, H, W) feature, as the official probe pools it.

    On the CPU, where no graph is recorded (inside the layer's node, under no_grad), the
    extension's `_cifs_pool` computes it (summed in float32, or float64 for float64 features,
    rounded once); elsewhere torch's reduction does, whose backward autograd knows."""
    if _HAS_POOL and feat.device.type == "cpu" and feat.dim() == 4 and not torch.compiler.is_compiling() \
            and not (feat.requires_grad and torch.is_grad_enabled()):
        return torch.ops.fastrobust._cifs_pool.default(feat)
    return F.adaptive_avg_pool2d(feat, 1).flatten(1)


_HAS_POOL = has_op("fastrobust", "_cifs_pool")
if _HAS_POOL:
    @torch.library.register_fake("fastrobust::_cifs_pool")
    def _fake_pool(feat):
        torch._check(feat.dim() == 4, lambda: f"feat must be (B, C, H, W), got shape {tuple(feat.shape)}")
        torch._check(feat.dtype.is_floating_point, lambda: f"feat must have a floating-point dtype, got {feat.dtype}")
        return feat.new_empty(feat.shape[:2])


def probe_logits(probe: str, beta: float, pooled: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits of the probe on the pooled feature: "linear" (weight, bias) or "mlp"
    (w1, b1, w2, b2: Linear -> Softplus(beta) -> Linear)."""
    if probe == "linear":
        return F.linear(pooled, params[0], params[1])
    w1, b1, w2, b2 = params
    return F.linear(F.softplus(F.linear(pooled, w1, b1), beta=beta), w2, b2)


def probe_relevance(probe: str, beta: float, pooled: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                    params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The probe's closed-form relevance d(z_t1 + z_t2)/d pooled (B, C)."""
    if probe == "linear":
        return linear_relevance(params[0], t1, t2)
    w1, b1, w2, _ = params
    return mlp_relevance(pooled, w1, b1, w2, beta, t1, t2)


def _composed(feat, params, labels, probe, beta, temperature, scale):
    pooled = global_pool(feat)
    logits = probe_logits(probe, beta, pooled, params)
    t1, t2 = cifs_targets(logits, labels)
    relevance = probe_relevance(probe, beta, pooled.detach(), t1, t2, params)
    return cifs_reweight(feat, relevance, temperature, scale), logits


class _FusedLayer(torch.autograd.Function):
    """The layer as one node. A linear probe's gradients are written out (a few small matrix
    products; the relevance's weight gradient is added into the logits' in place); an mlp
    probe keeps its small autograd graph, differentiated in backward (as torch.utils.checkpoint
    keeps one)."""

    @staticmethod
    def forward(ctx, feat, labels, probe, beta, temperature, scale, namespace, *params):
        pooled = global_pool(feat)
        ctx.args = (probe, temperature, scale, namespace)
        if probe == "linear":
            weight, bias = params
            logits = F.linear(pooled, weight, bias)
            t1, t2 = cifs_targets(logits, labels)
            relevance = linear_relevance(weight, t1, t2)
            ctx.save_for_backward(feat, relevance, pooled, weight, t1, t2)
        else:
            with torch.enable_grad():
                pooled_leaf = pooled.detach().requires_grad_(ctx.needs_input_grad[0])
                leaves = [p.detach().requires_grad_(need) for p, need in zip(params, ctx.needs_input_grad[7:])]
                logits = probe_logits(probe, beta, pooled_leaf, leaves)
                t1, t2 = cifs_targets(logits, labels)
                graph_relevance = probe_relevance(probe, beta, pooled_leaf.detach(), t1, t2, leaves)
            relevance = graph_relevance.detach()
            ctx.save_for_backward(feat, relevance)
            ctx.probe_graph = (pooled_leaf, leaves, logits, graph_relevance)
            logits = logits.detach()
        out = getattr(torch.ops, namespace).cifs_reweight.default(feat, relevance, temperature, scale)
        return out, logits

    @staticmethod
    def backward(ctx, grad_out, grad_logits):
        probe, temperature, scale, namespace = ctx.args
        reweight_backward = getattr(torch.ops, namespace)._cifs_reweight_backward.default
        needs = ctx.needs_input_grad
        if probe == "linear":
            feat, relevance, pooled, weight, t1, t2 = ctx.saved_tensors
            # in the dtype the forward's linear ran in (autocast's, where it was on)
            grad_pooled = grad_logits.mm(weight.to(grad_logits.dtype)) if needs[0] else None
            grad_feat, grad_relevance = reweight_backward(grad_out, feat, relevance, temperature, scale, grad_pooled)
            grad_weight = grad_bias = None
            if needs[7]:
                grad_weight = grad_logits.t().mm(pooled.to(grad_logits.dtype)).to(weight.dtype)
                rows = grad_relevance.to(weight.dtype)
                grad_weight.index_add_(0, t1, rows).index_add_(0, t2, rows)
            if needs[8]:
                grad_bias = grad_logits.sum(0).to(weight.dtype)
            param_grads = [grad_weight, grad_bias]
        else:
            feat, relevance = ctx.saved_tensors
            param_grads = _MlpGraph(ctx.probe_graph).backward(grad_logits, grad_out, feat, relevance, temperature,
                                                              scale, reweight_backward)
            grad_feat = param_grads.pop(0)
        return (grad_feat if needs[0] else None, None, None, None, None, None, None, *param_grads)


class _MlpGraph:
    """The mlp probe's graph kept by the forward: the logits' gradient first (it gives the
    pooling's term of the feature gradient), then the relevance's, with the kernel's
    grad_relevance."""

    def __init__(self, graph):
        self.pooled, self.leaves, self.logits, self.relevance = graph

    def _grads(self, outputs, grads, param_grads):
        inputs = [t for t in [self.pooled, *self.leaves] if t.requires_grad]
        if not inputs or not outputs.requires_grad:
            return None
        # retain_graph: the outer graph may be differentiated again (retain_graph=True there)
        got = dict(zip(map(id, inputs), torch.autograd.grad(outputs, inputs, grads, retain_graph=True,
                                                            allow_unused=True)))
        for i, leaf in enumerate(self.leaves):
            g = got.get(id(leaf))
            if g is not None:
                param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
        return got.get(id(self.pooled))

    def backward(self, grad_logits, grad_out, feat, relevance, temperature, scale, reweight_backward):
        """[grad_feat, *param_grads]."""
        param_grads = [None] * len(self.leaves)
        grad_pooled = self._grads(self.logits, grad_logits, param_grads)
        grad_feat, grad_relevance = reweight_backward(grad_out, feat, relevance, temperature, scale, grad_pooled)
        self._grads(self.relevance, grad_relevance, param_grads)  # reads the detached pooled feature
        return [grad_feat, *param_grads]


def check_probe_params(probe: str, params: Sequence[torch.Tensor]) -> None:
    if probe not in PROBE_PARAMS:
        raise ValueError(f"probe must be one of {tuple(PROBE_PARAMS)}, got {probe!r}")
    if len(params) != PROBE_PARAMS[probe] or not all(isinstance(p, torch.Tensor) for p in params):
        names = "(weight, bias)" if probe == "linear" else "(w1, b1, w2, b2)"
        raise ValueError(f"params of a {probe} probe must be the tensors {names}, got {len(params)} values")


def cifs_layer(feat: torch.Tensor, params: Sequence[torch.Tensor], labels: Optional[torch.Tensor] = None,
               probe: str = "linear", beta: float = 5.0, temperature: float = 1.0, scale: float = 1.0,
               _namespace: str = "fastrobust") -> Tuple[torch.Tensor, torch.Tensor]:
    """(feat * m, probe logits) of a CIFS layer (see fastrobust.nn.CIFS) with the probe given by
    its parameters: "linear" (weight (K, C), bias (K,)) or "mlp" (w1 (hidden, C), b1, w2
    (K, hidden), b2, Softplus(beta) between). labels: t1 = the label (train mode), or None for
    the probe's top-1 (eval mode). Gradients reach feat and every parameter, as for the
    composition of fastrobust.ops.cifs_reweight with the probe's closed-form relevance."""
    check_probe_params(probe, params)
    needs_grad = torch.is_grad_enabled() and (feat.requires_grad or any(p.requires_grad for p in params))
    if not needs_grad or not has_op(_namespace, "cifs_reweight") or torch.compiler.is_compiling():
        return _composed(feat, params, labels, probe, beta, temperature, scale)
    if feat.dim() != 4:
        raise ValueError(f"feat must be (B, C, H, W), got shape {tuple(feat.shape)}")
    return _FusedLayer.apply(feat, labels, probe, beta, temperature, scale, _namespace, *params)
