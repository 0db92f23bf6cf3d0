"""The CIFS layer against the transcription of the official module (reference.cifs.cifs_layer)
on the same weights: outputs and every gradient, both probes, train and eval mode, ties, the
label as second prediction, gradcheck, no_grad/inference_mode, compile, errors; and cifs_loss."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import fastrobust.ops
from fastrobust.nn import CIFS, cifs_loss
from fastrobust.ops import cifs_targets
from fastrobust.reference.cifs import cifs_layer

# (B, C, K, H, W): every C in {1, 3, 64, 512}, K in {2, 3, 10, 100}, H x W in {1x1, 4x4, 7x5}.
CASES = [
    (3, 1, 2, 1, 1),
    (4, 3, 3, 4, 4),
    (5, 64, 10, 7, 5),
    (2, 512, 100, 4, 4),
    (3, 512, 10, 1, 1),
    (2, 3, 100, 7, 5),
    (4, 64, 2, 4, 4),
    (3, 1, 10, 7, 5),
]
PROBES = ["linear", "mlp"]
MODES = [pytest.param(True, id="train"), pytest.param(False, id="eval")]


def make_layer(channels, classes, probe, dtype=torch.float64, hidden=7, seed=0):
    """A CIFS layer with N(0, 1) parameters; the mlp's first Linear is scaled so that
    beta * u stays mostly below 20, where torch's Softplus switches to the identity
    (test_mlp_softplus_identity_regime covers that side)."""
    layer = CIFS(channels, classes, probe=probe, hidden=hidden, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
        if probe == "mlp":
            layer.head[0].weight.mul_(0.5 / math.sqrt(channels))
            layer.head[0].bias.mul_(0.5)
    return layer


def inputs(batch, channels, classes, h, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(batch, channels, h, w, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return feat, labels


def fused(layer, labels):
    return lambda feat: layer(feat, labels)


def reference(layer, labels):
    probe = layer.probe_module()
    return lambda feat: cifs_layer(feat, probe, labels, layer.training, layer.temperature, layer.scale)


def outputs_and_grads(fn, layer, feat, seed=1):
    """(out, probe_logits) and the gradients of a random linear function of both with
    respect to the feature and every parameter of the layer."""
    f = feat.detach().clone().requires_grad_(True)
    out, probe_logits = fn(f)
    g = torch.Generator().manual_seed(seed)
    loss = ((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
            + (probe_logits * torch.randn(probe_logits.shape, generator=g, dtype=out.dtype)).sum())
    grads = torch.autograd.grad(loss, [f, *layer.parameters()])
    return [out, probe_logits, *grads]


def assert_matches_reference(layer, feat, labels, rtol, atol, param_tol=None):
    names = ["out", "probe_logits", "grad feat"] + [f"grad {n}" for n, _ in layer.named_parameters()]
    got = outputs_and_grads(fused(layer, labels), layer, feat)
    want = outputs_and_grads(reference(layer, labels), layer, feat)
    for i, (name, a, b) in enumerate(zip(names, got, want)):
        tol = param_tol if param_tol is not None and i >= 3 else (rtol, atol)
        torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("training", MODES)
def test_matches_reference_float64(probe, training):
    for i, (b, c, k, h, w) in enumerate(CASES):
        layer = make_layer(c, k, probe, seed=i).train(training)
        feat, labels = inputs(b, c, k, h, w, seed=i)
        assert_matches_reference(layer, feat, labels, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("training", MODES)
def test_matches_reference_float32(probe, training):
    for i, (b, c, k, h, w) in enumerate(CASES):
        layer = make_layer(c, k, probe, dtype=torch.float32, seed=i).train(training)
        feat, labels = inputs(b, c, k, h, w, dtype=torch.float32, seed=i)
        # parameter gradients sum over the batch and space
        assert_matches_reference(layer, feat, labels, rtol=1e-5, atol=1e-5, param_tol=(1e-4, 1e-4))


@pytest.mark.parametrize("training", MODES)
def test_mlp_softplus_identity_regime(training):
    """Pre-activations with beta * u far above and below torch's Softplus threshold (20):
    the closed form uses the layer's exact derivative (1 above the threshold)."""
    layer = make_layer(5, 4, "mlp").train(training)
    with torch.no_grad():
        layer.head[0].weight.mul_(30.0)
    feat, labels = inputs(3, 5, 4, 2, 2)
    with torch.no_grad():
        u = layer.head[0](feat.mean(dim=(2, 3)))
    assert (layer.beta * u > 20).any() and (layer.beta * u < 20).any()
    assert_matches_reference(layer, feat, labels, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("probe", PROBES)
def test_custom_temperature_and_scale(probe):
    layer = make_layer(6, 4, probe).train()
    layer.temperature, layer.scale = 0.3, 6.0
    feat, labels = inputs(3, 6, 4, 3, 2)
    assert_matches_reference(layer, feat, labels, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize("bias", [[0, 0, 0, 0, 0], [0, 5, 0, 5, 0], [5, 3, 0, 3, 0]], ids=["all", "top", "second"])
def test_tied_logits_pick_the_reference_classes(training, bias):
    """Probe logits that tie exactly: integer features and weights, H x W = 4 (the average is
    exact) and channel 0 of the feature zero, so rows of W that differ only in channel 0 give
    equal logits but different relevances. Target choice is the same code for both probes."""
    layer = make_layer(4, 5, "linear").train(training)
    feat = torch.randint(-3, 4, (3, 4, 2, 2)).double()
    feat[:, 0] = 0
    with torch.no_grad():
        base = torch.tensor([0.0, 2.0, -1.0, 3.0], dtype=torch.float64)
        layer.head[0].weight.copy_(base + torch.arange(5.0, dtype=torch.float64)[:, None] * torch.eye(4)[0])
        layer.head[0].bias.copy_(torch.tensor(bias, dtype=torch.float64))
    logits = layer.head(feat.mean((2, 3)))
    ranked = logits.sort(dim=1, descending=True).values
    assert ((ranked[:, 0] == ranked[:, 1]) | (ranked[:, 1] == ranked[:, 2])).all()  # a tie decides the top-2
    t1, t2 = cifs_targets(logits)
    top2 = logits.topk(2, dim=1).indices
    assert torch.equal(t1, top2[:, 0]) and torch.equal(t2, top2[:, 1])
    labels = torch.tensor([0, 2, 4])
    assert_matches_reference(layer, feat, labels, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("probe", PROBES)
def test_label_equal_to_second_prediction_counts_twice(probe):
    """Train mode with y = the probe's 2nd prediction: t1 = t2 = y, as in the official code."""
    layer = make_layer(8, 6, probe)
    feat, _ = inputs(4, 8, 6, 3, 3)
    labels = layer.head(feat.mean((2, 3))).topk(2, dim=1).indices[:, 1]
    layer.train()
    assert_matches_reference(layer, feat, labels, rtol=1e-10, atol=1e-10)
    if probe == "linear":
        out, _ = layer(feat, labels)
        mask = layer.scale * torch.softmax(2 * layer.head[0].weight[labels], dim=1)
        torch.testing.assert_close(out, feat * mask[:, :, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("training", MODES)
def test_gradcheck(probe, training):
    """Finite differences against the layer's gradients w.r.t. every parameter, and w.r.t. the
    feature for the linear probe. The mlp probe's mask depends on the feature's values, which
    the layer (as the official code) treats as a constant: there its feature gradient is by
    design not the numerical derivative (test_matches_reference_* check it)."""
    layer = make_layer(3, 4, probe, hidden=3).train(training)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    feat, labels = inputs(2, 3, 4, 2, 3)

    def fn(f, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (f, labels))

    assert torch.autograd.gradcheck(fn, (feat.requires_grad_(probe == "linear"), *params))


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("training", MODES)
def test_no_grad_and_inference_mode_equal_grad_mode(probe, training):
    layer = make_layer(5, 4, probe).train(training)
    feat, labels = inputs(3, 5, 4, 3, 3)
    want = layer(feat.requires_grad_(True), labels)
    feat = feat.detach()
    with torch.no_grad():
        got_no_grad = layer(feat, labels)
    with torch.inference_mode():
        got_inference = layer(feat, labels)
    for got in (got_no_grad, got_inference):
        for a, b in zip(got, want):
            assert not a.requires_grad
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("probe", PROBES)
def test_compile_fullgraph_matches_eager(probe):
    layer = make_layer(6, 4, probe, dtype=torch.float32).train()
    feat, labels = inputs(3, 6, 4, 4, 4, dtype=torch.float32)
    # Eager first: without the extension it also issues the one-time fallback warning, which
    # would be a graph break inside the compiled call.
    want = outputs_and_grads(fused(layer, labels), layer, feat)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = outputs_and_grads(lambda f: compiled(f, labels), layer, feat)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("probe", PROBES)
def test_empty_batch(probe):
    layer = make_layer(5, 4, probe).train()
    feat, labels = inputs(0, 5, 4, 3, 3)
    out, probe_logits = layer(feat, labels)
    assert out.shape == (0, 5, 3, 3) and probe_logits.shape == (0, 4)


@pytest.mark.parametrize("probe", PROBES)
def test_autocast_keeps_float32_parameters(probe):
    layer = make_layer(5, 4, probe, dtype=torch.float32).train()
    feat, labels = inputs(2, 5, 4, 3, 3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, probe_logits = layer(feat.bfloat16(), labels)
    assert out.dtype == probe_logits.dtype == torch.bfloat16
    (out.float().sum() + probe_logits.float().square().sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


def test_labels_required_in_train_mode_ignored_in_eval_mode():
    layer = make_layer(4, 3, "linear")
    feat, labels = inputs(2, 4, 3, 2, 2)
    with pytest.raises(ValueError, match="labels must be given in train mode"):
        layer.train()(feat)
    layer.eval()
    for ignored in (labels, (labels + 1) % 3, torch.zeros(5)):
        for a, b in zip(layer(feat, ignored), layer(feat)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"channels": 0, "num_classes": 3}, "channels must be an int >= 1"),
        ({"channels": 2.5, "num_classes": 3}, "channels must be an int >= 1"),
        ({"channels": 4, "num_classes": 1}, "num_classes must be an int >= 2"),
        ({"channels": 4, "num_classes": 3, "probe": "conv"}, "probe must be one of"),
        ({"channels": 4, "num_classes": 3, "probe": "mlp", "hidden": 0}, "hidden must be an int >= 1"),
        ({"channels": 4, "num_classes": 3, "beta": 0.0}, "beta must be a finite number > 0"),
        ({"channels": 4, "num_classes": 3, "temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"channels": 4, "num_classes": 3, "temperature": float("inf")}, "temperature must be a finite number > 0"),
        ({"channels": 4, "num_classes": 3, "scale": float("nan")}, "scale must be a finite number"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        CIFS(**kwargs)


def test_bad_inputs():
    layer = make_layer(4, 3, "mlp").train()
    feat, labels = inputs(2, 4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"feat must have shape \(B, 4, H, W\) for CIFS\(4, 3\), got \(2, 3, 2, 2\)"):
        layer(feat[:, :3], labels)
    with pytest.raises(ValueError, match=r"feat must have shape \(B, 4, H, W\)"):
        layer(feat[0], labels)
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(2,\)"):
        layer(feat, labels[:1])
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(2,\)"):
        layer(feat, labels.float())


def test_probe_module_shares_parameters():
    layer = make_layer(4, 3, "mlp")
    probe = layer.probe_module()
    assert {id(p) for p in probe.parameters()} == {id(p) for p in layer.parameters()}
    feat, _ = inputs(2, 4, 3, 3, 3)
    torch.testing.assert_close(probe(feat), layer.eval()(feat)[1], rtol=0, atol=0)


def test_cifs_loss_official_weighting():
    g = torch.Generator().manual_seed(0)
    final, p1, p2, p3 = (torch.randn(6, 5, generator=g) for _ in range(4))
    y = torch.randint(0, 5, (6,), generator=g)
    ce = [F.cross_entropy(z, y) for z in (final, p1, p2, p3)]
    # beta = 2 with two probes: the plain sum
    torch.testing.assert_close(cifs_loss(final, [p1, p2], y), ce[0] + ce[1] + ce[2])
    torch.testing.assert_close(cifs_loss(final, (p1, p2, p3), y, beta=0.5),
                               3 / 1.5 * (ce[0] + 0.5 / 3 * (ce[1] + ce[2] + ce[3])))
    torch.testing.assert_close(cifs_loss(final, [p1], y, beta=0.0), 3 * ce[0])
    per_sample = cifs_loss(final, [p1, p2], y, reduction="none")
    assert per_sample.shape == (6,)
    torch.testing.assert_close(per_sample.mean(), ce[0] + ce[1] + ce[2])


def test_cifs_loss_errors():
    final, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="probe_logits_list must be a non-empty sequence"):
        cifs_loss(final, [], y)
    with pytest.raises(ValueError, match=r"probe_logits_list\[1\] has shape \(4, 2\)"):
        cifs_loss(final, [final, final[:, :2]], y)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        cifs_loss(final, [final], y, beta=-1.0)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        cifs_loss(final, [final], y, reduction="sum")


def test_default_scale_is_the_official_plain_softmax():
    """The official code at its current commit (2e68025) masks with softmax(r), not 2 * softmax(r)
    (the older commit 2d8217c): the default mask sums to 1 over the channels."""
    assert CIFS(8, 6).scale == 1.0
    assert inspect.signature(fastrobust.ops.cifs_reweight).parameters["scale"].default == 1.0
    feat = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    relevance = torch.randn(2, 5, dtype=torch.float64)
    out = fastrobust.ops.cifs_reweight(feat, relevance)
    torch.testing.assert_close(out, feat * torch.softmax(relevance, dim=1)[:, :, None, None])
    doubled = fastrobust.ops.cifs_reweight(feat, relevance, scale=2.0)  # the older commit's value
    torch.testing.assert_close(doubled, 2 * out)


def composed(layer, labels):
    """The layer composed of ops (autograd adds the pooling's and the reweighting's feature
    gradients): what fastrobust.ops.cifs_layer runs where its single node does not."""
    from fastrobust.ops.cifs_layer import _composed

    return lambda feat: _composed(feat, list(layer.parameters()), labels if layer.training else None, layer.probe,
                                  layer.beta, layer.temperature, layer.scale)


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
@pytest.mark.parametrize("namespace", ["fastrobust", pytest.param("fastrobust_emu", marks=pytest.mark.skipif(
    not fastrobust.HAS_EMU, reason="emulated kernels not built"))])
@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("training", MODES)
def test_single_node_equals_the_composition(namespace, probe, training):
    """ops.cifs_layer's one autograd node (the pooling's gradient added inside the reweighting
    backward kernel, the probe's graph differentiated in its backward) against the composed
    ops: outputs and every gradient."""
    from fastrobust.ops.cifs_layer import cifs_layer as layer_op

    for batch, channels, classes, h, w in [(4, 3, 3, 4, 4), (2, 64, 10, 7, 5), (3, 512, 10, 1, 1)]:
        layer = make_layer(channels, classes, probe).train(training)
        feat, labels = inputs(batch, channels, classes, h, w)
        node = lambda f: layer_op(f, list(layer.parameters()), labels if training else None, probe=probe,
                                  beta=layer.beta, temperature=layer.temperature, scale=layer.scale,
                                  _namespace=namespace)
        got = outputs_and_grads(node, layer, feat)
        want = outputs_and_grads(composed(layer, labels), layer, feat)
        assert got[0].grad_fn is not None and type(got[0].grad_fn).__name__ == "_FusedLayerBackward"
        for name, a, b in zip(["out", "probe_logits", "grad feat", "grad params"], got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not fastrobust.HAS_EXT, reason="compiled extension not built")
def test_single_node_backward_twice_and_frozen_parts():
    """retain_graph=True lets the node be differentiated twice; with a frozen probe only the
    feature gets a gradient, with a constant feature only the probe."""
    layer = make_layer(5, 4, "mlp").train()
    feat, labels = inputs(3, 5, 4, 2, 2)
    f = feat.clone().requires_grad_(True)
    out, logits = layer(f, labels)
    first = torch.autograd.grad(out.sum() + logits.sum(), [f, *layer.parameters()], retain_graph=True)
    second = torch.autograd.grad(out.sum() + logits.sum(), [f, *layer.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for p in layer.parameters():
        p.requires_grad_(False)
    out, logits = layer(f, labels)
    (grad_feat,) = torch.autograd.grad(out.sum() + logits.sum(), [f])
    torch.testing.assert_close(grad_feat, first[0], rtol=0, atol=0)
    for p in layer.parameters():
        p.requires_grad_(True)
    out, logits = layer(feat, labels)
    grads = torch.autograd.grad(out.sum() + logits.sum(), list(layer.parameters()))
    for a, b in zip(grads, first[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cifs_layer_rejects_bad_probe_arguments():
    feat, _ = inputs(2, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="probe must be one of"):
        fastrobust.ops.cifs_layer(feat, [torch.zeros(4, 3), torch.zeros(4)], probe="conv")
    with pytest.raises(ValueError, match=r"params of a mlp probe must be the tensors \(w1, b1, w2, b2\)"):
        fastrobust.ops.cifs_layer(feat, [torch.zeros(4, 3), torch.zeros(4)], probe="mlp")
