"""fastrobust.models.create and the model options: activation, denoise, cifs, first_stride,
mean/std; the relu models against copies of the models before the options existed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust import models
from fastrobust.models import (ACTIVATIONS, CIFSLogits, PreActResNet18, ResNet18, ResNet18CIFS, SmallCNN,
                               WideResNet, create, list_models, make_activation)
from fastrobust.models.activations import SOFTPLUS_BETA
from fastrobust.nn import CIFS, DenoisingBlock, Normalize, Sparta, cifs_loss

NAMES = ("small_cnn", "preact_resnet18", "resnet18", "wrn28_10", "wrn34_10", "wide_resnet")
# (input channels, input size) of each model's test batch: the digits' 1x8x8 for the small CNN,
# 8x8 colour images for the rest to keep the tests fast (layer4 of the ResNets runs at 1x1,
# layer3 of the WRNs at 2x2).
INPUT = {"small_cnn": (1, 8)}
# extra options: "wide_resnet" is tested in a small configuration (wrn28_10 and wrn34_10 are the big ones)
OPTIONS = {"wide_resnet": {"depth": 10, "widen_factor": 2}}
# stages (in forward order) and their output widths
STAGES = {
    "small_cnn": {"layer1": 32, "layer2": 64},
    "preact_resnet18": {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
    "resnet18": {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
    "wrn28_10": {"layer1": 160, "layer2": 320, "layer3": 640},
    "wrn34_10": {"layer1": 160, "layer2": 320, "layer3": 640},
    "wide_resnet": {"layer1": 32, "layer2": 64, "layer3": 128},
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def batch(name, n=2, seed=0):
    channels, size = INPUT.get(name, (3, 8))
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def seeded(build, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def activation_sites(model):
    """Every activation module of the model (the stages' and the stem's and head's)."""
    kinds = (nn.ReLU, Sparta, nn.SiLU, nn.Softplus, nn.GELU)
    return [m for name, m in model.named_modules() if isinstance(m, kinds) and ".head." not in f".{name}."]


# ----------------------------------------------------------------------------- the models before the options

class OldPreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, dropout=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + residual


class OldPreActNetwork(nn.Module):
    """PreActResNet18 (stem 64, widths 64..512, 2 blocks a stage) or WideResNet (stem 16)."""

    def __init__(self, num_classes, stem, widths, blocks_per_stage, dropout=0.0):
        super().__init__()
        self.normalize = nn.Identity()
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        in_planes = stem
        self.num_stages = len(widths)
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(OldPreActBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1, dropout))
                in_planes = planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


class OldBasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class OldResNet18CIFS(nn.Module):
    """The ResNet18CIFS before the options; cifs=False: the same body with a plain layer4."""

    def __init__(self, num_classes=10, cifs=True):
        super().__init__()
        self.normalize = nn.Identity()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for i in range(2):
                blocks.append(OldBasicBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
                in_planes = planes
            stages.append(blocks)
        self.layer1, self.layer2, self.layer3 = (nn.Sequential(*blocks) for blocks in stages[:3])
        self.with_cifs = cifs
        if cifs:
            self.layer4 = nn.ModuleList(stages[3])
            self.cifs = nn.ModuleList(CIFS(in_planes, num_classes, probe=p) for p in ("mlp", "linear"))
        else:
            self.layer4 = nn.Sequential(*stages[3])
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x, labels=None):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        if not self.with_cifs:
            return self.linear(F.adaptive_avg_pool2d(self.layer4(out), 1).flatten(1))
        probe_logits = []
        for block, cifs in zip(self.layer4, self.cifs):
            out, logits = cifs(block(out), labels)
            probe_logits.append(logits)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1)), probe_logits


class OldSmallCNN(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, width=32):
        super().__init__()
        self.normalize = nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))


# (old model, new model built by the registry, the registry name for the input batch)
OLD_AND_NEW = {
    "small_cnn": (lambda: OldSmallCNN(1, 10, 8), lambda: create("small_cnn", width=8)),
    "preact_resnet18": (lambda: OldPreActNetwork(10, 64, (64, 128, 256, 512), 2),
                        lambda: create("preact_resnet18")),
    "wide_resnet_16_2_dropout": (lambda: OldPreActNetwork(10, 16, (32, 64, 128), 2, dropout=0.3),
                                 lambda: create("wide_resnet", depth=16, widen_factor=2, dropout=0.3)),
    "wrn28_10": (lambda: OldPreActNetwork(10, 16, (160, 320, 640), 4), lambda: create("wrn28_10")),
    "resnet18": (lambda: OldResNet18CIFS(10, cifs=False), lambda: create("resnet18")),
    "resnet18_cifs": (lambda: OldResNet18CIFS(10), lambda: create("resnet18", cifs=True)),
}


def _outputs(out):
    return [out] if isinstance(out, torch.Tensor) else [out[0], *out[1]]


@pytest.mark.parametrize("key", list(OLD_AND_NEW))
def test_relu_models_compute_exactly_what_the_old_models_computed(key):
    build_old, build_new = OLD_AND_NEW[key]
    old, new = seeded(build_old), seeded(build_new)
    old_state, new_state = old.state_dict(), new.state_dict()
    if key == "small_cnn":  # the stages got names; the old keys still load
        assert set(new_state) == {"layer1.0.weight", "layer1.0.bias", "layer2.0.weight", "layer2.0.bias",
                                  "classifier.weight", "classifier.bias"}
    else:  # ReLU modules have no parameters: the same keys, in the same order
        assert list(new_state) == list(old_state)
    # the same seed makes the same weights (the parameters are created in the old order) ...
    for (k_old, v_old), (k_new, v_new) in zip(old_state.items(), new_state.items()):
        assert torch.equal(v_old, v_new), (k_old, k_new)
    # ... and the old state_dict loads strictly; the logits are bit-identical in both modes
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)  # so that the load must do the work
    new.load_state_dict(old_state)
    x, y = batch("resnet18" if key != "small_cnn" else key, n=3)
    for training in (True, False):
        torch.manual_seed(1)  # dropout draws the same masks
        want = _outputs(old.train(training)(x, y) if "cifs" in key else old.train(training)(x))
        torch.manual_seed(1)
        got = _outputs(new.train(training)(x, y) if "cifs" in key else new.train(training)(x))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    # the BN running statistics moved the same way in train mode
    for (k, v), w in zip(old.state_dict().items(), new.state_dict().values()):
        assert torch.equal(w, v), k


def test_old_small_cnn_checkpoint_loads_into_a_wrapper():
    """The renaming hook works under a prefix (a SmallCNN inside another module)."""
    old = nn.Sequential(OldSmallCNN(1, 10, 4))
    new = nn.Sequential(SmallCNN(1, 10, 4))
    new.load_state_dict(old.state_dict())
    x, _ = batch("small_cnn")
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- registry

def test_list_models_and_classes():
    assert set(NAMES) <= set(list_models()) and list_models() == sorted(models.MODELS)
    assert models.create is create and models.list_models is list_models
    assert type(create("small_cnn")) is SmallCNN and type(create("small_cnn", cifs=False)) is SmallCNN
    assert type(create("preact_resnet18")) is PreActResNet18
    assert type(create("resnet18")) is ResNet18 and type(create("resnet18", cifs=True)) is ResNet18CIFS
    wrn28, wrn34 = create("wrn28_10"), create("wrn34_10")
    assert isinstance(wrn28, WideResNet) and (wrn28.depth, wrn28.widen_factor, len(wrn28.blocks)) == (28, 10, 12)
    assert (wrn34.depth, wrn34.widen_factor, len(wrn34.blocks)) == (34, 10, 15)
    n_params = sum(p.numel() for p in wrn28.parameters())
    assert 36.4e6 < n_params < 36.6e6  # 36.5M in the literature


def test_resnet18_layout_and_size():
    model = create("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.2e6  # 11.17M


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_model_with_every_activation_runs_forward_and_backward(name, activation):
    torch.manual_seed(0)
    model = create(name, activation=activation, num_classes=7, **OPTIONS.get(name, {}))
    sites = activation_sites(model)
    want_type = {"relu": nn.ReLU, "sparta": Sparta, "silu": nn.SiLU, "softplus": nn.Softplus, "gelu": nn.GELU}
    assert sites and all(type(m) is want_type[activation] for m in sites)
    assert len({id(m) for m in sites}) == len(sites)  # a module of its own at each site
    assert model.activation == activation
    x, _ = batch(name)
    x.requires_grad_(True)
    logits = model.train()(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    if activation == "sparta":
        assert all(m.weight.grad.abs().sum() > 0 for m in sites)


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18", "resnet18"])
def test_activation_sites_have_their_widths(name):
    """Sparta layers of the site's width (the forward checks it too); a fresh Sparta is ReLU,
    the smooth activations are not."""
    torch.manual_seed(0)
    relu = create(name).eval()
    sparta = create(name, activation="sparta").eval()
    widths = [m.channels for m in activation_sites(sparta)]
    preact = [64, 64, 64, 64, 64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]  # act1, act2; head
    expected = {"small_cnn": [32, 64], "preact_resnet18": preact,
                "resnet18": [64] + [64] * 4 + [128] * 4 + [256] * 4 + [512] * 4}[name]
    assert widths == expected  # in forward order
    missing, unexpected = sparta.load_state_dict(relu.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(("weight", "bias")) for k in missing)
    x, _ = batch(name)
    torch.testing.assert_close(sparta(x), relu(x))
    for smooth in ("silu", "softplus", "gelu"):
        other = create(name, activation=smooth).eval()
        other.load_state_dict(relu.state_dict())  # parameterless: the same keys
        assert not torch.allclose(other(x), relu(x))


def test_make_activation():
    assert type(make_activation("relu", 4)) is nn.ReLU
    layer = make_activation("sparta", 12)
    assert isinstance(layer, Sparta) and layer.channels == 12
    softplus = make_activation("softplus", 3)
    assert isinstance(softplus, nn.Softplus) and softplus.beta == SOFTPLUS_BETA == 10.0
    assert make_activation("softplus", 3, softplus_beta=5).beta == 5.0
    assert type(make_activation("silu", 3)) is nn.SiLU and type(make_activation("gelu", 3)) is nn.GELU
    x = torch.linspace(-3, 3, 13).view(1, 1, 1, 13)
    torch.testing.assert_close(softplus(x), torch.log1p(torch.exp(10 * x)) / 10)
    with pytest.raises(ValueError, match=r"activation must be one of 'relu', 'sparta', 'silu', 'softplus', "
                                         r"'gelu', got 'tanh'"):
        make_activation("tanh", 3)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        make_activation("relu", 0)
    with pytest.raises(ValueError, match="softplus_beta must be a finite number > 0"):
        make_activation("softplus", 3, softplus_beta=0)


# ----------------------------------------------------------------------------- denoise

@pytest.mark.parametrize("name, denoise, expected", [
    ("small_cnn", ("layer2", "mean"), {"layer2": "mean"}),
    ("preact_resnet18", ("layer3", "gaussian"), {"layer3": "gaussian"}),
    ("preact_resnet18", (["layer2", "layer3"], "median"), {"layer2": "median", "layer3": "median"}),
    ("resnet18", (["res2", "res5"], "dot"), {"layer1": "dot", "layer4": "dot"}),
    ("wrn28_10", ["layer1", "gaussian", False], {"layer1": "gaussian"}),
])
def test_denoise_puts_blocks_after_the_stages_and_keeps_the_logits(name, denoise, expected):
    plain = seeded(lambda: create(name)).eval()
    model = seeded(lambda: create(name, denoise=denoise)).eval()
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, DenoisingBlock)}
    assert len(blocks) == len(expected)
    for stage, width in STAGES[name].items():
        last = getattr(model, stage)[-1]
        if stage in expected:
            assert isinstance(last, DenoisingBlock) and last.channels == width
            assert last.nlm.mode == expected[stage] and not last.training
        else:
            assert not isinstance(last, DenoisingBlock)
    if len(denoise) == 3:
        assert all(not b.nlm.embed for b in blocks.values())
    # the base weights are those of the plain model (the blocks are made last) ...
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".".join(k.split(".")[:2]) in {f"{s}.{len(getattr(plain, s))}" for s in expected}
                                  for k in missing)
    # ... and the fresh blocks are the identity
    x, _ = batch(name)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    # a block that is not the identity changes the logits
    with torch.no_grad():
        next(iter(blocks.values())).bn.weight.fill_(1.0)
    assert not torch.allclose(model(x), plain(x))


def test_denoise_with_cifs_keeps_layer4_as_it_is():
    model = create("resnet18", cifs=True, num_classes=3, denoise=("layer3", "mean"))
    assert isinstance(model.layer3[-1], DenoisingBlock) and model.layer3[-1].channels == 256
    with pytest.raises(ValueError, match=r"denoise: stage 'layer4' is a ModuleList"):
        create("resnet18", cifs=True, denoise=("layer4", "mean"))


# ----------------------------------------------------------------------------- first_stride

@pytest.mark.parametrize("name", NAMES)
def test_first_stride_two_halves_the_size_after_the_stem(name):
    sizes = {}
    for stride in (1, 2):
        model = create(name, first_stride=stride, **OPTIONS.get(name, {})).eval()
        stem = model.layer1[0] if name == "small_cnn" else model.conv1
        assert stem.stride == (stride, stride)
        seen = {}

        def record(module, args, out, seen=seen):
            seen[next(n for n in STAGES[name] if getattr(model, n) is module)] = tuple(out.shape[-2:])

        hooks = [getattr(model, s).register_forward_hook(record) for s in STAGES[name]]
        x, _ = batch(name)
        with torch.no_grad():
            assert model(x).shape == (2, 10)
        for h in hooks:
            h.remove()
        sizes[stride] = seen
    size = x.shape[-1]
    assert sizes[1]["layer1"] == (size, size) and sizes[2]["layer1"] == (size // 2, size // 2)
    for stage in STAGES[name]:
        assert tuple(sizes[2][stage]) == tuple(max(1, (s + 1) // 2) for s in sizes[1][stage])


# ----------------------------------------------------------------------------- cifs

def test_cifs_true_gives_resnet18_cifs():
    model = seeded(lambda: create("resnet18", cifs=True, num_classes=5, activation="silu"))
    direct = seeded(lambda: ResNet18CIFS(num_classes=5, activation="silu"))
    assert list(model.state_dict()) == list(direct.state_dict())
    assert isinstance(model.layer4, nn.ModuleList) and [c.probe for c in model.cifs] == ["mlp", "linear"]
    x, _ = batch("resnet18")
    y = torch.tensor([1, 4])
    model.train()
    with pytest.raises(ValueError, match="labels must be given in train mode"):
        model(x)
    logits, probes = model(x, y)
    assert logits.shape == (2, 5) and len(probes) == 2 and all(p.shape == (2, 5) for p in probes)
    cifs_loss(logits, probes, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(CIFSLogits(model)(x), model(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "resnet18"])
def test_cifs_is_resnet18_only(name):
    with pytest.raises(ValueError, match=rf"cifs=True: model '{name}' has no CIFS variant.*resnet18"):
        create(name, cifs=True, **OPTIONS.get(name, {}))


# ----------------------------------------------------------------------------- Normalize

@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18", "resnet18", "wide_resnet"])
def test_normalize_inside_the_model(name):
    small = {"wide_resnet": {"depth": 10, "widen_factor": 1}}.get(name, {})
    in_channels = 3
    plain = create(name, in_channels=in_channels, **small).eval()
    assert isinstance(plain.normalize, nn.Identity)
    model = create(name, in_channels=in_channels, mean=CIFAR_MEAN, std=CIFAR_STD, **small).eval()
    assert isinstance(model.normalize, Normalize)
    model.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 3, 8, 8)  # pixels in [0, 1]
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), plain((x - mean) / std))
    assert not torch.allclose(model(x), plain(x))
    # the buffers are saved with the model
    assert torch.equal(model.state_dict()["normalize.mean"], torch.tensor(CIFAR_MEAN))


def test_in_channels_and_num_classes():
    model = create("resnet18", in_channels=1, num_classes=4, mean=[0.5], std=[0.25]).eval()
    assert model.conv1.in_channels == 1 and model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    assert create("small_cnn").layer1[0].in_channels == 1  # the digits' default
    assert create("wrn28_10", in_channels=4).conv1.in_channels == 4


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, options, match", [
    ("resnet50", {}, r"unknown model 'resnet50'; choose one of ode_net, preact_resnet18, resnet18, small_cnn, "
                     r"survey_cnn_cifar, survey_cnn_mnist, wide_resnet, wrn28_10, wrn34_10"),
    (None, {}, "unknown model None"),
    ("preact_resnet18", {"width": 8}, r"unknown option 'width' for model 'preact_resnet18'; its options are "
                                      r"num_classes, in_channels, activation, denoise, cifs, first_stride, mean, std"),
    ("wrn34_10", {"depth": 28, "widen": 2}, r"unknown options 'depth', 'widen' for model 'wrn34_10'"),
    ("small_cnn", {"dropout": 0.1}, "unknown option 'dropout'"),
    ("resnet18", {"activation": "tanh"}, r"activation must be one of 'relu', 'sparta', 'silu', 'softplus', 'gelu'"),
    ("wrn28_10", {"activation": None}, "activation must be one of"),
    ("preact_resnet18", {"denoise": "layer3"}, r"denoise must be None or \(stages, mode\)"),
    ("preact_resnet18", {"denoise": ("layer3",)}, r"denoise must be None or \(stages, mode\)"),
    ("preact_resnet18", {"denoise": ("layer3", "box")}, r"denoise: mode must be one of 'gaussian', 'dot'"),
    ("preact_resnet18", {"denoise": (3, "mean")}, "denoise: stages must be a stage name or a list"),
    ("wrn28_10", {"denoise": ("layer4", "mean")}, r"denoise: unknown stage 'layer4'; the model's stages are "
                                                  r"\['layer1', 'layer2', 'layer3'\]"),
    ("small_cnn", {"denoise": ("layer3", "mean")}, r"denoise: unknown stage 'layer3'"),
    ("resnet18", {"denoise": ("layer1", "mean", True)}, r"denoise: embed applies to modes 'gaussian', 'dot' only"),
    ("resnet18", {"cifs": "yes"}, "cifs must be True or False"),
    ("resnet18", {"first_stride": 0}, "first_stride must be a positive int"),
    ("small_cnn", {"first_stride": 2.0}, "first_stride must be a positive int"),
    ("preact_resnet18", {"num_classes": 0}, "num_classes must be a positive int"),
    ("resnet18", {"cifs": True, "num_classes": 1}, "num_classes must be an int >= 2"),
    ("wrn28_10", {"in_channels": True}, "in_channels must be a positive int"),
    ("wrn28_10", {"dropout": 1.0}, "dropout must be a float in"),
    ("wide_resnet", {"depth": 33}, "depth must be 6n"),
    ("small_cnn", {"width": 0}, "width must be a positive int"),
    ("resnet18", {"mean": CIFAR_MEAN}, "mean and std must be given together"),
    ("preact_resnet18", {"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "in_channels=3"),
])
def test_errors_name_the_option(name, options, match):
    with pytest.raises(ValueError, match=match):
        create(name, **options)


@pytest.mark.parametrize("build, match", [
    (lambda: SmallCNN(activation="relu6"), "activation must be one of"),
    (lambda: PreActResNet18(first_stride=-1), "first_stride"),
    (lambda: WideResNet(depth=10, widen_factor=1, denoise=("layer9", "mean")), "denoise: unknown stage 'layer9'"),
    (lambda: ResNet18(denoise=["layer1"]), r"denoise must be None or \(stages, mode\)"),
])
def test_constructors_check_the_options_too(build, match):
    with pytest.raises(ValueError, match=match):
        build()
