"""NonLocalMeans, DenoisingBlock and add_denoising_blocks (fastrobust.nn.nlm): the module
against the reference composition, identity at init, placement in the model zoo, errors."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.models import PreActResNet18, ResNet18CIFS, WideResNet
from fastrobust.models.preact_resnet import PreActBlock
from fastrobust.nn import DenoisingBlock, NonLocalMeans, add_denoising_blocks
from fastrobust.reference import nlm as reference

MODES = ("gaussian", "dot", "mean", "median")
EMBEDDED = ("gaussian", "dot")
# (rtol, atol) of the module (fused op or its fallback) against the reference composition;
# the gaussian and dot ops reduce over the N positions and the weight gradients over B * N.
TOL = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-7, 1e-7)}


@pytest.fixture(autouse=True)
def _no_fallback_warning():
    """Until the kernels are built the ops warn that they run their reference: not a failure."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*runs its pure-PyTorch reference", category=RuntimeWarning)
        yield


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def spread_embedding(layer: NonLocalMeans, std: float = 0.5) -> None:
    """theta/phi weights large enough that the softmax is far from uniform (at the init std
    0.01 every row of the affinity is nearly constant and a wrong softmax would go unseen)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in (layer.theta, layer.phi):
            conv.weight.copy_(std * torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))


def reference_nlm(layer: NonLocalMeans, x: torch.Tensor) -> torch.Tensor:
    """What the layer must compute, written out with fastrobust.reference.nlm on the layer's
    own theta/phi weights (the scale derived here, independently of the layer)."""
    c = x.shape[1]
    if layer.mode == "mean":
        return reference.mean3x3(x)
    if layer.mode == "median":
        return reference.median3x3(x)
    if layer.embed:
        theta, phi, d = F.conv2d(x, layer.theta.weight), F.conv2d(x, layer.phi.weight), c // 2
    else:
        theta, phi, d = x, x, c
    if layer.mode == "gaussian":
        return reference.nlm_gaussian(theta, phi, x, 1.0 / math.sqrt(d))
    return reference.nlm_dot(theta, phi, x)


def output_and_grads(fn, layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    params = [p for p in layer.parameters()]
    out = fn(x)
    grads = torch.autograd.grad(out, [x] + params, grad_out)
    return out, grads


CONFIGS = [(m, e) for m in EMBEDDED for e in (True, False)] + [("mean", None), ("median", None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode, embed", CONFIGS, ids=[f"{m}-{'embed' if e else 'plain'}" for m, e in CONFIGS])
@pytest.mark.parametrize("channels", [6, 7])  # d = 3 either way; 7: an odd width
def test_forward_and_gradients_match_reference(mode, embed, dtype, channels):
    layer = NonLocalMeans(channels, mode, embed, dtype=dtype)
    if layer.embed:
        spread_embedding(layer)
    x = randn(2, channels, 5, 7, dtype=dtype)  # N = 35: not a multiple of any tile
    grad_out = randn(2, channels, 5, 7, dtype=dtype, seed=1)
    out, grads = output_and_grads(layer, layer, x, grad_out)
    want, want_grads = output_and_grads(lambda t: reference_nlm(layer, t), layer, x, grad_out)
    rtol, atol = TOL[dtype]
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    assert names == (["x", "theta.weight", "phi.weight"] if layer.embed else ["x"])
    for name, g, w in zip(names, grads, want_grads):
        assert g.abs().sum() > 0, name  # something for the comparison to see
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"grad {name}: {m}")


def test_layer_layout_and_init():
    layer = NonLocalMeans(64)
    assert (layer.mode, layer.embed) == ("gaussian", True)
    assert layer.scale == pytest.approx(1 / math.sqrt(32))
    for conv in (layer.theta, layer.phi):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (64, 32, (1, 1), None)
        assert 0.008 < conv.weight.std().item() < 0.012  # N(0, 0.01): 2048 samples
    assert not torch.equal(layer.theta.weight, layer.phi.weight)
    plain = NonLocalMeans(64, embed=False)
    assert plain.theta is None and plain.phi is None and not list(plain.parameters())
    assert plain.scale == pytest.approx(1 / 8)
    assert NonLocalMeans(64, "dot").scale is None
    for mode in ("mean", "median"):
        layer = NonLocalMeans(1, mode)
        assert not layer.embed and not list(layer.parameters())


def test_extra_repr():
    assert repr(NonLocalMeans(8)).startswith("NonLocalMeans(\n  8, mode='gaussian', embed=True")
    assert repr(NonLocalMeans(8, "dot", embed=False)) == "NonLocalMeans(8, mode='dot', embed=False)"
    assert repr(NonLocalMeans(8, "median")) == "NonLocalMeans(8, mode='median')"


def test_non_embedded_gaussian_is_self_attention_of_x():
    """embed=False: theta = phi = g = x and the scale is 1/sqrt(C), written out by hand."""
    x = randn(1, 4, 3, 3, dtype=torch.float64)
    flat = x.reshape(1, 4, 9)
    weights = torch.softmax(flat.transpose(1, 2) @ flat / 2.0, dim=-1)  # 1/sqrt(4)
    want = (flat @ weights.transpose(1, 2)).reshape(x.shape)
    torch.testing.assert_close(NonLocalMeans(4, embed=False)(x), want, rtol=1e-10, atol=1e-10)
    dot = (flat @ (flat.transpose(1, 2) @ flat).transpose(1, 2) / 9).reshape(x.shape)
    torch.testing.assert_close(NonLocalMeans(4, "dot", embed=False)(x), dot, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the block


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", MODES)
def test_block_is_exactly_the_identity_at_init(mode, training):
    block = DenoisingBlock(8, mode).train(training)
    x = randn(3, 8, 5, 4)
    for _ in range(2):  # the second time in train mode with updated running statistics
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    assert (block.bn.weight == 0).all() and (block.bn.bias == 0).all()
    assert block.conv.bias is None and block.conv.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.ReLU) for m in block.modules())


def test_block_conv_init_is_he_fan_out():
    block = DenoisingBlock(64)
    assert abs(block.conv.weight.std().item() / math.sqrt(2 / 64) - 1) < 0.1  # 4096 samples
    assert block.channels == 64


@pytest.mark.parametrize("embed", [True, False], ids=["embed", "plain"])
@pytest.mark.parametrize("mode", EMBEDDED)
def test_trained_block_is_the_composition_and_trains_its_embedding(mode, embed):
    block = DenoisingBlock(6, mode, embed)
    if embed:
        spread_embedding(block.nlm)
    with torch.no_grad():
        block.bn.weight.fill_(0.7)
        block.bn.bias.fill_(0.1)
    x = randn(2, 6, 4, 5).requires_grad_(True)
    out = block(x)
    assert not torch.allclose(out, x)
    conv = F.conv2d(reference_nlm(block.nlm, x), block.conv.weight)
    want = x + F.batch_norm(conv, None, None, block.bn.weight, block.bn.bias, training=True, eps=block.bn.eps)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    (out * randn(2, 6, 4, 5, seed=3)).sum().backward()
    params = ["conv.weight", "bn.weight", "bn.bias"] + (["nlm.theta.weight", "nlm.phi.weight"] if embed else [])
    grads = {n: p.grad for n, p in block.named_parameters()}
    assert set(grads) == set(params)
    for name in params:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_block_eval_mode_uses_running_statistics():
    block = DenoisingBlock(4, "mean")
    with torch.no_grad():
        block.bn.weight.fill_(1.0)
        block.bn.running_mean.fill_(0.5)
        block.bn.running_var.fill_(4.0)
    block.eval()
    x = randn(2, 4, 3, 3)
    want = x + (F.conv2d(reference.mean3x3(x), block.conv.weight) - 0.5) / math.sqrt(4.0 + block.bn.eps)
    torch.testing.assert_close(block(x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_channels_last_input(mode):
    block = DenoisingBlock(6, mode)
    if block.nlm.embed:
        spread_embedding(block.nlm)
    with torch.no_grad():
        block.bn.weight.fill_(1.0)
    x = randn(2, 6, 5, 3)
    grad_out = randn(2, 6, 5, 3, seed=1)
    out, grads = output_and_grads(block, block, x, grad_out)
    out_cl, grads_cl = output_and_grads(block, block, x.contiguous(memory_format=torch.channels_last),
                                        grad_out.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x)
    for g, g_cl in zip(grads, grads_cl):
        torch.testing.assert_close(g_cl, g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", EMBEDDED)
def test_autocast_bf16(mode):
    layer = NonLocalMeans(8, mode)
    spread_embedding(layer, 0.3)
    x = randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(mode):
    block = DenoisingBlock(6, mode)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    block.train()(randn(2, 6, 4, 4))  # running statistics away from their init
    state = block.state_dict()
    keys = {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert set(state) == keys | ({"nlm.theta.weight", "nlm.phi.weight"} if mode in EMBEDDED else set())
    fresh = DenoisingBlock(6, mode)
    fresh.load_state_dict(state)
    x = randn(2, 6, 4, 4, seed=5)
    assert not torch.equal(block.eval()(x), x)
    torch.testing.assert_close(fresh.eval()(x), block(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- placement


@pytest.mark.parametrize("stage", ["layer3", "res4"])
def test_add_denoising_blocks_to_preact_resnet18(stage):
    model = PreActResNet18(num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    before = model(x)
    blocks_before = len(model.blocks)
    assert add_denoising_blocks(model, stage) is model
    keys_before = set(PreActResNet18(num_classes=5).state_dict())
    assert isinstance(model.layer3, nn.Sequential) and len(model.layer3) == 3
    *inner, block = model.layer3  # appended to the stage: its blocks keep their state_dict keys
    assert [type(m) for m in inner] == [PreActBlock, PreActBlock]
    assert keys_before <= set(model.state_dict())
    assert isinstance(block, DenoisingBlock) and block.channels == 256
    assert (block.nlm.mode, block.nlm.embed) == ("gaussian", True)
    assert not block.training  # the model's eval mode
    for other in (model.layer1, model.layer2, model.layer4):
        assert all(isinstance(m, PreActBlock) for m in other)
    assert sum(isinstance(m, DenoisingBlock) for m in model.modules()) == 1
    assert len(model.blocks) == blocks_before
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_add_denoising_blocks_keeps_train_mode_logits():
    torch.manual_seed(0)
    plain = PreActResNet18(num_classes=5)
    model = PreActResNet18(num_classes=5)
    model.load_state_dict(plain.state_dict())
    add_denoising_blocks(model, ["res2", "res5"], mode="dot")
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(model.train()(x), plain.train()(x), rtol=0, atol=0)
    assert model.layer1[2].channels == 64 and model.layer4[2].channels == 512
    assert model.layer1[2].training


def test_add_denoising_blocks_to_wide_resnet():
    model = WideResNet(depth=10, widen_factor=1, num_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    before = model(x)
    add_denoising_blocks(model, ["layer1", "layer3"], mode="median")
    assert [m.channels for m in model.modules() if isinstance(m, DenoisingBlock)] == [16, 64]
    assert isinstance(model.layer1[1], DenoisingBlock) and isinstance(model.layer3[1], DenoisingBlock)
    assert model.layer1[1].nlm.mode == "median"
    assert isinstance(model.layer2[0], PreActBlock) and len(model.layer2) == 1
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown stage 'res5'; the model's stages are \['layer1', 'layer2', 'layer3'\]"):
        add_denoising_blocks(model, ["res5"])


def test_added_blocks_train_and_round_trip():
    model = add_denoising_blocks(WideResNet(depth=10, widen_factor=1, num_classes=3), "layer2", embed=False)
    with torch.no_grad():
        model.layer2[1].bn.weight.fill_(1.0)
    x = torch.rand(2, 3, 8, 8)
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    assert model.layer2[1].conv.weight.grad.abs().sum() > 0
    copy = add_denoising_blocks(WideResNet(depth=10, widen_factor=1, num_classes=3), "layer2", embed=False)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.eval()(x), model.eval()(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("build, match", [
    (lambda: NonLocalMeans(8, "bilateral"), r"mode must be one of 'gaussian', 'dot', 'mean', 'median', got 'bilateral'"),
    (lambda: NonLocalMeans(8, None), "mode must be one of"),
    (lambda: NonLocalMeans(8, "mean", embed=True), r"embed applies to modes 'gaussian', 'dot' only; mode='mean'"),
    (lambda: NonLocalMeans(8, "median", embed=False), r"mode='median' has no embedding"),
    (lambda: DenoisingBlock(8, "mean", embed=False), r"mode='mean' has no embedding"),
    (lambda: NonLocalMeans(8, embed="yes"), "embed must be True, False or None"),
    (lambda: NonLocalMeans(1), r"channels must be >= 2 for an embedded 'gaussian' layer"),
    (lambda: DenoisingBlock(1, "dot"), r"channels must be >= 2 for an embedded 'dot' layer"),
    (lambda: NonLocalMeans(0), "channels must be a positive int, got 0"),
    (lambda: NonLocalMeans(8.0), "channels must be a positive int, got 8.0"),
    (lambda: DenoisingBlock(True), "channels must be a positive int, got True"),
])
def test_argument_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_one_channel_without_embedding_is_fine():
    x = randn(1, 1, 3, 3)
    assert NonLocalMeans(1, embed=False)(x).shape == x.shape
    assert NonLocalMeans(1, "mean")(x).shape == x.shape


@pytest.mark.parametrize("mode", MODES)
def test_input_errors(mode):
    layer = NonLocalMeans(4, mode)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, H, W\) for NonLocalMeans\(4\), got \(2, 3, 5, 5\)"):
        layer(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"got \(4, 5, 5\)"):
        layer(torch.randn(4, 5, 5))


@pytest.mark.parametrize("stages, kwargs, match", [
    ("layer5", {}, r"unknown stage 'layer5'; the model's stages are \['layer1', 'layer2', 'layer3', 'layer4'\] "
                   r"\(aliases res2=layer1, res3=layer2, res4=layer3, res5=layer4\)"),
    (["layer1", "conv1"], {}, "unknown stage 'conv1'"),
    (["res1"], {}, "unknown stage 'res1'"),
    (["layer2", "res3"], {}, "stage 'layer2' is named twice"),
    ([], {}, "at least one stage"),
    (3, {}, "stages must be a stage name or an iterable"),
    ("layer1", {"mode": "box"}, "mode must be one of"),
    ("layer1", {"mode": "mean", "embed": True}, "has no embedding"),
])
def test_add_denoising_blocks_errors_leave_the_model_alone(stages, kwargs, match):
    model = PreActResNet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        add_denoising_blocks(model, stages, **kwargs)
    assert not any(isinstance(m, DenoisingBlock) for m in model.modules())
    assert model.state_dict().keys() == before.keys()


def test_add_denoising_blocks_rejects_a_stage_called_piece_by_piece():
    model = ResNet18CIFS(num_classes=3)
    with pytest.raises(ValueError, match="stage 'layer4' is a ModuleList"):
        add_denoising_blocks(model, ["layer3", "res5"])
    assert not any(isinstance(m, DenoisingBlock) for m in model.modules())
    add_denoising_blocks(model, "res4")
    assert model.layer3[-1].channels == 256


class Bottlenecked(nn.Module):
    """A stage whose first convolution is narrower than its output (as in a Bottleneck), and
    a stage without convolutions."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.layer2 = nn.Sequential(nn.ReLU())

    def forward(self, x):
        return self.layer2(self.layer1(x))


def test_block_width_is_the_last_convolution_of_the_stage():
    model = Bottlenecked().eval()
    x = torch.rand(2, 3, 5, 5)
    before = model(x)
    add_denoising_blocks(model, "res2")
    assert model.layer1[-1].channels == 6 and len(model.layer1) == 4
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stage 'layer2' has no Conv2d"):
        add_denoising_blocks(model, "layer2")


def test_new_blocks_follow_the_stage_dtype():
    model = WideResNet(depth=10, widen_factor=1, num_classes=3).double()
    add_denoising_blocks(model, "layer2")
    assert all(p.dtype == torch.float64 for p in model.layer2[1].parameters())
    assert model(torch.rand(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
